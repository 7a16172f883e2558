"""The heart of d2lres: given the same weights (through the neutral file) the backends compute the
same function -- each within the rule's bound of the float64 reference, every pair within twice
that (``d2lres.checks``) -- and every acceleration path gives the plain path's outputs."""
import numpy as np
import pytest

from conftest import PAIRS, full_check
from d2lres import backends, checks

#: Plain path against an acceleration path of one backend (float32 against float32).
TOL = checks.TOLERANCES
QUANTITIES = checks.QUANTITIES


@pytest.fixture(scope="module")
def result():
    """ResNet-18 at 1x96x96, batch 4 (the CLI's defaults)."""
    return full_check()


@pytest.mark.parametrize("backend", backends.available())
def test_shapes_and_counts_match_spec(result, backend):
    b = result["backends"][backend]
    assert b["shapes_match_spec"] and b["counts_match_spec"]


@pytest.mark.parametrize("backend", backends.available())
def test_within_the_bound_of_the_float64_reference(result, backend):
    """Eval logits (non-trivial running statistics), train-mode logits, one SGD step (loss,
    updated weights, running statistics): |backend - float64| <= C * max(rounding model, u32)."""
    d, bound = result["reference"][backend], result["bounds"]
    assert all(d[q] <= bound[q] for q in QUANTITIES), {q: (d[q], bound[q]) for q in QUANTITIES}


@pytest.mark.parametrize("pair", PAIRS)
def test_every_pair_within_twice_the_bound(result, pair):
    d, tol = result["pairs"][pair], result["tolerances"]
    assert all(d[q] <= tol[q] for q in QUANTITIES), {q: (d[q], tol[q]) for q in QUANTITIES}


def test_the_bounds_are_tight_enough_to_mean_something(result):
    """The rule must not be vacuous: ResNet-18's bounds stay below the 1e-4 that the pairs were
    held to before the rule (measured: ~1e-6 to 1e-5), the updated weights' below 1e-3."""
    bound = result["bounds"]
    assert all(bound[q] < 1e-4 for q in ("eval_logits", "train_logits", "step_loss", "bn_stats")), bound
    assert bound["step_weights"] < 1e-3, bound


def test_rounding_model_is_not_the_reference(result):
    """The float32 rounding model does round: it lies a few float32 roundings from float64."""
    assert all(0 < result["rounding"][q] < 1e-4 for q in ("eval_logits", "train_logits", "step_weights"))


def test_report_table_passes(result):
    table = checks.format_checks(result)
    assert "Result: PASS" in table and "11,178,378 + 7,808" in table
    assert "float32 rounding model" in table and "**bound**" in table and "float64 reference" in table


def _step(trainer, X, y):
    loss, _ = trainer.step(*trainer.convert(X, y), 0.05)
    return loss, trainer.get_weights()


@pytest.mark.parametrize("backend, fast, plain", [(b, {"compile": True}, {"compile": False})
                                                  for b in ("tf", "mxnet", "jax") if b in backends.available()])
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
