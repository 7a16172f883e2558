"""PyTorch's tap-by-tap convolution (``d2lres.torch.kernels.TapConv``: outputs of at most 2x2) is
the same function as ``F.conv2d``: single layers (output and gradients, padding that covers whole
taps, uneven strides, a bias), which calls the rule takes, and the trainer's ResNet-18 at 40x40,
where stage 5 (2x2) takes it, within the cross-backend checks' tolerances."""
import numpy as np
import pytest

from d2lres import checks
from helpers import assert_kernel_is_the_plain_function

pytestmark = pytest.mark.framework

torch = pytest.importorskip("torch")
kernels = pytest.importorskip("d2lres.torch.kernels")
F = torch.nn.functional


@pytest.mark.parametrize("out_channels, kernel, stride, padding, side, channels, bias", [
    (64, 3, 1, 1, 2, 64, False),        # stage 5 at 40x40
    (64, 3, 2, 1, 3, 32, True),         # its strided first convolution, with a bias
    (64, 1, 2, 0, 3, 32, False),        # the 1x1 shortcut
    (16, 3, 1, 1, 1, 16, False),        # a 1x1 output: only the centre tap meets the input
    (8, 1, 2, 1, 1, 4, True),           # every output on padding: the bias alone
    (8, (3, 1), (2, 1), (1, 0), (4, 2), 4, True),  # uneven kernel, stride and padding
    (8, 7, 2, 3, 4, 1, False),          # the stem's kernel on a tiny image
])
def test_tap_path_equals_torch_convolution(out_channels, kernel, stride, padding, side, channels, bias):
    gen = torch.Generator().manual_seed(0)
    h, w = side if isinstance(side, tuple) else (side, side)
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    X = torch.rand(4, channels, h, w, generator=gen)
    K = torch.randn(out_channels, channels, kh, kw, generator=gen) / np.sqrt(channels * kh * kw)
    b = torch.randn(out_channels, generator=gen) if bias else None
    assert kernels.uses_taps(X, K, stride, padding)
    results = []
    for conv in (F.conv2d, kernels.conv2d):
        leaves = [t.clone().requires_grad_() for t in (X, K) + ((b,) if bias else ())]
        Y = conv(leaves[0], leaves[1], leaves[2] if bias else None, stride, padding)
        (Y * Y).sum().backward()
        results.append([Y.detach().numpy(), *[t.grad.numpy() for t in leaves]])
    tol = checks.TOLERANCES["eval_logits"]
    for fast, plain in zip(*results):
        assert fast.shape == plain.shape
        np.testing.assert_allclose(fast, plain, atol=tol * max(1.0, np.abs(plain).max()), rtol=0)


def test_the_rule_takes_float32_cpu_dense_small_outputs_only():
    X, K = torch.zeros(2, 8, 2, 2), torch.zeros(8, 8, 3, 3)
    assert kernels.uses_taps(X, K, 1, 1)
    assert not kernels.uses_taps(torch.zeros(2, 8, 3, 3), K, 1, 1)                    # a 3x3 output
    assert not kernels.uses_taps(X.double(), K.double(), 1, 1)                         # float64 (the checks)
    assert not kernels.uses_taps(X, torch.zeros(8, 4, 3, 3), 1, 1, groups=2)           # grouped (ResNeXt)
    assert not kernels.uses_taps(X, K, 1, "same")                                      # a padding mode
    assert not kernels.uses_taps(X, K, 1, 2, dilation=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):                                  # precision="bf16"
        assert not kernels.uses_taps(X, K, 1, 1)


def test_rule_takes_stage5_at_40_pixels_only():
    import d2lres.torch as res
    net = res.resnet18()
    net(torch.zeros(1, 1, 40, 40))
    names = []

    def record(name):
        def hook(m, args):
            if kernels.uses_taps(args[0], m.weight, m.stride, m.padding, m.dilation, m.groups):
                names.append(name)
        return hook
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_pre_hook(record(name))
    used = {}
    for side in (40, 96):
        names.clear()
        net(torch.zeros(2, 1, side, side))
        used[side] = list(names)
    assert used == {40: ["b5.0.conv1", "b5.0.conv2", "b5.0.conv3", "b5.1.conv1", "b5.1.conv2"], 96: []}


def test_resnet18_at_40_pixels_same_function_with_and_without_taps(monkeypatch):
    assert_kernel_is_the_plain_function("torch", monkeypatch, kernels, "TAPS_MAX_SIDE")
