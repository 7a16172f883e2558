"""Odd inputs get one answer in every backend (issue 15; the rules: ``d2lres.inputs``, the table:
README "Odd inputs"). Each case runs in every backend, through the network itself and through
its ``Trainer``."""
import numpy as np
import pytest

from d2lres import checks, inputs
from d2lres.host import backends
from d2lres.training import TrainingError
from helpers import forward

pytestmark = pytest.mark.framework

BACKENDS = backends.available()
RNG = np.random.default_rng(0)
X32 = RNG.random((2, 1, 32, 32), dtype=np.float32)
Y2 = np.array([3, 7])


def _net(mod):
    net = mod.resnet18()
    mod.set_weights(net, checks.test_weights(bn_shift=checks.STEP_BN_SHIFT))
    return net


def _stats(w):
    return {k: v for k, v in w.items() if k.endswith(("running_mean", "running_var"))}


#: case -> (batch, message every backend gives); checked in eval mode, train mode and a step.
REFUSED = {
    "empty batch": (np.zeros((0, 1, 32, 32), np.float32), "empty batch"),
    "0x0 images": (np.zeros((2, 1, 0, 0), np.float32), "height and width must be at least 1"),
    "0 wide": (np.zeros((2, 1, 32, 0), np.float32), "height and width must be at least 1"),
    "uint8 images": ((X32 * 255).astype(np.uint8), r"integer images \(uint8\).*/ 255"),
    "int64 images": (np.ones((2, 1, 32, 32), np.int64), r"integer images \(int(64|32)\).*/ 255"),  # JAX: int32
    "boolean images": (np.ones((2, 1, 32, 32), bool), r"boolean images"),
    "3 channels": (np.zeros((2, 3, 32, 32), np.float32), r"expects 1 input channel\(s\), got 3"),
    "not 4-D": (np.zeros((1, 32, 32), np.float32), "expected a batch of shape"),
}


