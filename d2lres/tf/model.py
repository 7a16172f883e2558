"""ResNet in TensorFlow with Keras 3 (channels last), the same function as the PyTorch network:
the chapter's ``Residual`` and ``resnet_block``, and the kit from which ``d2lres.core.family``
builds the family of ``spec.ARCHS``.

The chapter's ``padding='same'`` pads stride-2 layers unevenly (0 before, 1 after); here every
convolution (``kernels.Conv2D``) and the max-pool pad symmetrically, as PyTorch and MXNet do.
``BatchNorm`` has PyTorch's epsilon, momentum and unbiased running variance (``spec.BN_EPS``,
``spec.BN_MOMENTUM``). Keras 3 only (TensorFlow >= 2.16); Keras 2 is not supported.
"""
from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from .. import inputs, spec
from ..core import family
from ..errors import UserValueError
from .kernels import Conv2D, add_bias, pad, padded

if int(keras.__version__.split(".")[0]) < 3 or keras.backend.backend() != "tensorflow":
    raise ImportError(f"d2lres.tf needs Keras 3 on its TensorFlow backend (TensorFlow >= 2.16); found Keras "
                      f"{keras.__version__} on {keras.backend.backend()!r} (unset KERAS_BACKEND / TF_USE_LEGACY_KERAS)")


def device_name(device):
    """A device string from d2lres's (``"/CPU:0"``) or d2l's ``try_gpu()`` (a ``tf.device`` object)."""
    return getattr(device, "_device_name", device)


def device_scope(device):
    return tf.device(device_name(device)) if device is not None else contextlib.nullcontext()


class Dense(keras.layers.Dense):
    """Keras's ``Dense``; computing in bfloat16 (``precision="bf16"``) its bias is added as
    ``Conv2D``'s is (``kernels.add_bias``: the bias's gradient summed in float32)."""

    def call(self, inputs, training=None):
        if self.bias is None or self.compute_dtype == "float32" or self.activation is not None \
                or self.quantization_mode is not None or getattr(self, "lora_enabled", False):
            return super().call(inputs, training=training)
        return add_bias(tf.matmul(inputs, tf.convert_to_tensor(self.kernel)), self.bias)


class MaxPool2D(keras.layers.MaxPool2D):
    """``MaxPool2D`` with symmetric padding that never wins the max (PyTorch's)."""

    def __init__(self, pool_size: int, strides: int, padding: int = 0):
        super().__init__(pool_size, strides, padding="valid")
        self.explicit_padding = padding

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(padded(input_shape, self.explicit_padding))

    def call(self, X):
        return super().call(pad(X, self.explicit_padding, float("-inf")))


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
    """The Residual block of ResNet models."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        # d2lres's Conv2D and BatchNorm, not Keras's: padding='same' pads a stride-2 layer 0 before and 1 after,
        # and BatchNormalization keeps a biased running variance; these two are PyTorch's, as in every backend
        self.conv1 = Conv2D(num_channels, kernel_size=3, padding=1, strides=strides)
        self.conv2 = Conv2D(num_channels, kernel_size=3, padding=1)
        self.conv3 = None
        if use_1x1conv:
            self.conv3 = Conv2D(num_channels, kernel_size=1, strides=strides)
        self.bn1 = BatchNorm()
        self.bn2 = BatchNorm()

    def call(self, X):
        Y = tf.nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        Y += X
        return tf.nn.relu(Y)


def resnet_block(num_channels, num_residuals, first_block=False):
    """A ResNet stage: all but the first halve height and width."""
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels))
    return keras.Sequential(blk)


# ---------------------------------------------------------------- the library around the chapter's cells

def build(layer: keras.layers.Layer, in_channels: int) -> None:
    """Build ``layer`` (its variables) for ``in_channels`` input channels now: one zero pixel
    through it in inference mode (its BatchNorm statistics untouched)."""
    layer(tf.zeros((1, 1, 1, in_channels)), training=False)


# the book's signatures, with d2lres's in_channels; d2l 0.17's refused (family.py, compat.py)
Residual = family.chapter_residual(Residual, method="call", shape=lambda X: (X.shape[-1], *X.shape[1:3]),
                                   build=build)
resnet_block = family.chapter_resnet_block(resnet_block, build)


def _sequential(layers, name: str) -> keras.Sequential:
    """A stage named as the spec's stages (``b1`` .. ``b5``, ``head``)."""
    return keras.Sequential([layer for _, layer in layers], name=name)


