"""ResNet in TensorFlow with Keras 3 (channels last), the same function as the PyTorch network.

The chapter's ``padding='same'`` pads stride-2 layers unevenly (0 before, 1 after); here every
convolution and the max-pool pad symmetrically, as PyTorch and MXNet do. ``BatchNorm`` has
PyTorch's epsilon, momentum and unbiased running variance (``spec.BN_EPS``, ``spec.BN_MOMENTUM``).
Beside the chapter's blocks, the family of ``spec.ARCHS`` (``Bottleneck``, ``PreActResidual``,
``PreActBottleneck``, ``resnet``). Keras 3 only (TensorFlow >= 2.16); Keras 2 is not supported.
"""
from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from .. import inputs, spec
from ..core import api, book
from ..errors import UserValueError

if int(keras.__version__.split(".")[0]) < 3 or keras.backend.backend() != "tensorflow":
    raise ImportError(f"d2lres.tf needs Keras 3 on its TensorFlow backend (TensorFlow >= 2.16); found Keras "
                      f"{keras.__version__} on {keras.backend.backend()!r} (unset KERAS_BACKEND / TF_USE_LEGACY_KERAS)")


def _pad(X: tf.Tensor, padding: int, value: float = 0.0) -> tf.Tensor:
    if not padding:
        return X
    return tf.pad(X, [[0, 0], [padding, padding], [padding, padding], [0, 0]], constant_values=value)


def _padded(shape, padding: int) -> tuple:
    """An NHWC shape with ``padding`` added on both sides of height and width."""
    shape = tuple(shape)
    return (shape[0], *(None if s is None else s + 2 * padding for s in shape[1:3]), *shape[3:])


def device_name(device):
    """A device string from d2lres's (``"/CPU:0"``) or d2l's ``try_gpu()`` (a ``tf.device`` object)."""
    return getattr(device, "_device_name", device)


def device_scope(device):
    return tf.device(device_name(device)) if device is not None else contextlib.nullcontext()


def _add_bias(Y: tf.Tensor, bias) -> tf.Tensor:
    """``Y + bias`` in a layer computing in bfloat16 (``precision="bf16"``): a broadcast ``AddV2``,
    whose gradient is a ``Sum`` that accumulates in float32. Keras's ``ops.add`` would make it
    ``BiasAdd``, and TensorFlow's CPU ``BiasAddGrad`` sums a bfloat16 gradient in bfloat16, far
    from the exact gradient of a bias before a BatchNorm (0; docs/same-function.md gives the sizes)."""
    return tf.math.add(Y, tf.cast(tf.convert_to_tensor(bias), Y.dtype))


#: The matmul path's rule (``Conv2D.uses_matmul``): outputs at most this many pixels on a side...
MATMUL_MAX_SIDE = 2
#: ... from at least this many input channels. Derived from single-convolution forward+backward
#: micro-benchmarks (``scripts/tf-convbench``, natively and with oneDNN held to AVX2): every such
#: layer of ResNet-18 at 40x40 (stage 5, 2x2) is faster as im2col + matmul; at 3x3 outputs the
#: stride-1 3x3 convolutions lose and the strided ones vary; at 128 channels or fewer and larger
#: images TF's own kernels win. The script prints the timings; docs/performance.md quotes some.
MATMUL_MIN_CHANNELS = 256


