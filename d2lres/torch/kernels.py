"""PyTorch's speed kernel on the CPU: a convolution with a small output (stage 5 at 40x40, whose
outputs are 2x2) runs as one matmul per pair of kernel taps that meets the input
(``spec.conv_taps``) instead of oneDNN's convolution. Most of such a layer's taps read only padding:
a 3x3 convolution with 2x2 outputs does 16 of its 36 multiply-adds per output channel on real
input, and oneDNN's kernels, held to AVX2 above all, run slowly at these shapes
(docs/performance.md). The same function within float32 rounding (tests/test_torch_kernels.py).

:class:`SmallConvolutions` is a torch function mode: inside it, ``F.conv2d`` calls that
:func:`uses_taps` accepts run as :class:`TapConv`; the trainer's forward passes run inside it."""
from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .. import spec

#: The rule (``uses_taps``): both output sides at most this many pixels.
TAPS_MAX_SIDE = 2


def _pair(value) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def uses_taps(X, K, stride=1, padding=0, dilation=1, groups=1) -> bool:
    """Whether ``F.conv2d(X, K, bias, stride, padding, dilation, groups)`` runs as :class:`TapConv`:
    a float32 CPU batch outside autocast, a dense kernel (no groups, no dilation), numeric padding,
    and outputs at most ``TAPS_MAX_SIDE`` pixels on a side."""
    stride, padding = _pair(stride), _pair(padding)
    if stride is None or padding is None or _pair(dilation) != (1, 1) or groups != 1:
        return False
    if not (isinstance(X, torch.Tensor) and isinstance(K, torch.Tensor) and X.dim() == 4 and K.dim() == 4):
        return False
    if X.device.type != "cpu" or X.dtype != torch.float32 or K.dtype != torch.float32 \
            or torch.is_autocast_enabled("cpu"):
        return False
    out = [spec.conv_out_size(X.shape[2 + i], K.shape[2 + i], stride[i], padding[i]) for i in range(2)]
    return 0 < min(out) and max(out) <= TAPS_MAX_SIDE


class TapConv(torch.autograd.Function):
    """``F.conv2d(X, K, bias, stride, padding)`` as a sum over kernel taps of ``input slice @ tap``,
    forward and backward, computed in NHWC; the output is NCHW with channels-last strides."""

    @staticmethod
    def forward(ctx, X, K, bias, stride, padding):
        n, c, h, w = X.shape
        o, _, kh, kw = K.shape
        rows = spec.conv_taps(h, kh, stride[0], padding[0])
        cols = spec.conv_taps(w, kw, stride[1], padding[1])
        ho, wo = [spec.conv_out_size(*axis) for axis in zip((h, w), (kh, kw), stride, padding)]
        # the taps that meet the input, a contiguous range on each axis (none: the output is the bias)
        (a0, a1), (b0, b1) = [(t[0][0], t[-1][0] + 1) if t else (0, 0) for t in (rows, cols)]
        Xh = X.permute(0, 2, 3, 1).contiguous()
        Kt = K[:, :, a0:a1, b0:b1].permute(2, 3, 0, 1).contiguous()  # taps, taps, O, C (cheap to copy)
        Y = X.new_zeros(n, ho, wo, o) if bias is None else bias.expand(n, ho, wo, o).contiguous()
        # per pair of taps: its index in Kt, the input it reads and the outputs it reaches (None: all)
        plan = [(a - a0, b - b0,
                 None if (ni, nj, *stride) == (h, w, 1, 1) else
                 (slice(None), slice(r0, r0 + (ni - 1) * stride[0] + 1, stride[0]),
                  slice(c0, c0 + (nj - 1) * stride[1] + 1, stride[1])),
                 None if (ni, nj) == (ho, wo) else (slice(None), slice(i0, i0 + ni), slice(j0, j0 + nj)))
                for a, i0, ni, r0 in rows for b, j0, nj, c0 in cols]
        for a, b, window, reach in plan:
            Z = (Xh if window is None else Xh[window]).reshape(-1, c)
            if reach is None:
                Y.view(-1, o).addmm_(Z, Kt[a, b].t())
            else:
                Y[reach] += (Z @ Kt[a, b].t()).view(Y[reach].shape)
        ctx.save_for_backward(Xh, Kt)
        ctx.plan, ctx.taps0, ctx.k = plan, (a0, b0), (kh, kw)
        return Y.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, dY):
        Xh, Kt = ctx.saved_tensors
        a0, b0 = ctx.taps0
        c, o = Xh.shape[3], dY.shape[1]
        dYh = dY.permute(0, 2, 3, 1).contiguous()
        dXh = torch.zeros_like(Xh) if ctx.needs_input_grad[0] else None
        dKt = torch.empty_like(Kt)
        for a, b, window, reach in ctx.plan:
            dYs = dYh.view(-1, o) if reach is None else dYh[reach].reshape(-1, o)
            torch.mm(dYs.t(), (Xh if window is None else Xh[window]).reshape(-1, c), out=dKt[a, b])
            if dXh is not None:
                if window is None:
                    dXh.view(-1, c).addmm_(dYs, Kt[a, b])
                else:
                    dXh[window] += (dYs @ Kt[a, b]).view(dXh[window].shape)
        if dKt.shape[:2] == ctx.k:
            dK = dKt.permute(2, 3, 0, 1).contiguous()
        else:
            dK = dKt.new_zeros(o, c, *ctx.k)
            dK[:, :, a0:a0 + dKt.shape[0], b0:b0 + dKt.shape[1]] = dKt.permute(2, 3, 0, 1)
        dbias = dYh.view(-1, o).sum(0) if ctx.needs_input_grad[2] else None  # False without a bias
        return (None if dXh is None else dXh.permute(0, 3, 1, 2)), dK, dbias, None, None


def conv2d(X, K, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv2d``, as :class:`TapConv` where :func:`uses_taps` accepts the call."""
    if uses_taps(X, K, stride, padding, dilation, groups):
        return TapConv.apply(X, K, bias, _pair(stride), _pair(padding))
    return F.conv2d(X, K, bias, stride, padding, dilation, groups)


class SmallConvolutions(TorchFunctionMode):
    """Inside it, ``F.conv2d`` runs as :func:`conv2d`: small outputs as :class:`TapConv`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.conv2d or func is torch.conv2d:
            return conv2d(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))