KIT = family.Kit(
    conv=lambda p: Conv2D(p.out_channels, p.kernel, p.stride, p.padding, use_bias=p.bias, groups=p.groups,
                          in_channels=p.in_channels or None),
    batch_norm=lambda channels: BatchNorm(channels or None), relu=keras.layers.ReLU,
    max_pool=lambda p: MaxPool2D(p.kernel, p.stride, padding=p.padding),
    avg_pool=lambda: keras.layers.GlobalAveragePooling2D(keepdims=True), flatten=keras.layers.Flatten,
    dense=lambda p: Dense(p.out_features), sequential=_sequential, children=lambda stage: stage.layers)


class Block(keras.layers.Layer):
    """Any block of the family, built from its ``spec.Block`` (``family.build_block``)."""

    def __init__(self, block: spec.Block):
        super().__init__()
        family.build_block(self, block, KIT)

    def call(self, X, training=None):
        family.check_block_input(self, X.shape[-1])
        return family.run_block(self, X, tf.nn.relu, lambda layer, X: layer(X, training=training)
                                if isinstance(layer, BatchNorm) else layer(X))


class Bottleneck(family.Bottleneck, Block):
    """``family.Bottleneck`` in TensorFlow."""


class PreActResidual(family.PreActResidual, Block):
    """``family.PreActResidual`` in TensorFlow."""


class PreActBottleneck(family.PreActBottleneck, Block):
    """``family.PreActBottleneck`` in TensorFlow."""


class ResNeXtBlock(family.ResNeXtBlock, Block):
    """``family.ResNeXtBlock`` (d2l 1.0's; ``groups`` is the width of a group) in TensorFlow."""


class ResNet(keras.Model):
    """Stages ``b1`` .. ``b5`` and ``head`` of the variant ``arch`` (``spec.get_arch``; None: the
    chapter's ResNet-18, built from its ``Residual`` and ``resnet_block``), built (variables
    created on ``device``) and initialised with d2lres's scheme (Glorot uniform, zero bias);
    iterate it like the chapter. Input: NHWC."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, arch=None, device=None):
        super().__init__()
        arch = spec.get_arch(arch)
        self.arch, self.in_channels, self.num_classes, self.device = arch, in_channels, num_classes, device
        with device_scope(device):
            for name, stage in family.stages(KIT, Block, resnet_block, arch, num_classes, in_channels).items():
                setattr(self, name, stage)
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


resnet, resnet18, resnet34, resnet50, resnet101, resnet152 = family.Factories(ResNet).all()


def _nchw(shape) -> tuple[int, ...]:
    return (shape[3], shape[1], shape[2]) if len(shape) == 4 else tuple(shape[1:])


def shape_walk(net: keras.Model, input_shape=(1, 224, 224)) -> list[tuple[str, tuple[int, ...]]]:
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them; for a
    network that is not d2lres's (the reader's ``keras.Sequential``), one row per layer
    ``(class name, shape)``, as the chapter prints them (shapes NCHW here too)."""
    inputs.check_network(net, isinstance(net, keras.Model), "tf", "shape_walk")
    return family.shape_walk(net, input_shape, family.Walker(
        zeros=lambda shape: tf.zeros((1, shape[1], shape[2], shape[0])),
        call=lambda layer, X: layer(X, training=False), shape=lambda X: _nchw(X.shape),
        mode=contextlib.nullcontext, children=KIT.children))


def count_parameters(net: keras.Model) -> tuple[int, int]:
    """``(trainable, non-trainable)``: weights, and BatchNorm moving statistics."""
    inputs.check_network(net, isinstance(net, keras.layers.Layer), "tf", "count_parameters")
    return (sum(int(np.prod(v.shape)) for v in net.trainable_weights),
            sum(int(np.prod(v.shape)) for v in net.non_trainable_weights))
