"""ResNet-18 in TensorFlow/Keras (channels last), the same function as the PyTorch network.

The chapter's ``padding='same'`` pads stride-2 layers unevenly (0 before, 1 after); here every
convolution and the max-pool pad symmetrically, as PyTorch and MXNet do. BatchNorm uses
PyTorch's epsilon and momentum (``spec.BN_EPS``, ``spec.BN_MOMENTUM``). Beside the chapter's
blocks, the family of ``spec.ARCHS`` (``Bottleneck``, ``PreActResidual``, ``PreActBottleneck``,
``resnet``).
"""
from __future__ import annotations

import tensorflow as tf

from .. import spec


def _pad(X: tf.Tensor, padding: int, value: float = 0.0) -> tf.Tensor:
    if not padding:
        return X
    return tf.pad(X, [[0, 0], [padding, padding], [padding, padding], [0, 0]], constant_values=value)


class Conv2D(tf.keras.layers.Conv2D):
    """``Conv2D`` with PyTorch's symmetric zero padding; Glorot-uniform kernel, zero bias.
    At stride 1 an odd kernel's ``'same'`` padding is already symmetric and is used as is."""

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, padding: int = 0, **kwargs):
        same = strides == 1 and kernel_size % 2 == 1 and padding == kernel_size // 2
        super().__init__(filters, kernel_size, strides, padding="same" if same else "valid", **kwargs)
        self.explicit_padding = 0 if same else padding

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape).as_list()
        for axis in (1, 2):
            if input_shape[axis] is not None:
                input_shape[axis] += 2 * self.explicit_padding
        super().build(input_shape)

    def call(self, X):
        return super().call(_pad(X, self.explicit_padding))


class MaxPool2D(tf.keras.layers.MaxPool2D):
    """``MaxPool2D`` with symmetric padding that never wins the max (PyTorch's)."""

    def __init__(self, pool_size: int, strides: int, padding: int = 0, **kwargs):
        super().__init__(pool_size, strides, padding="valid", **kwargs)
        self.explicit_padding = padding

    def call(self, X):
        return super().call(_pad(X, self.explicit_padding, float("-inf")))


def _bn() -> tf.keras.layers.BatchNormalization:
    return tf.keras.layers.BatchNormalization(momentum=1 - spec.BN_MOMENTUM, epsilon=spec.BN_EPS)


class Residual(tf.keras.layers.Layer):
    """The Residual block of ResNet."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = Conv2D(num_channels, 3, strides, padding=1)
        self.conv2 = Conv2D(num_channels, 3, padding=1)
        self.conv3 = Conv2D(num_channels, 1, strides) if use_1x1conv else None
        self.bn1, self.bn2 = _bn(), _bn()
        self.num_channels, self.use_1x1conv, self.strides = num_channels, use_1x1conv, strides

    def call(self, X, training=None):
        if self.conv3 is None and X.shape[-1] != self.num_channels:
            spec.residual_output_shape((X.shape[-1], *X.shape[1:3]), self.num_channels, False, self.strides)
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = self.bn2(self.conv2(Y), training=training)
        if self.conv3 is not None:
            X = self.conv3(X)
        return tf.nn.relu(Y + X)


def resnet_block(num_channels: int, num_residuals: int, first_block: bool = False,
                 name: str | None = None) -> tf.keras.Sequential:
    """A stage of ``num_residuals`` blocks; all but the first stage halve height and width."""
    blocks = [Residual(num_channels, use_1x1conv=True, strides=2) if i == 0 and not first_block
              else Residual(num_channels) for i in range(num_residuals)]
    return tf.keras.Sequential(blocks, name=name)


class Block(tf.keras.layers.Layer):
    """Any block of the family, built from its ``spec.Block``: sublayers named as the spec's
    canonical names (``conv1``, ``bn1``, ...)."""

    def __init__(self, block: spec.Block, **kwargs):
        super().__init__(**kwargs)
        self.spec = block
        for p in block.layers():
            attr = p.name.rsplit(".", 1)[1]
            setattr(self, attr, Conv2D(p.out_channels, p.kernel, p.stride, p.padding, use_bias=p.bias)
                    if isinstance(p, spec.Conv) else _bn())
        self.main_path = [p if isinstance(p, str) else p.name.rsplit(".", 1)[1] for p in block.main()]
        self.shortcut_path = [p.name.rsplit(".", 1)[1] for p in block.shortcut()]

    def _run(self, path, X, training):
        for step in path:
            X = tf.nn.relu(X) if step == "relu" else getattr(self, step)(X, training=training) \
                if step.startswith("bn") else getattr(self, step)(X)
        return X

    def call(self, X, training=None):
        b = self.spec
        if not b.projection and X.shape[-1] != b.out_channels:
            raise ValueError(f"{type(self).__name__}({b.out_channels}, use_1x1conv=False) cannot add an input "
                             f"of {X.shape[-1]} channel(s): it needs {b.out_channels}, or use_1x1conv=True")
        if b.version == 1:
            return tf.nn.relu(self._run(self.main_path, X, training) + self._run(self.shortcut_path, X, training))
        P = self._run(self.main_path[:2], X, training)  # bn1, relu: the shared pre-activation
        return self._run(self.main_path[2:], P, training) + (
            self._run(self.shortcut_path, P, training) if b.projection else X)


class Bottleneck(Block):
    """conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN plus the shortcut, then ReLU (version 1).
    ``num_channels`` is the output (the inner width is ``num_channels // 4``)."""
    kind, version = "bottleneck", 1

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *, bias: bool = True,
                 shortcut_bn: bool = False, stride_on_3x3: bool = False, **kwargs):
        super().__init__(spec.Block("", self.kind, self.version, 0, num_channels, strides, use_1x1conv, bias,
                                    shortcut_bn and self.version == 1, stride_on_3x3), **kwargs)