class Conv2D(keras.layers.Conv2D):
    """``Conv2D`` with PyTorch's symmetric zero padding; Glorot-uniform kernel, zero bias.
    At stride 1 an odd kernel's ``'same'`` padding is already symmetric and is used as is.
    ``in_channels`` builds it (its variables) now; left out, on the first call.

    Small images with many channels run as im2col (``tf.image.extract_patches``) and one matmul
    instead of TF's convolution, whose backward pass is very slow there on CPU (the same function
    within float32 rounding); ``uses_matmul`` is the rule, ``conv_path`` says what the last call ran."""

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, padding: int = 0, *,
                 use_bias: bool = True, in_channels: int | None = None):
        same = strides == 1 and kernel_size % 2 == 1 and padding == kernel_size // 2
        super().__init__(filters, kernel_size, strides, padding="same" if same else "valid", use_bias=use_bias)
        self.explicit_padding = 0 if same else padding
        self.conv_path = None  # "conv" or "matmul": what the last call ran
        if in_channels:
            self.build((None, None, None, in_channels))

    def build(self, input_shape):
        super().build(_padded(input_shape, self.explicit_padding))

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(_padded(input_shape, self.explicit_padding))

    def uses_matmul(self, input_shape) -> bool:
        """Whether an NHWC input of ``input_shape`` (before padding) runs as im2col + matmul:
        output side <= ``MATMUL_MAX_SIDE`` and input channels >= ``MATMUL_MIN_CHANNELS``, with
        the spatial size known when the step is traced."""
        _, h, w, c = _padded(input_shape, self.explicit_padding)
        if h is None or w is None or c is None:
            return False
        out = super().compute_output_shape((None, h, w, c))[1:3]  # the shape as padded
        return max(out) <= MATMUL_MAX_SIDE and c >= MATMUL_MIN_CHANNELS

    def call(self, X):
        self.conv_path = "matmul" if self.uses_matmul(X.shape) else "conv"
        X = _pad(X, self.explicit_padding)
        if self.conv_path == "matmul":
            return self._matmul(X)
        if self.use_bias and self.compute_dtype != "float32":  # bf16: the bias's gradient summed in float32
            return _add_bias(self.convolution_op(X, self.kernel), self.bias)
        return super().call(X)

    def _matmul(self, X):
        (k, _), (s, _) = self.kernel_size, self.strides
        if self.padding == "same":
            X = _pad(X, k // 2)
        P = X[:, ::s, ::s, :] if k == 1 else \
            tf.image.extract_patches(X, [1, k, k, 1], [1, s, s, 1], [1, 1, 1, 1], "VALID")  # (kh, kw, c) order
        depth = P.shape[-1]
        Y = tf.reshape(P, [-1, depth]) @ tf.reshape(tf.convert_to_tensor(self.kernel), [depth, self.filters])
        Y = tf.reshape(Y, tf.concat([tf.shape(P)[:3], [self.filters]], 0))
        if not self.use_bias:
            return Y
        return Y + self.bias if self.compute_dtype == "float32" else _add_bias(Y, self.bias)


class Dense(keras.layers.Dense):
    """Keras's ``Dense``; computing in bfloat16 (``precision="bf16"``) its bias is added as
    ``Conv2D``'s is (:func:`_add_bias`: the bias's gradient summed in float32)."""

    def call(self, inputs, training=None):
        if self.bias is None or self.compute_dtype == "float32" or self.activation is not None \
                or self.quantization_mode is not None or getattr(self, "lora_enabled", False):
            return super().call(inputs, training=training)
        return _add_bias(tf.matmul(inputs, tf.convert_to_tensor(self.kernel)), self.bias)


class MaxPool2D(keras.layers.MaxPool2D):
    """``MaxPool2D`` with symmetric padding that never wins the max (PyTorch's)."""

    def __init__(self, pool_size: int, strides: int, padding: int = 0):
        super().__init__(pool_size, strides, padding="valid")
        self.explicit_padding = padding

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(_padded(input_shape, self.explicit_padding))

    def call(self, X):
        return super().call(_pad(X, self.explicit_padding, float("-inf")))


class BatchNorm(keras.layers.BatchNormalization):
    """BatchNorm over the channels (last axis) with d2lres's one setting: epsilon ``spec.BN_EPS``,
    PyTorch's momentum ``spec.BN_MOMENTUM`` (weight of the new batch; Keras's ``momentum`` is the
    weight of the old average, ``1 - spec.BN_MOMENTUM``), and the running variance updated with
    the unbiased batch variance as PyTorch does (Keras 3's own layer uses the biased one). Runs as
    TensorFlow's fused batch norm. ``channels`` builds it now; left out, on the first call."""

    def __init__(self, channels: int | None = None):
        super().__init__(momentum=1 - spec.BN_MOMENTUM, epsilon=spec.BN_EPS)
        if channels:
            self.build((None, None, None, channels))

    def call(self, X, training=None):
        if len(X.shape) != 4:
            raise UserValueError(f"BatchNorm expects an NHWC batch, got shape {tuple(X.shape)}")
        stats = (tf.convert_to_tensor(self.moving_mean), tf.convert_to_tensor(self.moving_variance))
        if training:
            Y, mean, var, *_ = tf.compat.v1.nn.fused_batch_norm(
                X, self.gamma, self.beta, *stats, epsilon=self.epsilon, is_training=True,
                exponential_avg_factor=spec.BN_MOMENTUM)  # returns the updated running statistics
            self.moving_mean.assign(mean)
            self.moving_variance.assign(var)  # fused_batch_norm's batch variance is the unbiased one
            return Y
        return tf.compat.v1.nn.fused_batch_norm(X, self.gamma, self.beta, *stats, epsilon=self.epsilon,
                                                is_training=False)[0]


class Residual(keras.layers.Layer):
    """The Residual block of ResNet. ``in_channels`` builds it for that many input channels now;
    left out, Keras builds it on the first call, as in the chapter."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 in_channels: int | None = None):
        super().__init__()
        inner = num_channels if in_channels else None  # conv2's and the BatchNorms' input, if built now
        self.conv1 = Conv2D(num_channels, 3, strides, padding=1, in_channels=in_channels)
        self.conv2 = Conv2D(num_channels, 3, padding=1, in_channels=inner)
        self.conv3 = Conv2D(num_channels, 1, strides, in_channels=in_channels) if use_1x1conv else None
        self.bn1, self.bn2 = BatchNorm(inner), BatchNorm(inner)
        self.num_channels, self.use_1x1conv, self.strides = num_channels, use_1x1conv, strides

    def call(self, X, training=None):
        if self.conv3 is None and X.shape[-1] != self.num_channels:
            spec.residual_output_shape((X.shape[-1], *X.shape[1:3]), self.num_channels, False, self.strides)
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = self.bn2(self.conv2(Y), training=training)
        if self.conv3 is not None:
            X = self.conv3(X)
        return tf.nn.relu(Y + X)


def resnet_block(num_channels: int, num_residuals: int, first_block: bool = False, *,
                 in_channels: int | None = None) -> keras.Sequential:
    """A stage of ``num_residuals`` blocks; all but the first stage halve height and width."""
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blocks.append(Residual(num_channels, use_1x1conv=True, strides=2, in_channels=in_channels))
        else:
            blocks.append(Residual(num_channels, in_channels=in_channels if i == 0 else num_channels))
    return keras.Sequential(blocks)


# d2l 0.17's signatures refused (book.py); added here so that the #@save cells stay the chapter's code
Residual = book.checked_residual(Residual)
resnet_block = book.checked_resnet_block(resnet_block)


class Block(keras.layers.Layer):
    """Any block of the family, built from its ``spec.Block``: sublayers named as the spec's
    canonical names (``conv1``, ``bn1``, ...); input channels 0 build those layers lazily."""

    def __init__(self, block: spec.Block):
        super().__init__()
        self.spec = block
        for p in block.layers():
            attr = p.local
            setattr(self, attr, Conv2D(p.out_channels, p.kernel, p.stride, p.padding, use_bias=p.bias,
                                       in_channels=p.in_channels or None)
                    if isinstance(p, spec.Conv) else BatchNorm(p.channels or None))
        self.main_path = block.main_path()
        self.shortcut_path = block.shortcut_path()

    def _run(self, path, X, training):
        for step in path:
            X = tf.nn.relu(X) if step == "relu" else getattr(self, step)(X, training=training) \
                if step.startswith("bn") else getattr(self, step)(X)
        return X

    def call(self, X, training=None):
        b = self.spec
        if not b.projection and X.shape[-1] != b.out_channels:
            raise UserValueError(f"{type(self).__name__}({b.out_channels}, use_1x1conv=False) cannot add an input "
                                 f"of {X.shape[-1]} channel(s): it needs {b.out_channels}, or use_1x1conv=True")
        if b.version == 1:
            return tf.nn.relu(self._run(self.main_path, X, training) + self._run(self.shortcut_path, X, training))
        P = self._run(self.main_path[:2], X, training)  # bn1, relu: the shared pre-activation
        return self._run(self.main_path[2:], P, training) + (
            self._run(self.shortcut_path, P, training) if b.projection else X)


Bottleneck, PreActResidual, PreActBottleneck = api.block_classes(Block)


def _stage(layers, name: str) -> keras.Sequential:
    """A stage named as the spec's stages (``b1`` .. ``b5``, ``head``)."""
    return keras.Sequential(list(layers), name=name)


class ResNet(keras.Model):
    """Stages ``b1`` .. ``b5`` and ``head`` of the variant ``arch`` (``spec.get_arch``; None: the
    chapter's ResNet-18, built from its ``Residual`` and ``resnet_block``), built (variables
    created on ``device``) and initialised with d2lres's scheme (Glorot uniform, zero bias);
    iterate it like the chapter. Input: NHWC."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, arch=None, device=None):
        super().__init__()
        arch = spec.get_arch(arch)
        net_spec = spec.resnet_spec(arch, num_classes, in_channels)  # validates the arguments
        self.arch, self.in_channels, self.num_classes, self.device = arch, in_channels, num_classes, device
        with device_scope(device):
            self.b1 = _stage([Conv2D(64, 7, 2, padding=3, use_bias=net_spec["b1"][0].bias, in_channels=in_channels),
                              BatchNorm(64), keras.layers.ReLU(), MaxPool2D(3, 2, padding=1)], "b1")
            channels = 64
            for k, (num_residuals, num_channels) in enumerate(arch.stages):
                name = f"b{k + 2}"
                if arch == spec.Arch():
                    layers = resnet_block(num_channels, num_residuals, first_block=(k == 0),
                                          in_channels=channels).layers
                else:
                    layers = [Block(b) for b in net_spec[name]]
                setattr(self, name, _stage(layers, name))
                channels = num_channels
            head = [BatchNorm(channels), keras.layers.ReLU()] if arch.version == 2 else []
            self.head = _stage(head + [keras.layers.GlobalAveragePooling2D(keepdims=True), keras.layers.Flatten(),
                                       Dense(num_classes)], "head")
            self(tf.zeros((1, 32, 32, in_channels)), training=False)  # builds the rest (Dense, Sequentials)

    def __iter__(self):
        return iter([self.b1, self.b2, self.b3, self.b4, self.b5, self.head])

    def call(self, X, training=None):
        inputs.check_batch(tuple(X.shape), X.dtype, self.in_channels, channels_last=True, training=bool(training),
                           arch=self.arch, num_classes=self.num_classes)
        X = X if X.dtype == tf.float32 else tf.cast(X, tf.float32)  # floating inputs: cast
        for stage in self:
            X = stage(X, training=training)
        return X


resnet, resnet18, resnet34, resnet50, resnet101, resnet152 = api.factories(ResNet)


def _nchw(shape) -> tuple[int, ...]:
    return (shape[3], shape[1], shape[2]) if len(shape) == 4 else tuple(shape[1:])


def shape_walk(net: keras.Model, input_shape=(1, 224, 224)) -> list[tuple[str, tuple[int, ...]]]:
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them; for a
    network that is not d2lres's (the reader's ``keras.Sequential``), one row per layer
    ``(class name, shape)``, as the chapter prints them (shapes NCHW here too)."""
    inputs.check_network(net, isinstance(net, keras.Model), "tf", "shape_walk")
    if not book.is_d2lres_net(net):
        c, h, w = book.walk_input(input_shape)
        return book.walk_children(((layer.name, layer) for layer in net.layers), tf.zeros((1, h, w, c)),
                                  lambda layer, X: layer(X, training=False), lambda X: _nchw(X.shape),
                                  contextlib.nullcontext)
    input_shape = inputs.check_shape(input_shape, net.in_channels)
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


def count_parameters(net: keras.Model) -> tuple[int, int]:
    """``(trainable, non-trainable)``: weights, and BatchNorm moving statistics."""
    inputs.check_network(net, isinstance(net, keras.layers.Layer), "tf", "count_parameters")
    return (sum(int(np.prod(v.shape)) for v in net.trainable_weights),
            sum(int(np.prod(v.shape)) for v in net.non_trainable_weights))