@pytest.mark.parametrize("case", list(REFUSED))
@pytest.mark.parametrize("backend", BACKENDS)
def test_refused_everywhere_with_one_message(backend, case):
    mod = backends.load(backend)
    X, message = REFUSED[case]
    net = _net(mod)
    before = mod.get_weights(net)
    with pytest.raises(inputs.InputError, match=message):
        forward(mod, net, X)
    trainer = mod.Trainer(net)
    with pytest.raises(inputs.InputError, match=message):
        trainer.forward(X, training=False)
    with pytest.raises(inputs.InputError, match=message):
        trainer.forward(X, training=True)
    if X.ndim == 4:
        with pytest.raises(inputs.InputError, match=message):
            trainer.step(*trainer.convert(X, np.zeros(len(X), np.int64)), 0.1)
    after = mod.get_weights(net)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a refused batch changed the network"
    # the network still works afterwards (MXNet's cached graph once failed after an empty batch)
    assert forward(mod, net, X32).shape == (2, 10)
    assert trainer.forward(X32, training=False).shape == (2, 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_mode_batch_with_one_value_per_channel_is_refused(backend):
    """One 32x32 image reaches b5 as 1x1: its BatchNorm layers would see one value per channel.
    Eval mode accepts it; a batch of one larger image (b5 at 2x2) trains."""
    mod = backends.load(backend)
    net = _net(mod)
    trainer = mod.Trainer(net)
    one = X32[:1]
    message = r"train-mode batch of 1 image\(s\) of 32x32 gives BatchNorm layer b5\.\d\.bn\d 1 value per channel"
    with pytest.raises(inputs.InputError, match=message):
        trainer.forward(one, training=True)
    with pytest.raises(inputs.InputError, match=message):
        trainer.step(*trainer.convert(one, Y2[:1]), 0.1)
    assert trainer.forward(one, training=False).shape == (1, 10)
    loss, _ = trainer.step(*trainer.convert(RNG.random((1, 1, 64, 64), dtype=np.float32), Y2[:1]), 0.01)
    assert np.isfinite(loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_is_cast_to_float32(backend):
    """numpy's default float64 (and float16) images give the float32 result, in the network and
    in the Trainer."""
    mod = backends.load(backend)
    net = _net(mod)
    expected = forward(mod, net, X32)
    for dtype in (np.float64, np.float16):
        X = X32.astype(dtype)
        tol = (1e-5 if dtype == np.float64 else 1e-2) * max(1.0, np.abs(expected).max())  # eager vs compiled
        np.testing.assert_allclose(forward(mod, net, X), expected, rtol=0, atol=tol)
        np.testing.assert_allclose(mod.Trainer(net).forward(X), expected, rtol=0, atol=tol)
    trainer = mod.Trainer(net)
    loss64, _ = trainer.step(*trainer.convert(X32.astype(np.float64), Y2), 0.0)
    loss32, _ = trainer.step(*trainer.convert(X32, Y2), 0.0)
    assert abs(loss64 - loss32) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_pixel_is_refused_and_changes_nothing(backend):
    mod = backends.load(backend)
    net = _net(mod)
    trainer = mod.Trainer(net, momentum=0.9)
    X = X32.copy()
    X[1, 0, 5, 5] = np.nan
    before = mod.get_weights(net)
    for call in (lambda: trainer.step(*trainer.convert(X, Y2), 0.1), lambda: trainer.forward(X, training=True),
                 lambda: trainer.forward(X), lambda: trainer.predict(trainer.convert(X, Y2)[0])):
        with pytest.raises(inputs.InputError, match="NaN or infinite"):
            call()
    X[1, 0, 5, 5] = np.inf
    with pytest.raises(inputs.InputError, match="NaN or infinite"):
        trainer.step(*trainer.convert(X, Y2), 0.1)
    after = mod.get_weights(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_batch_statistics_never_land_in_the_running_statistics(backend):
    """Finite pixels so large that the activations overflow: a step raises TrainingError and the
    running statistics are those from before it (a train-mode forward leaves them so too); the
    next good batch trains normally."""
    mod = backends.load(backend)
    net = mod.resnet18()
    w = checks.test_weights(bn_shift=checks.STEP_BN_SHIFT)
    w["b1.conv.weight"][:] = 1.0  # 49 positive terms of 3e38: b1's convolution overflows everywhere
    mod.set_weights(net, w)
    trainer = mod.Trainer(net)
    before = _stats(mod.get_weights(net))
    huge = np.full_like(X32, 3e38)
    try:  # MXNet updates running statistics in backward only, and its train-mode forward stayed finite here
        trainer.forward(huge, training=True)
    except TrainingError as err:
        assert "BatchNorm statistics of this batch are not finite" in str(err)
    assert all(np.array_equal(v, _stats(mod.get_weights(net))[k]) for k, v in before.items())
    loss, _ = trainer.step(*trainer.convert(X32, Y2), 0.01)  # the next good batch trains normally
    assert np.isfinite(loss) and all(np.isfinite(v).all() for v in _stats(mod.get_weights(net)).values())
    before = _stats(mod.get_weights(net))
    with pytest.raises(TrainingError, match="BatchNorm statistics of this batch are not finite"):
        trainer.step(*trainer.convert(huge, Y2), 0.01)
    assert all(np.array_equal(v, _stats(mod.get_weights(net))[k]) for k, v in before.items())


def test_the_rules_without_a_framework():
    check = inputs.check_batch
    check((2, 1, 32, 32), "float32", 1)
    check((None, 32, 32, 1), "float32", 1, channels_last=True, training=True)  # unknown batch while tracing
    check((1, 1, 64, 64), "float64", 1, training=True)  # b5 at 2x2: 4 values per channel
    with pytest.raises(inputs.InputError, match="1 value per channel"):
        check((1, 1, 32, 32), "float32", 1, training=True)
    with pytest.raises(inputs.InputError, match="empty batch"):
        check((0, 32, 32, 1), "float32", 1, channels_last=True)
    assert [inputs.dtype_kind(d) for d in ("torch.float64", "<dtype: 'bfloat16'>", "uint8", "bool", "complex64")] \
        == ["float", "float", "int", "bool", "complex"]
