"""ResNet-18 in JAX with Flax ``nnx`` (channels last, NHWC), the same function as the PyTorch
network; beside the chapter's blocks, the family of ``spec.ARCHS`` (``Bottleneck``,
``PreActResidual``, ``PreActBottleneck``, ``resnet``).

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

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from .. import inputs, spec
from ..core import api, book
from ..errors import UserTypeError, UserValueError

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
    Training mode runs :func:`normalize_batch`, whose gradient is written out (on a CPU, autodiff
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


def _batch_norm_fwd(x, scale, bias):
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    centred = x - mean
    var = (centred * centred).mean(axes)  # two passes: E[x^2] - E[x]^2 loses digits in float32
    inv = lax.rsqrt(var + spec.BN_EPS)
    xhat = centred * inv
    return (xhat * scale + bias, mean, var), (xhat, inv, scale)


def _batch_norm_bwd(saved, cotangents):
    """The gradient in closed form (two reductions and one elementwise pass); the statistics'
    cotangents are dropped: they only feed the running averages, never the loss."""
    xhat, inv, scale = saved
    g = cotangents[0]
    axes = tuple(range(g.ndim - 1))
    n = g.size // g.shape[-1]
    dbias, dscale = g.sum(axes), (g * xhat).sum(axes)
    return (scale * inv) * (g - (dbias + xhat * dscale) / n), dscale, dbias


@jax.custom_vjp
def normalize_batch(x, scale, bias):
    """Training-mode BatchNorm over every axis but the last: ``(y, batch mean, biased variance)``."""
    return _batch_norm_fwd(x, scale, bias)[0]


normalize_batch.defvjp(_batch_norm_fwd, _batch_norm_bwd)


#: Outputs of at most this many pixels (H x W) are convolved as one matmul over explicit patches:
#: XLA's CPU convolution is pathological there (ResNet-18's b5 at 40x40 input: 2x2 outputs with
#: 512 channels, forward and gradient, run far slower than the same work as a matmul, as timed on
#: a CPU; docs/performance.md gives the figures). Larger outputs keep XLA's convolution (faster there).
PATCHES_MAX_PIXELS = 4


class Conv(nnx.Conv):
    """``nnx.Conv`` (NHWC, HWIO kernel) that computes tiny outputs as a matmul over patches."""

    def __call__(self, X):
        k, s, p = self.kernel_size[0], self.strides[0], self.padding[0][0]
        ho, wo = ((X.shape[axis] + 2 * p - k) // s + 1 for axis in (1, 2))
        if ho * wo > PATCHES_MAX_PIXELS:
            return super().__call__(X)
        Xp = jnp.pad(X, ((0, 0), (p, p), (p, p), (0, 0))) if p else X
        patches = jnp.concatenate([Xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]
                                   for i in range(k) for j in range(k)], axis=-1)  # (N, ho, wo, k*k*C)
        bias = self.bias[...] if self.bias is not None else None
        patches, kernel, bias = self.promote_dtype((patches, self.kernel[...], bias), dtype=self.dtype)  # as nnx.Conv
        Y = lax.dot_general(patches, kernel.reshape(-1, kernel.shape[-1]), (((3,), (0,)), ((), ())),
                            precision=self.precision)
        return Y + bias if bias is not None else Y


class Lazy(nnx.Module):
    """A layer built on its first call, when the input's channels (last axis) are known; as
    PyTorch's ``LazyConv2d``. Build it eagerly (a call outside ``jax.jit``) before training."""

    def __init__(self, make):
        self.make = make
        self.layer = nnx.data(None)

    def __call__(self, X):
        if self.layer is None:
            if isinstance(X, jax.core.Tracer):
                raise UserValueError("a layer without in_channels is built on its first call, which must be eager "
                                     "(outside jax.jit); call the block once on an example batch, or pass in_channels")
            self.layer = self.make(X.shape[-1])
        return self.layer(X)


def conv(in_channels: int | None, out_channels: int, kernel: int, stride: int = 1, padding: int = 0,
         bias: bool = True) -> nnx.Module:
    """A convolution with symmetric zero padding; lazy when ``in_channels`` is None."""
    if not in_channels:
        return Lazy(lambda c: conv(c, out_channels, kernel, stride, padding, bias))
    return Conv(in_channels, out_channels, (kernel, kernel), strides=(stride, stride),
                padding=((padding, padding), (padding, padding)), use_bias=bias, kernel_init=xavier_uniform,
                bias_init=zeros, precision=PRECISION, dtype=jnp.float32, param_dtype=jnp.float32, rngs=_rngs())


def batch_norm(channels: int | None) -> nnx.Module:
    """:class:`BatchNorm`; lazy when ``channels`` is None."""
    return BatchNorm(channels) if channels else Lazy(BatchNorm)


