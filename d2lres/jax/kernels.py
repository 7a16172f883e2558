"""JAX's speed kernels, each the same function as XLA's own within float32 rounding: the
training-mode BatchNorm with its gradient written out (:func:`normalize_batch`) and its per-channel
sums as dots (:func:`channel_sum`), the max-pool with a phase-wise backward (:func:`max_pool`), and
:class:`Conv`, which convolves tiny outputs as matmuls (tap by tap, or over patches per group)."""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from .. import spec

#: Rows per block of :func:`channel_sum`'s dots (at most: the largest divisor of the rows up to it).
SUM_BLOCK = 256


def channel_sum(x):
    """``x`` summed over every axis but the last. In float32, as dots of blocks of rows with a vector
    of ones, then the blocks' sums: XLA's CPU reduction over the leading axes is slow (the stem's
    BatchNorm at 40 px took a third of JAX's stem; docs/performance.md), and the blocks' partial sums
    round less than one long sum. Other dtypes, or fewer than 16 rows to a block: XLA's reduction."""
    x2 = x.reshape(-1, x.shape[-1])
    block = math.gcd(x2.shape[0], SUM_BLOCK)
    if x.dtype != jnp.float32 or block < 16:
        return x2.sum(0)
    return (jnp.ones((block,), x.dtype) @ x2.reshape(-1, block, x2.shape[-1])).sum(0)


def add_bias(Y, bias):
    """``Y + bias`` over the last axis (in their promoted dtype, as ``+``), the bias's gradient summed
    by :func:`channel_sum`: XLA's CPU reduction over the leading axes is slow for the stem's many rows
    (docs/performance.md)."""
    dtype = jnp.promote_types(Y.dtype, bias.dtype)
    return _add_bias(Y.astype(dtype), bias.astype(dtype))


@jax.custom_vjp
def _add_bias(Y, bias):
    return Y + bias


def _add_bias_fwd(Y, bias):
    return Y + bias, None


def _add_bias_bwd(_, g):
    return g, channel_sum(g)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def _batch_norm_fwd(x, scale, bias):
    n = x.size // x.shape[-1]
    mean = channel_sum(x) / n
    centred = x - mean
    var = channel_sum(centred * centred) / n  # two passes: E[x^2] - E[x]^2 loses digits in float32
    inv = lax.rsqrt(var + spec.BN_EPS)
    xhat = centred * inv
    return (xhat * scale + bias, mean, var), (xhat, inv, scale)


def _batch_norm_bwd(saved, cotangents):
    """The gradient in closed form (two reductions and one elementwise pass); the statistics'
    cotangents are dropped: they only feed the running averages, never the loss."""
    xhat, inv, scale = saved
    g = cotangents[0]
    n = g.size // g.shape[-1]
    dbias, dscale = channel_sum(g), channel_sum(g * xhat)
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
    """``nnx.Conv`` (NHWC, HWIO kernel) that computes tiny outputs as matmuls: one per kernel tap
    that meets the input (``_taps``), or, grouped (``feature_group_count`` > 1), one matmul over
    patches per group; and a grouped convolution with larger outputs as XLA's dense convolution
    with the block-diagonal kernel: XLA's CPU grouped convolution, its gradient above all, is far
    slower than the dense one with the groups' zeros (docs/performance.md). The zeros add exact
    zero products: the same function within float32 rounding (and an infinite input reaches the
    other groups as NaN)."""

    def __call__(self, X):
        k, s, p = self.kernel_size[0], self.strides[0], self.padding[0][0]
        ho, wo = (spec.conv_out_size(X.shape[axis], k, s, p) for axis in (1, 2))
        if ho * wo > PATCHES_MAX_PIXELS:
            return self._xla(X, s, p)
        if self.feature_group_count == 1:
            return self._taps(X, k, s, p, ho, wo)
        Xp = jnp.pad(X, ((0, 0), (p, p), (p, p), (0, 0))) if p else X
        patches = jnp.concatenate([Xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]
                                   for i in range(k) for j in range(k)], axis=-1)  # (N, ho, wo, k*k*C)
        bias = self.bias[...] if self.bias is not None else None
        patches, kernel, bias = self.promote_dtype((patches, self.kernel[...], bias), dtype=self.dtype)  # as nnx.Conv
        g = self.feature_group_count  # patches (.., k*k, g, C/g) with the kernel (k*k, C/g, g, O/g): group by group
        n, c, o = X.shape[0], X.shape[-1] // g, kernel.shape[-1]
        Y = jnp.einsum("nhwkgc,kcgo->nhwgo", patches.reshape(n, ho, wo, k * k, g, c),
                       kernel.reshape(k * k, c, g, o // g), precision=self.precision).reshape(n, ho, wo, o)
        return add_bias(Y, bias) if bias is not None else Y

    def _taps(self, X, k: int, s: int, p: int, ho: int, wo: int):
        """A dense convolution as a sum over the kernel taps that meet the input (``spec.conv_taps``)
        of ``input slice @ tap``: the padding's zeros are not multiplied."""
        bias = self.bias[...] if self.bias is not None else None
        X, kernel, bias = self.promote_dtype((X, self.kernel[...], bias), dtype=self.dtype)  # as nnx.Conv
        Y = jnp.zeros((X.shape[0], ho, wo, kernel.shape[-1]), jnp.float32)  # the taps summed in float32 (bf16)
        for a, i0, ni, r0 in spec.conv_taps(X.shape[1], k, s, p):
            for b, j0, nj, c0 in spec.conv_taps(X.shape[2], k, s, p):
                Xs = X[:, r0:r0 + s * (ni - 1) + 1:s, c0:c0 + s * (nj - 1) + 1:s, :]
                Y = Y.at[:, i0:i0 + ni, j0:j0 + nj].add(lax.dot_general(
                    Xs, kernel[a, b], (((3,), (0,)), ((), ())), precision=self.precision,
                    preferred_element_type=jnp.float32))
        Y = Y.astype(X.dtype)
        return add_bias(Y, bias) if bias is not None else Y

    def _xla(self, X, s: int, p: int):
        """XLA's dense convolution, as ``nnx.Conv`` calls it, with :func:`add_bias`; a grouped kernel
        as the dense block-diagonal one."""
        bias = self.bias[...] if self.bias is not None else None
        X, kernel, bias = self.promote_dtype((X, self.kernel[...], bias), dtype=self.dtype)
        g, (kh, kw, c, o) = self.feature_group_count, kernel.shape
        if g > 1:
            eye = jnp.eye(g, dtype=kernel.dtype).reshape(1, 1, g, 1, g, 1)  # (.., input group, .., output group, ..)
            kernel = (kernel.reshape(kh, kw, 1, c, g, o // g) * eye).reshape(kh, kw, g * c, o)  # an exact product
        Y = lax.conv_general_dilated(X, kernel, (s, s), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=self.precision, preferred_element_type=self.preferred_element_type)
        return add_bias(Y, bias) if bias is not None else Y


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
    ho, wo, q = spec.conv_out_size(h, k, s, p), spec.conv_out_size(w, k, s, p), (k - 1) // s
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
