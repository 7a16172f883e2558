"""MXNet's speed kernels on the CPU: convolutions with outputs of at most 2x2 run as one matmul
instead of oneDNN's convolution, which is slow at these shapes, above all held to AVX2
(docs/performance.md): one whose every output reads every input pixel (``spec.conv_is_dense``; at
40x40, stage 5's 3x3 convolutions on 2x2 maps) with the convolution unrolled into a dense matrix
built from slices of the kernel, and a 1x1 one (the strided shortcut) on the pixels it reads. The
same function within float32 rounding (tests/test_mxnet_kernels.py).

The unrolled matrix depends on the input's size, and Gluon traces a hybridized block into a graph
of symbols without shapes, then reuses that graph for any input shape. So :class:`Conv2D` takes
a matmul in a traced graph only when the shape of the traced block's input is known: inside
:func:`call`, which keys the block's cached graph by that shape. Anywhere else a traced graph gets
MXNet's own convolution. An eager call (not hybridized) knows its input and takes the rule as it is."""
from __future__ import annotations

import contextvars

import mxnet as mx
from mxnet.gluon import nn

from .. import spec

#: The rules (``uses_dense``, ``uses_pointwise``): both output sides at most this many pixels.
MATMUL_MAX_SIDE = 2

#: The input shapes of the graph being traced inside :func:`call`, by Gluon's name for the input.
_TRACED_INPUTS: contextvars.ContextVar = contextvars.ContextVar("d2lres_mxnet_traced_inputs", default=None)


def _outputs(size, kernel, stride, padding) -> list[int] | None:
    """The output sides if both are at most ``MATMUL_MAX_SIDE`` (and positive), else None."""
    outs = [spec.conv_out_size(*axis) for axis in zip(size, kernel, stride, padding)]
    return outs if 0 < min(outs) and max(outs) <= MATMUL_MAX_SIDE else None


def uses_dense(size, kernel, stride, padding, dilation=(1, 1), groups=1) -> bool:
    """Whether a 2-D convolution of a ``size`` (height, width) input runs as :func:`dense_conv2d`: a
    dense kernel (no groups, no dilation), small outputs (``MATMUL_MAX_SIDE``), and every output
    reading every input pixel along both axes."""
    return groups == 1 and tuple(dilation) == (1, 1) and _outputs(size, kernel, stride, padding) is not None \
        and all(spec.conv_is_dense(*axis) for axis in zip(size, kernel, stride, padding))


def uses_pointwise(size, kernel, stride, padding, dilation=(1, 1), groups=1) -> bool:
    """Whether it runs as :func:`pointwise_conv2d`: a dense 1x1 kernel without padding, small outputs."""
    return groups == 1 and tuple(kernel) == (1, 1) and tuple(padding) == (0, 0) \
        and _outputs(size, kernel, stride, padding) is not None


def dense_conv2d(F, X, weight, bias, size, kernel_shape, stride, padding):
    """The NCHW convolution of ``X`` (spatial ``size``) by ``weight`` (``kernel_shape``: O, C, kh, kw)
    as one matmul: the input flattened channels last (h x w x C) times the kernel unrolled to
    (O x outputs, h x w x C), whose block for output pixel (i, j) is the window of the kernel that
    meets the input from there (oneDNN's inner product does the matmul). The windows are gathered
    from the kernel by a 0/1 matrix (which tap each pair of output and input pixels takes): one
    batched matmul per output channel, which also puts the channels last and whose gradient sums
    each tap's blocks. Sliced from the kernel, the slices' gradients cost more than the matmul
    (docs/performance.md)."""
    (h, w), (o, c, kh, kw) = size, kernel_shape
    ho, wo = [spec.conv_out_size(*axis) for axis in zip(size, kernel_shape[2:], stride, padding)]
    # output (i, j) reads input (y, x) through tap (y - i * stride + padding, x - j * stride + padding)
    tops = [padding[0] - i * stride[0] for i in range(ho)]
    lefts = [padding[1] - j * stride[1] for j in range(wo)]
    grid = F.np.arange(kh * kw).reshape(kh, kw)  # the taps' numbers
    pairs = ho * wo * h * w
    select = F.npx.one_hot(F.np.stack([grid[t:t + h, u:u + w] for t in tops for u in lefts]).reshape(pairs), kh * kw)
    # per output channel: (pairs, taps) @ (C, taps)^T, the kernel's transpose left to the matmul
    unrolled = F.npx.batch_dot(F.np.broadcast_to(select.reshape(1, pairs, kh * kw), (o, pairs, kh * kw)),
                               weight.reshape(o, c, kh * kw), transpose_b=True)
    if bias is not None:  # the inner product's own bias: its gradient is oneDNN's, not a slow broadcast reduction
        bias = F.np.repeat(bias, ho * wo)
    return F.npx.fully_connected(X.transpose(0, 2, 3, 1).reshape(-1, h * w * c),
                                 unrolled.reshape(o * ho * wo, h * w * c), bias,
                                 num_hidden=o * ho * wo, no_bias=bias is None).reshape(-1, o, ho, wo)