def relu(X: jax.Array) -> jax.Array:
    return jax.nn.relu(X)


def _reduce_max(X, k: int, s: int, p: int):
    return nnx.max_pool(X, (k, k), (s, s), ((p, p), (p, p)))  # lax.reduce_window from -inf: pads with -inf


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(X: jax.Array, k: int, s: int, p: int) -> jax.Array:
    """``k x k`` max-pool, stride ``s``, padding ``p`` with ``-inf`` (never the max), NHWC."""
    return _reduce_max(X, k, s, p)


def _max_pool_fwd(X, k, s, p):
    return _reduce_max(X, k, s, p), X


def _max_pool_bwd(k, s, p, X, G):
    """XLA's gradient (``select_and_scatter``: each window's first maximum in row-major order
    takes the window's gradient), computed per stride phase: the padded input viewed as
    ``(N, H/s, s, W/s, s, C)``; window offset ``(i, j)`` reads and writes one phase at a shift,
    so every op is dense and contiguous. The maxima are found again here, as indices (comparing
    with the forward's maxima would miss where XLA computed ``X`` twice, in two fusions)."""
    n, h, w, c = X.shape
    ho, wo, q = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, (k - 1) // s
    lh, lw = s * (ho + q), s * (wo + q)  # the padded input as whole phases (cropped or -inf padded)
    Xp = jnp.pad(X, ((0, 0), (p, max(lh - p - h, 0)), (p, max(lw - p - w, 0)), (0, 0)),
                 constant_values=-jnp.inf)[:, :lh, :lw]
    phases = Xp.reshape(n, ho + q, s, wo + q, s, c)
    offsets = [(divmod(i, s), divmod(j, s)) for i in range(k) for j in range(k)]  # ((di, a), (dj, b))

    def window(offset):
        (di, a), (dj, b) = offset
        return phases[:, di:di + ho, a, dj:dj + wo, b, :]
    best, first = window(offsets[0]), jnp.zeros(G.shape, jnp.int32)
    for o, offset in enumerate(offsets[1:], 1):
        value = window(offset)
        better = value > best  # strictly: the first maximum keeps the gradient
        best, first = jnp.where(better, value, best), jnp.where(better, o, first)
    dphases = [[jnp.zeros((n, ho + q, wo + q, c), G.dtype) for _ in range(s)] for _ in range(s)]
    for o, ((di, a), (dj, b)) in enumerate(offsets):
        dphases[a][b] = dphases[a][b] + jnp.pad(jnp.where(first == o, G, 0),
                                                ((0, 0), (di, q - di), (dj, q - dj), (0, 0)))
    dXp = jnp.stack([jnp.stack(row, axis=3) for row in dphases], axis=2).reshape(n, lh, lw, c)
    dXp = jnp.pad(dXp, ((0, 0), (0, max(p + h - lh, 0)), (0, max(p + w - lw, 0)), (0, 0)))
    return (dXp[:, p:p + h, p:p + w],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


class MaxPool(nnx.Module):
    """Max-pool with symmetric padding that never wins the max (``-inf``), as PyTorch's. Its
    gradient is :func:`_max_pool_bwd`'s: XLA's own (``select_and_scatter``) is several times slower
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
    """The Residual block of ResNet (NHWC). Without ``in_channels`` the layers that see the
    input are built on the first call."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 in_channels: int | None = None):
        self.conv1 = conv(in_channels, num_channels, 3, strides, 1)
        self.conv2 = conv(num_channels, num_channels, 3, 1, 1)
        self.conv3 = conv(in_channels, num_channels, 1, strides) if use_1x1conv else nnx.data(None)
        self.bn1, self.bn2 = batch_norm(num_channels), batch_norm(num_channels)
        self.num_channels, self.use_1x1conv, self.strides = num_channels, use_1x1conv, strides

    def __call__(self, X: jax.Array) -> jax.Array:
        if self.conv3 is None and X.shape[-1] != self.num_channels:
            spec.residual_output_shape((X.shape[-1], *X.shape[1:3]), self.num_channels, False, self.strides)
        Y = nnx.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return nnx.relu(Y + X)


def resnet_block(num_channels: int, num_residuals: int, first_block: bool = False, *,
                 in_channels: int | None = None) -> nnx.Sequential:
    """A stage of ``num_residuals`` blocks; all but the first stage halve height and width."""
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blocks.append(Residual(num_channels, use_1x1conv=True, strides=2, in_channels=in_channels))
        else:
            blocks.append(Residual(num_channels, in_channels=in_channels if i == 0 else num_channels))
    return nnx.Sequential(*blocks)


# d2l 0.17's signatures refused (book.py); added here so that the #@save cells stay the chapter's code
Residual = book.checked_residual(Residual)
resnet_block = book.checked_resnet_block(resnet_block)


class Block(nnx.Module):
    """Any block of the family, built from its ``spec.Block``: sublayers named as the spec's
    canonical names (``conv1``, ``bn1``, ...); input channels 0 build those layers lazily."""

    def __init__(self, block: spec.Block):
        self.spec = block
        for p in block.layers():
            attr = p.local
            setattr(self, attr, conv(p.in_channels, p.out_channels, p.kernel, p.stride, p.padding, p.bias)
                    if isinstance(p, spec.Conv) else batch_norm(p.channels))
        self.main_path = tuple(block.main_path())
        self.shortcut_path = tuple(block.shortcut_path())

    def _run(self, path, X):
        for step in path:
            X = relu(X) if step == "relu" else getattr(self, step)(X)
        return X

    def __call__(self, X: jax.Array) -> jax.Array:
        b = self.spec
        if not b.projection and X.shape[-1] != b.out_channels:
            raise UserValueError(f"{type(self).__name__}({b.out_channels}, use_1x1conv=False) cannot add an input "
                                 f"of {X.shape[-1]} channel(s): it needs {b.out_channels}, or use_1x1conv=True")
        if b.version == 1:
            return relu(self._run(self.main_path, X) + self._run(self.shortcut_path, X))
        P = self._run(self.main_path[:2], X)  # bn1, relu: the pre-activation both paths share
        return self._run(self.main_path[2:], P) + (self._run(self.shortcut_path, P) if b.projection else X)


Bottleneck, PreActResidual, PreActBottleneck = api.block_classes(Block)


class ResNet(nnx.Module):
    """Stages ``b1`` .. ``b5`` and ``head`` (``nnx.Sequential``) of the variant ``arch``
    (``spec.get_arch``; None: the chapter's ResNet-18, built from its ``Residual`` and
    ``resnet_block``); iterate it like the chapter. Input: NHWC. BatchNorm starts in training
    mode (``net.eval()`` / ``net.train()`` switch it), as a PyTorch module does."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, arch=None, device=None):
        arch = spec.get_arch(arch)
        net_spec = spec.resnet_spec(arch, num_classes, in_channels)  # validates the arguments
        self.b1 = nnx.Sequential(conv(in_channels, 64, 7, 2, 3, net_spec["b1"][0].bias), batch_norm(64), relu,
                                 MaxPool(3, 2, 1))
        channels = 64
        for k, (num_residuals, num_channels) in enumerate(arch.stages):
            name = f"b{k + 2}"
            if arch == spec.Arch():
                stage = resnet_block(num_channels, num_residuals, first_block=(k == 0), in_channels=channels)
            else:
                stage = nnx.Sequential(*[Block(b) for b in net_spec[name]])
            setattr(self, name, stage)
            channels = num_channels
        head = [batch_norm(channels), relu] if arch.version == 2 else []
        self.head = nnx.Sequential(*head, global_avg_pool, flatten,
                                   nnx.Linear(channels, num_classes, kernel_init=xavier_uniform, bias_init=zeros,
                                              precision=PRECISION, dtype=jnp.float32, param_dtype=jnp.float32,
                                              rngs=_rngs()))
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


resnet, resnet18, resnet34, resnet50, resnet101, resnet152 = api.factories(ResNet)


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
    if not book.is_d2lres_net(net):
        if not isinstance(net, nnx.Sequential):
            raise UserTypeError(f"shape_walk walks a d2lres network or an nnx.Sequential, not a {type(net).__name__}")
        c, h, w = book.walk_input(input_shape)
        return book.walk_children(enumerate(net.layers), jnp.zeros((1, h, w, c)), lambda layer, X: layer(X),
                                  lambda X: _nchw(X.shape), lambda: _eval_mode(net))
    input_shape = inputs.check_shape(input_shape, net.in_channels)
    c, h, w = input_shape
    X, rows = jax.ShapeDtypeStruct((1, h, w, c), jnp.float32), []
    net_spec = spec.resnet_spec(net.arch, net.num_classes, net.in_channels)
    modes = [(bn, bn.use_running_average) for bn in batch_norms(net)]
    net.eval()
    try:
        for stage_name, stage in zip(spec.STAGE_NAMES, net):
            if stage_name in ("b1", "head"):
                for layer_spec, layer in zip(net_spec[stage_name], stage.layers):
                    X = jax.eval_shape(layer, X)
                    rows.append((spec.layer_name(stage_name, layer_spec), _nchw(X.shape)))
            else:
                X = jax.eval_shape(stage, X)
                rows.append((stage_name, _nchw(X.shape)))
    finally:
        for bn, mode in modes:
            bn.use_running_average = mode
    return rows


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