class PreActResidual(Bottleneck):
    """Pre-activation basic block (version 2): BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut
    (projected from the pre-activated input when ``use_1x1conv``); no ReLU after the sum."""
    kind, version = "basic", 2


class PreActBottleneck(Bottleneck):
    """Pre-activation bottleneck (version 2): (BN-ReLU-conv) x 3 with 1x1, 3x3, 1x1 kernels."""
    kind, version = "bottleneck", 2


class ResNet(tf.keras.Model):
    """Stages ``b1`` .. ``b5`` and ``head``; iterate it like the chapter. Input: NHWC.
    ``arch`` (see ``spec.get_arch``) picks the variant; left out, the chapter's ResNet-18."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, arch=None, **kwargs):
        super().__init__(**kwargs)
        self.arch = arch = spec.get_arch(arch)
        net_spec = spec.resnet_spec(arch, num_classes, in_channels)  # validates the arguments
        self.in_channels, self.num_classes = in_channels, num_classes
        self.b1 = tf.keras.Sequential([Conv2D(64, 7, 2, padding=3, use_bias=net_spec["b1"][0].bias), _bn(),
                                       tf.keras.layers.ReLU(), MaxPool2D(3, 2, padding=1)], name="b1")
        if arch == spec.Arch():
            self.b2, self.b3, self.b4, self.b5 = (
                resnet_block(c, n, first_block=(k == 0), name=f"b{k + 2}") for k, (n, c) in enumerate(spec.STAGES))
        else:
            self.b2, self.b3, self.b4, self.b5 = (
                tf.keras.Sequential([Block(b) for b in net_spec[f"b{k + 2}"]], name=f"b{k + 2}") for k in range(4))
        head = [_bn(), tf.keras.layers.ReLU()] if arch.version == 2 else []
        self.head = tf.keras.Sequential(head + [tf.keras.layers.GlobalAveragePooling2D(keepdims=True),
                                                tf.keras.layers.Flatten(), tf.keras.layers.Dense(num_classes)],
                                        name="head")

    def __iter__(self):
        return iter([self.b1, self.b2, self.b3, self.b4, self.b5, self.head])

    def call(self, X, training=None):
        if X.shape.rank != 4:
            raise ValueError(f"expected a batch of shape (N, H, W, {self.in_channels}), got {tuple(X.shape)}")
        spec.check_input((X.shape[-1], X.shape[1] or 1, X.shape[2] or 1), self.in_channels)
        for stage in self:
            X = stage(X, training=training)
        return X


def resnet(depth=18, version: int = 1, num_classes: int = 10, in_channels: int = 1,
           flavour: str = "chapter") -> ResNet:
    """Any variant of ``spec.ARCHS`` (``depth`` may also be a name such as ``"resnet50"``), built
    (variables created) and initialised with d2lres's scheme (Keras defaults: Glorot-uniform
    kernels, zero biases). ``resnet(18)`` is the chapter's network."""
    net = ResNet(num_classes, in_channels, spec.get_arch(depth, version, flavour))
    net(tf.zeros((1, 32, 32, in_channels)))
    return net


def resnet18(num_classes: int = 10, in_channels: int = 1, *, version: int = 1, flavour: str = "chapter") -> ResNet:
    """The chapter's ResNet-18 (or its version 2 / torchvision flavour)."""
    return resnet(18, version, num_classes, in_channels, flavour)


def resnet34(num_classes: int = 10, in_channels: int = 1, *, version: int = 1, flavour: str = "chapter") -> ResNet:
    return resnet(34, version, num_classes, in_channels, flavour)


def resnet50(num_classes: int = 10, in_channels: int = 1, *, version: int = 1, flavour: str = "chapter") -> ResNet:
    return resnet(50, version, num_classes, in_channels, flavour)


def resnet101(num_classes: int = 10, in_channels: int = 1, *, version: int = 1, flavour: str = "chapter") -> ResNet:
    return resnet(101, version, num_classes, in_channels, flavour)


def resnet152(num_classes: int = 10, in_channels: int = 1, *, version: int = 1, flavour: str = "chapter") -> ResNet:
    return resnet(152, version, num_classes, in_channels, flavour)


def _nchw(shape) -> tuple[int, ...]:
    return (shape[3], shape[1], shape[2]) if len(shape) == 4 else tuple(shape[1:])


def shape_walk(net: ResNet, input_shape=(1, 224, 224)) -> list[tuple[str, tuple[int, ...]]]:
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them."""
    spec.check_input(tuple(input_shape), net.in_channels)
    c, h, w = input_shape
    X, rows = tf.zeros((1, h, w, c)), []
    net_spec = spec.resnet_spec(net.arch, net.num_classes, net.in_channels)
    for stage_name, stage in zip(spec.STAGE_NAMES, net):
        if stage_name in ("b1", "head"):
            for layer_spec, layer in zip(net_spec[stage_name], stage.layers):
                X = layer(X, training=False)
                rows.append((spec.layer_name(stage_name, layer_spec), _nchw(X.shape)))
        else:
            X = stage(X, training=False)
            rows.append((stage_name, _nchw(X.shape)))
    return rows


def count_parameters(net: tf.keras.Model) -> tuple[int, int]:
    """``(trainable, non-trainable)``: weights, and BatchNorm moving statistics."""
    return (sum(int(tf.size(v)) for v in net.trainable_weights),
            sum(int(tf.size(v)) for v in net.non_trainable_weights))
