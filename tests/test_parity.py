"""The heart of d2lres: given the same weights (through the neutral file) the backends compute the
same function -- each within the rule's bound of the float64 reference, every pair within twice
that (``d2lres.checks``) -- and every acceleration path gives the plain path's outputs."""
import numpy as np
import pytest

from d2lres import checks, spec
from d2lres.host import backends
from helpers import PAIRS, full_check

pytestmark = pytest.mark.framework

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


# --------------------------------------------------------------------------- a saved reference

#: A backend other than PyTorch where there is one: the reference file is for installs without it.
OTHER = next(b for b in ("mxnet", "tf", "jax", "torch") if b in backends.available())
SMALL = {"input_shape": (1, 32, 32), "step_size": 32}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The checks of :data:`OTHER` at 32x32, computing the reference and saving it."""
    path = tmp_path_factory.mktemp("reference") / "reference.npz"
    return path, checks.cross_backend_checks([OTHER], **SMALL, save_to=path)


def test_a_saved_reference_gives_the_checks_it_was_saved_from(saved):
    """Read back, the reference gives the same rounding model, bounds and distances: exactly, but
    the updated weights' distance (their change is stored in float32: within 1e-3 of it)."""
    path, computed = saved
    read = checks.cross_backend_checks([OTHER], **SMALL, reference=path)
    assert read["rounding"] == computed["rounding"] and read["bounds"] == computed["bounds"]
    a, b = computed["reference"][OTHER], read["reference"][OTHER]
    assert {q: a[q] for q in QUANTITIES if q != "step_weights"} == {q: b[q] for q in QUANTITIES if q != "step_weights"}
    assert b["step_weights"] == pytest.approx(a["step_weights"], rel=1e-3)
    assert read["ok"] and f"read from {path}" in checks.format_checks(read)


def test_a_reference_file_answers_only_its_own_checks(saved, tmp_path):
    """Other settings, another file kind, a damaged or tampered member: refused, naming the file
    and what differs, before any backend runs."""
    from d2lres import weights
    path, _ = saved

    def refused(match, file=path, **settings):
        with pytest.raises(weights.WeightsFileError, match=match):
            checks.cross_backend_checks([OTHER], **{**SMALL, **settings}, reference=file)

    refused(r"answers other checks: input_shape \[1, 32, 32\] \(asked: \[1, 40, 40\]\)", input_shape=(1, 40, 40))
    refused(r"arch .*'version': 1.* \(asked: .*'version': 2", arch=spec.Arch(18, 2))
    refused(r"answers other checks: lr 0.05 \(asked: 0.1\)", lr=0.1)
    weights.save_npz(tmp_path / "w.npz", checks.test_weights())
    refused("is a d2lres-weights file, not a d2lres reference file", tmp_path / "w.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    for name, change in (("nan", lambda a: a.__setitem__("change:b1.conv.weight", a["change:b1.conv.weight"] * np.nan)),
                         ("shape", lambda a: a.__setitem__("change:b1.conv.weight", a["change:b1.conv.weight"][:1])),
                         ("logits", lambda a: a.__setitem__("reference:eval_logits", a["reference:eval_logits"][:1])),
                         ("missing", lambda a: a.pop("rounding:step_loss"))):
        tampered = dict(arrays)
        change(tampered)
        file = tmp_path / f"{name}.npz"
        with open(file, "wb") as f:
            weights.write_npz(f, tampered)
        refused({"missing": "no rounding:step_loss", "logits": "reference:eval_logits' is not a finite result"}.get(
            name, "change:b1.conv.weight' is not a finite result"), file)
