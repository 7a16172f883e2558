"""MXNet's small convolutions as matmuls (``d2lres.mxnet.kernels``): the same function as Gluon's
convolution, taken where the rule says, in eager calls and in traced graphs alike, and never in a
graph whose input shape is unknown."""
from __future__ import annotations

import json

import numpy as np
import pytest

from d2lres import checks
from d2lres.host import backends
from helpers import assert_kernel_is_the_plain_function

pytestmark = pytest.mark.framework

if "mxnet" not in backends.available():
    pytest.skip("d2lres.mxnet is not available on this set", allow_module_level=True)

res = backends.load("mxnet")  # the numpy shim before MXNet itself
import mxnet as mx  # noqa: E402
from mxnet import autograd  # noqa: E402

from d2lres.mxnet import kernels  # noqa: E402


def _conv(conv_class, channels, kernel, stride, padding, in_channels, bias):
    conv = conv_class(channels, kernel, stride, padding, use_bias=bias, in_channels=in_channels)
    conv.initialize(mx.init.Normal(0.1))
    if bias:
        conv.bias.set_data(mx.np.array(np.random.default_rng(1).standard_normal(channels).astype("float32")))
    return conv


def _run(conv, X, traced: bool):
    """Output, input gradient and parameter gradients of ``sum(Y * Y)``."""
    if traced:
        conv.hybridize(static_alloc=True, static_shape=True)
    X = mx.np.array(X)
    X.attach_grad()
    with autograd.record():
        Y = kernels.call(conv, conv, X)
        (Y * Y).sum().backward()
    return [Y.asnumpy(), X.grad.asnumpy()] + [p.grad().asnumpy() for p in conv.collect_params().values()]


@pytest.mark.parametrize("channels, kernel, stride, padding, side, in_channels, bias", [
    (32, 3, 1, 1, 2, 16, False),            # stage 5 at 40x40
    (32, 3, 1, 1, 2, 16, True),             # with a bias (the chapter's Residual)
    (8, 3, 1, 1, 1, 4, False),              # a 1x1 input: the centre tap only
    (8, (3, 1), (1, 1), (1, 0), (2, 1), 4, True),  # uneven kernel and padding, a 2x1 input
    (8, 3, 2, 1, 2, 4, False),              # strided: one output reads the whole 2x2 input
    (32, 1, 2, 0, 3, 16, False),            # stage 5's 1x1 shortcut at 40x40: pointwise
    (8, 1, 1, 0, (2, 1), 4, True),          # pointwise, stride 1, with a bias
])
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_matmul_paths_equal_gluon_convolution(channels, kernel, stride, padding, side, in_channels, bias, traced):
    h, w = side if isinstance(side, tuple) else (side, side)
    k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    s = stride if isinstance(stride, tuple) else (stride, stride)
    p = padding if isinstance(padding, tuple) else (padding, padding)
    assert kernels.uses_dense((h, w), k, s, p) != kernels.uses_pointwise((h, w), k, s, p)  # one of them
    X = np.random.default_rng(0).random((3, in_channels, h, w), dtype=np.float32)
    plain = _conv(mx.gluon.nn.Conv2D, channels, kernel, stride, padding, in_channels, bias)
    fast = _conv(kernels.Conv2D, channels, kernel, stride, padding, in_channels, bias)
    for name, param in fast.collect_params().items():  # the same weights
        param.set_data(plain.collect_params()[name.replace(fast.prefix, plain.prefix)].data())
    tol = checks.TOLERANCES["eval_logits"]
    for a, b in zip(_run(plain, X, traced), _run(fast, X, traced)):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=tol * max(1.0, np.abs(a).max()), rtol=0)


def test_the_rules_take_dense_small_convolutions_only():
    assert kernels.uses_dense((2, 2), (3, 3), (1, 1), (1, 1))
    assert not kernels.uses_dense((3, 3), (3, 3), (1, 1), (1, 1))             # 3x3 outputs (96 px)
    assert not kernels.uses_dense((3, 3), (3, 3), (2, 2), (1, 1))             # stage 5's strided one: not every
    assert not kernels.uses_dense((3, 3), (1, 1), (2, 2), (0, 0))             # output reads every input pixel
    assert not kernels.uses_dense((2, 2), (3, 3), (1, 1), (1, 1), groups=2)   # grouped (ResNeXt)
    assert not kernels.uses_dense((2, 2), (3, 3), (1, 1), (2, 2), dilation=(2, 2))
    assert kernels.uses_pointwise((3, 3), (1, 1), (2, 2), (0, 0))
    assert not kernels.uses_pointwise((5, 5), (1, 1), (2, 2), (0, 0))         # 3x3 outputs (stage 4 at 40 px)
    assert not kernels.uses_pointwise((2, 2), (3, 3), (1, 1), (1, 1))         # not 1x1
    assert not kernels.uses_pointwise((1, 1), (1, 1), (1, 1), (1, 1))         # padded
    assert not kernels.uses_pointwise((2, 2), (1, 1), (1, 1), (0, 0), groups=2)


def _ops(block) -> list[str]:
    """The operators of ``block``'s traced graph."""
    return [node["op"] for node in json.loads(block._cached_graph[1].tojson())["nodes"]]


def test_traced_graph_takes_the_path_at_its_traced_size_only():
    net = res.resnet18()
    net.hybridize(static_alloc=True, static_shape=True)
    fully_connected = {}
    for side in (40, 96, 40):  # each size its own trace: a graph is not reused for another size
        with autograd.predict_mode():
            net(mx.np.zeros((2, 1, side, side)))
        fully_connected.setdefault(side, []).append(_ops(net).count("FullyConnected"))
    assert fully_connected == {40: [5, 5], 96: [1]}  # stage 5's three 2x2 convolutions, its 1x1, the head
    stage5 = net[4]  # traced on its own, outside kernels.call: Gluon's convolution, whatever the size
    with autograd.predict_mode():
        stage5(mx.np.zeros((2, 256, 3, 3)))
    assert "FullyConnected" not in _ops(stage5)


def test_resnet18_at_40_pixels_same_function_with_and_without_matmuls(monkeypatch):
    assert_kernel_is_the_plain_function("mxnet", monkeypatch, kernels, "MATMUL_MAX_SIDE")
