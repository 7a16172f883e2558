"""ResNet-18 in TensorFlow/Keras (channels last), the same function as the PyTorch network.

The chapter's ``padding='same'`` pads stride-2 layers unevenly (0 before, 1 after); here every
convolution and the max-pool pad symmetrically, as PyTorch and MXNet do. BatchNorm uses
PyTorch's epsilon and momentum (``spec.BN_EPS``, ``spec.BN_MOMENTUM``).
"""
from __future__ import annotations

import tensorflow as tf

from .. import spec


def _pad(X: tf.Tensor, padding: int, value: float = 0.0) -> tf.Tensor:
    if not padding:
        return X
    return tf.pad(X, [[0, 0], [padding, padding], [padding, padding], [0, 0]], constant_values=value)


class Conv2D(tf.keras.layers.Conv2D):
    """``Conv2D`` with PyTorch's symmetric zero padding; Glorot-uniform kernel, zero bias."""

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, padding: int = 0, **kwargs):
        super().__init__(filters, kernel_size, strides, padding="valid", **kwargs)
        self.explicit_padding = padding

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


class ResNet(tf.keras.Model):
    """Stages ``b1`` .. ``b5`` and ``head``; iterate it like the chapter. Input: NHWC."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        spec.resnet18_spec(num_classes, in_channels)  # validates the arguments
        self.in_channels, self.num_classes = in_channels, num_classes
        self.b1 = tf.keras.Sequential([Conv2D(64, 7, 2, padding=3), _bn(), tf.keras.layers.ReLU(),
                                       MaxPool2D(3, 2, padding=1)], name="b1")
        self.b2, self.b3, self.b4, self.b5 = (
            resnet_block(c, n, first_block=(k == 0), name=f"b{k + 2}") for k, (n, c) in enumerate(spec.STAGES))
        self.head = tf.keras.Sequential([tf.keras.layers.GlobalAveragePooling2D(keepdims=True),
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


def resnet18(num_classes: int = 10, in_channels: int = 1) -> ResNet:
    """The chapter's ResNet-18, built (variables created) and initialised with d2lres's scheme
    (Keras defaults: Glorot-uniform kernels, zero biases)."""
    net = ResNet(num_classes, in_channels)
    net(tf.zeros((1, 32, 32, in_channels)))
    return net


def _nchw(shape) -> tuple[int, ...]:
    return (shape[3], shape[1], shape[2]) if len(shape) == 4 else tuple(shape[1:])


def shape_walk(net: ResNet, input_shape=(1, 224, 224)) -> list[tuple[str, tuple[int, ...]]]:
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them."""
    spec.check_input(tuple(input_shape), net.in_channels)
    c, h, w = input_shape
    X, rows = tf.zeros((1, h, w, c)), []
    for stage_name, stage in zip(spec.STAGE_NAMES, net):
        if stage_name in ("b1", "head"):
            names = ["conv", "bn", "relu", "pool"] if stage_name == "b1" else ["avgpool", "flatten", "fc"]
            for name, layer in zip(names, stage.layers):
                X = layer(X, training=False)
                rows.append((f"{stage_name}.{name}", _nchw(X.shape)))
        else:
            X = stage(X, training=False)
            rows.append((stage_name, _nchw(X.shape)))
    return rows


def count_parameters(net: tf.keras.Model) -> tuple[int, int]:
    """``(trainable, non-trainable)``: weights, and BatchNorm moving statistics."""
    return (sum(int(tf.size(v)) for v in net.trainable_weights),
            sum(int(tf.size(v)) for v in net.non_trainable_weights))
