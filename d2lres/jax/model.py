"""ResNet in JAX with Flax ``nnx`` (channels last, NHWC), the same function as the PyTorch network:
the chapter's ``Residual`` and ``resnet_block`` as the book's other tabs write them, with d2lres's
lazy layers (:class:`LazyConv`, :class:`LazyBatchNorm`), and the kit from which ``d2lres.core.family``
builds the family of ``spec.ARCHS``. The speed kernels (BatchNorm's and the max-pool's gradients,
the patch convolution) are in ``kernels``.

What makes it PyTorch's function, layer by layer:

- every convolution pads symmetrically (``((p, p), (p, p))``; the book's ``padding='same'`` pads
  stride-2 layers 0 before / 1 after, as TF does), and the max-pool pads with ``-inf``;
- BatchNorm (:class:`BatchNorm`) has epsilon 1e-5 and PyTorch's momentum 0.1 (Flax's momentum
  is the weight of the *old* average: 0.9), computes the batch variance in two passes
  (``use_fast_variance=False``: ``E[x^2] - E[x]^2`` loses digits in float32) and keeps the
  running variance *unbiased* (Flax averages in the biased batch variance; PyTorch and Keras
  the unbiased one);
- convolutions and the dense layer: Xavier-uniform kernels, zero biases, float32 parameters
  and computation at ``lax.Precision.HIGHEST`` (no TF32 or bfloat16 passes on an accelerator).
  The ``Trainer``'s ``precision="bf16"`` compiles its step from a graph definition whose
  convolutions and dense layer have ``dtype=bfloat16`` (``d2lres.jax.train.dtype_policy``; the
  biases are added in float32); BatchNorm always normalises in float32.

Canonical names (``d2lres.spec``) are attribute paths: ``b3.0.conv1`` is ``net.b3.layers[0].conv1``.
"""
from __future__ import annotations

import contextvars

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from .. import inputs, spec
from ..core import compat, family
from ..errors import UserTypeError, UserValueError
from .kernels import Conv, max_pool, normalize_batch

#: Matmul/convolution precision: full float32 everywhere (accelerators would use TF32 by default).
PRECISION = lax.Precision.HIGHEST

# The initial values come from one numpy generator, as PyTorch's come from its global one
# (``init_weights(net, seed)`` gives seeded values, the same in every backend). JAX's own
# ``jax.random`` would compile one XLA program per parameter shape, which makes building a network
# the first time far slower than drawing from numpy. Flax's layers still take ``rngs`` (unused by these
# initialisers): a fresh one per layer, so that layers can also be built inside a JAX transform.
_GENERATOR = np.random.default_rng(0)


def _rngs() -> nnx.Rngs:
    return nnx.Rngs(0)


def xavier_uniform(key, shape, dtype=jnp.float32) -> jax.Array:
    """d2l's ``train_ch6`` initialiser for a Flax kernel (``(..., in, out)``): Glorot uniform."""
    receptive = int(np.prod(shape[:-2]))
    limit = np.sqrt(6.0 / ((shape[-2] + shape[-1]) * receptive))
    return jnp.asarray(_GENERATOR.uniform(-limit, limit, shape).astype(np.float32), dtype)


def zeros(key, shape, dtype=jnp.float32) -> jax.Array:
    return jnp.asarray(np.zeros(shape, np.float32), dtype)


