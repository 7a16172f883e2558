"""The heart of d2lres: given the same weights (through the neutral file) the three backends
compute the same function, and every acceleration path gives the plain path's outputs."""
import numpy as np
import pytest

from conftest import PAIRS
from d2lres import backends, checks

#: What ``d2lres check`` requires of every pair of the chapter's ResNet-18.
TOL = checks.TOLERANCES


@pytest.fixture(scope="module")
def result():
    return checks.cross_backend_checks(input_shape=(1, 96, 96), step_size=96, batch_size=4)


@pytest.mark.parametrize("backend", backends.available())
def test_shapes_and_counts_match_spec(result, backend):
    b = result["backends"][backend]
    assert b["shapes_match_spec"] and b["counts_match_spec"]


@pytest.mark.parametrize("pair", PAIRS)
def test_eval_logits_equal(result, pair):
    """Eval mode uses the (non-trivial) BatchNorm running statistics."""
    assert result["pairs"][pair]["eval_logits"] <= TOL["eval_logits"]


@pytest.mark.parametrize("pair", PAIRS)
def test_train_mode_logits_equal(result, pair):
    assert result["pairs"][pair]["train_logits"] <= TOL["train_logits"]


@pytest.mark.parametrize("pair", PAIRS)
def test_one_sgd_step_equal(result, pair):
    """Same loss, same updated weights and BatchNorm running statistics (relative)."""
    d = result["pairs"][pair]
    for key in ("step_loss", "step_weights", "bn_stats"):
        assert d[key] <= TOL[key], key


def test_report_table_passes(result):
    table = checks.format_checks(result)
    assert "Result: PASS" in table and "11,178,378 + 7,808" in table


def _step(trainer, X, y):
    loss, _ = trainer.step(*trainer.convert(X, y), 0.05)
    return loss, trainer.get_weights()


@pytest.mark.parametrize("backend, fast, plain", [("tf", {"compile": True}, {"compile": False}),
                                                  ("mxnet", {"compile": True}, {"compile": False}),
                                                  ("jax", {"compile": True}, {"compile": False})])
def test_acceleration_path_gives_plain_outputs(backend, fast, plain):
    mod = backends.load(backend)
    rng = np.random.default_rng(0)
    X, y = rng.random((4, 1, 48, 48), dtype=np.float32), rng.integers(0, 10, 4)
    w0 = checks.test_weights(bn_shift=checks.STEP_BN_SHIFT)
    runs = []
    for options in (fast, plain):
        net = mod.resnet18()
        mod.set_weights(net, w0)
        trainer = mod.Trainer(net, momentum=0.9, weight_decay=5e-4, **options)
        runs.append((trainer.forward(X),) + _step(trainer, X, y))
    (f_logits, f_loss, f_w), (p_logits, p_loss, p_w) = runs
    np.testing.assert_allclose(f_logits, p_logits, rtol=0, atol=TOL["eval_logits"])
    np.testing.assert_allclose(f_loss, p_loss, rtol=0, atol=TOL["step_loss"])
    for k in p_w:  # relative to the tensor's largest value, as the checks' step_weights
        np.testing.assert_allclose(f_w[k], p_w[k], rtol=0, atol=TOL["step_weights"] * max(np.abs(p_w[k]).max(), 1e-12),
                                   err_msg=k)