def pointwise_conv2d(F, X, weight, bias, size, kernel_shape, stride):
    """The NCHW 1x1 convolution of ``X`` (spatial ``size``) by ``weight`` (``kernel_shape``: O, C, 1, 1)
    as one matmul: the pixels it reads (every ``stride``-th), channels last, times the kernel as it is."""
    (h, w), (o, c, _, _) = size, kernel_shape
    ho, wo = spec.conv_out_size(h, 1, stride[0], 0), spec.conv_out_size(w, 1, stride[1], 0)
    if tuple(stride) != (1, 1):
        X = F.npx.slice(X, begin=(None, None, 0, 0), end=(None, None, h, w), step=(1, 1, *stride))
    return F.npx.fully_connected(X.transpose(0, 2, 3, 1).reshape(-1, c), weight.reshape(o, c), bias, num_hidden=o,
                                 no_bias=bias is None).reshape(-1, ho, wo, o).transpose(0, 3, 1, 2)


class Conv2D(nn.Conv2D):
    """Gluon's ``Conv2D``, taking :func:`dense_conv2d` or :func:`pointwise_conv2d` where
    :func:`uses_dense` or :func:`uses_pointwise` accepts its input."""

    def hybrid_forward(self, F, x, weight, bias=None):
        args = self._kwargs
        size = _spatial_size(x) if self.act is None and args["layout"] == "NCHW" else None
        if size is not None:
            geometry = (size, args["kernel"], args["stride"], args["pad"], args["dilate"], args["num_group"])
            if uses_dense(*geometry):
                return dense_conv2d(F, x, weight, bias, size, self.weight.shape, args["stride"], args["pad"])
            if uses_pointwise(*geometry):
                return pointwise_conv2d(F, x, weight, bias, size, self.weight.shape, args["stride"])
        return super().hybrid_forward(F, x, weight, bias)


def _spatial_size(x) -> tuple[int, int] | None:
    """``(height, width)`` of a float32 CPU array, or of a symbol traced inside :func:`call`; else None."""
    if isinstance(x, mx.nd.NDArray):
        return tuple(x.shape[2:]) if x.ctx.device_type == "cpu" and x.dtype == "float32" else None
    shapes = _TRACED_INPUTS.get()
    if shapes is None:
        return None
    try:
        shape = x.infer_shape_partial(**shapes)[1][0]
    except mx.base.MXNetError:  # not the graph whose inputs are known
        return None
    return tuple(shape[2:]) if shape and len(shape) == 4 and min(shape) > 0 else None


def call(block: nn.HybridBlock, forward, X):
    """``forward(X)``, ``block``'s own forward, with ``X``'s shape known to the graph that Gluon traces
    from ``block`` if it is hybridized, so that its :class:`Conv2D` layers can take their matmuls;
    the cached graph is traced again when the image size changes. ``X``: one float32 array."""
    if not block._active:
        return forward(X)
    key = (tuple(X.shape[2:]), X.ctx.device_type)
    if getattr(block, "_d2lres_traced_for", key) != key:
        block._clear_cached_op()
    block._d2lres_traced_for = key
    token = _TRACED_INPUTS.set({"data": tuple(X.shape)} if X.ctx.device_type == "cpu" else None)
    try:
        return forward(X)
    finally:
        _TRACED_INPUTS.reset(token)


def adopt(block: nn.Block) -> None:
    """Make every Gluon ``Conv2D`` in ``block`` (the chapter's ``Residual`` builds them) a :class:`Conv2D`."""
    for child in block._children.values():
        if type(child) is nn.Conv2D:
            child.__class__ = Conv2D
        adopt(child)