def ones(key, shape, dtype=jnp.float32) -> jax.Array:
    return jnp.asarray(np.ones(shape, np.float32), dtype)


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` with d2lres's one setting (``spec.BN_EPS``, ``spec.BN_MOMENTUM``) and the
    running variance updated with the unbiased batch variance ``v n / (n - 1)``, as PyTorch does.
    Training mode runs ``kernels.normalize_batch``, whose gradient is written out (on a CPU, autodiff
    through the two-pass variance makes the training step slower; docs/performance.md has the timings)."""

    def __init__(self, num_features: int):
        super().__init__(num_features, momentum=1 - spec.BN_MOMENTUM, epsilon=spec.BN_EPS, use_fast_variance=False,
                         dtype=jnp.float32, param_dtype=jnp.float32, scale_init=ones, bias_init=zeros, rngs=_rngs())

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        # in float32 (or the wider of ``dtype`` and float32) whatever the input's: a bfloat16 convolution's
        # output (the Trainer's bf16 policy) is normalised, and its statistics computed, in float32
        x = jnp.asarray(x, jnp.promote_types(self.dtype or jnp.float32, jnp.float32))
        training = not (self.use_running_average if use_running_average is None else use_running_average)
        if not training or mask is not None:
            return super().__call__(x, use_running_average=use_running_average, mask=mask)
        y, mean, var = normalize_batch(x, self.scale[...], self.bias[...])
        n = x.size // x.shape[-1]
        m = self.momentum  # Flax's: the weight of the old average
        self.mean[...] = m * self.mean[...] + (1 - m) * mean
        self.var[...] = m * self.var[...] + (1 - m) * (var * n / (n - 1) if n > 1 else var)
        return y


#: While :func:`build` traces a module: lazy layer id -> (layer, the input channels it was traced with).
_TRACED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("d2lres_jax_lazy_traced", default=None)


class Lazy(nnx.Module):
    """A layer whose input channels (the last axis) are its first input's, as PyTorch's lazy
    modules: that call, which must be eager (outside ``jax.jit``), builds the full layer
    (``self.layer_for(channels)``) and this object becomes it, class and attributes, as a
    ``LazyConv2d`` becomes a ``Conv2d``; a built network's graph is then the one its layers would
    have had if built with their channels (no wrapper is left to trace). :func:`build` builds
    them from shapes alone."""

    def layer_for(self, channels: int) -> nnx.Module:
        raise NotImplementedError

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def become(self, channels: int) -> None:
        """Turn into ``self.layer_for(channels)``."""
        layer = self.layer_for(channels)
        vars(self).clear()
        vars(self).update(vars(layer))
        object.__setattr__(self, "__class__", type(layer))  # past nnx's __setattr__: not an attribute of the layer

    def __call__(self, X, *args, **kwargs):
        traced = _TRACED.get()
        if traced is not None and isinstance(X, jax.core.Tracer):  # build's shape trace: note the channels
            traced[id(self)] = self, X.shape[-1]
            return jnp.zeros(self.output_shape(X.shape), X.dtype)
        if isinstance(X, jax.core.Tracer):
            raise UserValueError(f"{type(self).__name__} is built on its first call, which must be eager (outside "
                                 "jax.jit); call the block once on an example batch, or pass in_channels")
        self.become(X.shape[-1])
        return self(X, *args, **kwargs)


def _check_ints(name: str, **values) -> None:
    for key, (value, least) in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise UserTypeError(f"{name}: {key} must be an integer >= {least}, got {value!r}")


class LazyConv(Lazy, Conv):
    """A square convolution with ``num_channels`` outputs and symmetric zero padding whose input
    channels are read on the first call (nnx's ``Conv`` takes them first), as PyTorch's
    ``nn.LazyConv2d``; it then becomes the :func:`conv` of those channels."""

    def __init__(self, num_channels: int, kernel_size: int, strides: int = 1, padding: int = 0,
                 use_bias: bool = True, groups: int = 1):
        _check_ints(type(self).__name__, num_channels=(num_channels, 1), kernel_size=(kernel_size, 1),
                    strides=(strides, 1), padding=(padding, 0), groups=(groups, 1))
        self.num_channels, self.kernel_size, self.strides, self.padding = num_channels, kernel_size, strides, padding
        self.use_bias, self.groups = bool(use_bias), groups

    def layer_for(self, channels: int) -> Conv:
        return conv(channels, self.num_channels, self.kernel_size, self.strides, self.padding, self.use_bias,
                    self.groups)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        n, h, w, _ = input_shape
        k, s, p = self.kernel_size, self.strides, self.padding
        return n, spec.conv_out_size(h, k, s, p), spec.conv_out_size(w, k, s, p), self.num_channels


class LazyBatchNorm(Lazy, BatchNorm):
    """:class:`BatchNorm` over the channels of its first input, as PyTorch's ``nn.LazyBatchNorm2d``;
    the mode set before that call (``eval()``, ``train()``) is kept."""

    def __init__(self):
        self.use_running_average = False

    def layer_for(self, channels: int) -> BatchNorm:
        bn = BatchNorm(channels)
        bn.use_running_average = self.use_running_average
        return bn

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape


def conv(in_channels: int | None, out_channels: int, kernel: int, stride: int = 1, padding: int = 0,
         bias: bool = True, groups: int = 1) -> nnx.Module:
    """A convolution with symmetric zero padding (``groups``: Flax's ``feature_group_count``); a
    :class:`LazyConv` when ``in_channels`` is None."""
    if not in_channels:
        return LazyConv(out_channels, kernel, stride, padding, bias, groups)
    return Conv(in_channels, out_channels, (kernel, kernel), strides=(stride, stride),
                padding=((padding, padding), (padding, padding)), feature_group_count=groups, use_bias=bias,
                kernel_init=xavier_uniform, bias_init=zeros, precision=PRECISION, dtype=jnp.float32,
                param_dtype=jnp.float32, rngs=_rngs())


def batch_norm(channels: int | None) -> nnx.Module:
    """:class:`BatchNorm`; a :class:`LazyBatchNorm` when ``channels`` is None."""
    return BatchNorm(channels) if channels else LazyBatchNorm()


def relu(X: jax.Array) -> jax.Array:
    return jax.nn.relu(X)




class MaxPool(nnx.Module):
    """Max-pool with symmetric padding that never wins the max (``-inf``), as PyTorch's. Its
    gradient is ``kernels.max_pool``'s: XLA's own (``select_and_scatter``) is several times slower
    on a CPU (docs/performance.md gives the stem's timings)."""

    def __init__(self, kernel: int = 3, stride: int = 2, padding: int = 1):
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def __call__(self, X):
        return max_pool(X, self.kernel, self.stride, self.padding)


def global_avg_pool(X: jax.Array) -> jax.Array:
    """NHWC -> (N, 1, 1, C)."""
    return X.mean(axis=(1, 2), keepdims=True)


def flatten(X: jax.Array) -> jax.Array:
    return X.reshape(X.shape[0], -1)


class Residual(nnx.Module):
    """The Residual block of ResNet models."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1):
        # d2lres's LazyConv and LazyBatchNorm, not nnx's Conv and BatchNorm: nnx's need the input channels,
        # padding='SAME' pads a stride-2 layer 0 before and 1 after, and nnx's BatchNorm keeps a biased
        # running variance; these two are PyTorch's, as in every backend
        self.conv1 = LazyConv(num_channels, kernel_size=3, padding=1, strides=strides)
        self.conv2 = LazyConv(num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = LazyConv(num_channels, kernel_size=1, strides=strides)
        else:
            self.conv3 = None
        self.bn1 = LazyBatchNorm()
        self.bn2 = LazyBatchNorm()

    def __call__(self, X):
        Y = nnx.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return nnx.relu(Y)


def resnet_block(num_channels, num_residuals, first_block=False):
    """A ResNet stage: all but the first halve height and width."""
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels))
    return nnx.Sequential(*blk)


# ---------------------------------------------------------------- the library around the chapter's cells

def build(module: nnx.Module, in_channels: int) -> None:
    """Build ``module``'s lazy layers for ``in_channels`` input channels now, from shapes alone:
    one pixel traced through it in eval mode (``jax.eval_shape``: nothing computed, its BatchNorm
    statistics untouched), each lazy layer noting the channels it sees, then each built."""
    traced = {}
    token = _TRACED.set(traced)
    try:
        with _eval_mode(module):
            jax.eval_shape(lambda X: module(X), jax.ShapeDtypeStruct((1, 1, 1, in_channels), jnp.float32))
    finally:
        _TRACED.reset(token)
    for layer, channels in traced.values():
        layer.become(channels)


# the book's signatures, with d2lres's in_channels; d2l 0.17's refused (family.py, compat.py)
Residual = family.chapter_residual(Residual, method="__call__", shape=lambda X: (X.shape[-1], *X.shape[1:3]),
                                   build=build)
resnet_block = family.chapter_resnet_block(resnet_block, build)


def _sequential(layers, name: str) -> nnx.Sequential:
    return nnx.Sequential(*[layer for _, layer in layers])


KIT = family.Kit(
    conv=lambda p: conv(p.in_channels, p.out_channels, p.kernel, p.stride, p.padding, p.bias, p.groups),
    batch_norm=batch_norm, relu=lambda: relu, max_pool=lambda p: MaxPool(p.kernel, p.stride, p.padding),
    avg_pool=lambda: global_avg_pool, flatten=lambda: flatten,
    dense=lambda p: nnx.Linear(p.in_features, p.out_features, kernel_init=xavier_uniform, bias_init=zeros,
                               precision=PRECISION, dtype=jnp.float32, param_dtype=jnp.float32, rngs=_rngs()),
    sequential=_sequential, children=lambda stage: stage.layers)


class Block(nnx.Module):
    """Any block of the family, built from its ``spec.Block`` (``family.build_block``)."""

    def __init__(self, block: spec.Block):
        family.build_block(self, block, KIT)

    def __call__(self, X: jax.Array) -> jax.Array:
        family.check_block_input(self, X.shape[-1])
        return family.run_block(self, X, relu)


class Bottleneck(family.Bottleneck, Block):
    """``family.Bottleneck`` in JAX."""


class PreActResidual(family.PreActResidual, Block):
    """``family.PreActResidual`` in JAX."""


class PreActBottleneck(family.PreActBottleneck, Block):
    """``family.PreActBottleneck`` in JAX."""


class ResNeXtBlock(family.ResNeXtBlock, Block):
    """``family.ResNeXtBlock`` (d2l 1.0's; ``groups`` is the width of a group) in JAX."""


class ResNet(nnx.Module):
    """Stages ``b1`` .. ``b5`` and ``head`` (``nnx.Sequential``) of the variant ``arch``
    (``spec.get_arch``; None: the chapter's ResNet-18, built from its ``Residual`` and
    ``resnet_block``); iterate it like the chapter. Input: NHWC. BatchNorm starts in training
    mode (``net.eval()`` / ``net.train()`` switch it), as a PyTorch module does."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, arch=None, device=None):
        arch = spec.get_arch(arch)
        for name, stage in family.stages(KIT, Block, resnet_block, arch, num_classes, in_channels).items():
            setattr(self, name, stage)
        self.in_channels, self.num_classes, self.arch = in_channels, num_classes, arch
        if device is not None:
            to_device(self, device)

    def __iter__(self):
        return iter([self.b1, self.b2, self.b3, self.b4, self.b5, self.head])

    def __call__(self, X: jax.Array) -> jax.Array:
        inputs.check_batch(tuple(X.shape), X.dtype, self.in_channels, channels_last=True,
                           training=not self.b1.layers[1].use_running_average, arch=self.arch,
                           num_classes=self.num_classes)
        X = jnp.asarray(X)
        X = X if X.dtype == jnp.float32 else X.astype(jnp.float32)  # floating inputs: cast
        for stage in self:
            X = stage(X)
        return X


def to_device(net: nnx.Module, device) -> None:
    """Move every parameter and statistic of ``net`` to ``device``."""
    nnx.update(net, jax.device_put(nnx.state(net), device))


resnet, resnet18, resnet34, resnet50, resnet101, resnet152 = family.Factories(ResNet).all()


def batch_norms(net: nnx.Module) -> list[BatchNorm]:
    return [m for _, m in nnx.iter_graph(net) if isinstance(m, nnx.BatchNorm)]


def _nchw(shape) -> tuple[int, ...]:
    return (shape[3], shape[1], shape[2]) if len(shape) == 4 else tuple(shape[1:])


def shape_walk(net: ResNet, input_shape=(1, 224, 224)) -> list[tuple[str, tuple[int, ...]]]:
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them (shapes
    only: ``jax.eval_shape``, no computation, the BatchNorm statistics untouched). For a network
    that is not d2lres's (the reader's ``nnx.Sequential``), one row per layer ``(class or
    function name, shape)``, computed in eval mode."""
    inputs.check_network(net, isinstance(net, nnx.Module), "jax", "shape_walk")
    ours = compat.is_d2lres_net(net)
    if not ours and not isinstance(net, nnx.Sequential):
        raise UserTypeError(f"shape_walk walks a d2lres network or an nnx.Sequential, not a {type(net).__name__}")
    return family.shape_walk(net, input_shape, family.Walker(
        zeros=lambda s: (jax.ShapeDtypeStruct if ours else jnp.zeros)((1, s[1], s[2], s[0]), jnp.float32),
        call=jax.eval_shape if ours else lambda layer, X: layer(X), shape=lambda X: _nchw(X.shape),
        mode=lambda: _eval_mode(net), children=KIT.children))


class _eval_mode:
    """Eval mode while a shape walk runs; each BatchNorm's mode is put back after."""

    def __init__(self, net: nnx.Module):
        self.net = net

    def __enter__(self):
        self.modes = [(bn, bn.use_running_average) for bn in batch_norms(self.net)]
        self.net.eval()

    def __exit__(self, *exc):
        for bn, mode in self.modes:
            bn.use_running_average = mode


def count_parameters(net: nnx.Module) -> tuple[int, int]:
    """``(trainable, non-trainable)``: ``nnx.Param`` and ``nnx.BatchStat`` (running statistics)."""
    inputs.check_network(net, isinstance(net, nnx.Module), "jax", "count_parameters")
    return tuple(sum(int(x.size) for x in jax.tree.leaves(nnx.state(net, kind))) for kind in (nnx.Param, nnx.BatchStat))
