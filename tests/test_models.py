"""Each backend builds the spec's network: shapes, parameter counts (total and per stage),
weights round trip through the neutral file, clear errors, import isolation and threads."""
import subprocess
import sys

import numpy as np
import pytest

from d2lres import spec
from d2lres import weights as neutral
from d2lres.host import backends
from helpers import forward

pytestmark = pytest.mark.framework


@pytest.mark.parametrize("input_shape", [(1, 224, 224), (1, 96, 96)])
def test_shape_walk_equals_spec(mod, input_shape):
    net = mod.resnet18()
    assert mod.shape_walk(net, input_shape) == [(n, s) for n, s, _ in spec.walk(input_shape)]


def test_iterable_stage_by_stage(mod):
    assert len(list(mod.resnet18())) == len(spec.STAGE_NAMES)


def test_residual_block_cases_of_the_chapter(mod, block_output):
    assert block_output(mod, mod.Residual(3), (4, 3, 6, 6)) == (4, 3, 6, 6)
    assert block_output(mod, mod.Residual(6, use_1x1conv=True, strides=2), (4, 3, 6, 6)) == (4, 6, 3, 3)


@pytest.mark.parametrize("num_classes, in_channels, expected",
                         [(10, 1, (11_178_378, 7_808)), (1000, 3, (11_692_520, 7_808))])
def test_parameter_counts(mod, num_classes, in_channels, expected):
    net = mod.resnet18(num_classes=num_classes, in_channels=in_channels)
    assert mod.count_parameters(net) == expected == spec.param_counts(num_classes, in_channels)["total"]


def test_per_stage_counts_and_canonical_names(mod):
    weights = mod.get_weights(mod.resnet18())
    expected = spec.parameters()
    assert sorted(weights) == sorted(expected)
    per_stage = {}
    for name, value in weights.items():
        assert value.shape == expected[name].shape, name
        counts = per_stage.setdefault(name.split(".")[0], [0, 0])
        counts[0 if expected[name].trainable else 1] += value.size
    assert {k: tuple(v) for k, v in per_stage.items()} == {
        k: v for k, v in spec.param_counts().items() if k != "total"}


def test_weights_round_trip_is_exact(mod, tmp_path):
    w = neutral.init_weights(seed=7)
    w["b3.0.bn1.running_var"] = np.linspace(0.5, 2, 128, dtype=np.float32)
    net = mod.resnet18()
    mod.set_weights(net, w)
    mod.save_weights(net, tmp_path / "w.npz")
    other = mod.resnet18()
    mod.load_weights(other, tmp_path / "w.npz")
    back = mod.get_weights(other)
    for k in w:
        np.testing.assert_array_equal(back[k], w[k], err_msg=k)


def test_seeded_init_is_identical_across_backends(mod):
    net = mod.resnet18()
    mod.init_weights(net, seed=3)
    w = mod.get_weights(net)
    for k, v in neutral.init_weights(seed=3).items():
        np.testing.assert_array_equal(w[k], v, err_msg=k)


def test_weights_that_do_not_fit_are_refused(mod):
    w = neutral.init_weights(num_classes=5)
    with pytest.raises(ValueError, match="head.fc.weight: expected shape \\(10, 512\\), got \\(5, 512\\)"):
        mod.set_weights(mod.resnet18(), w)


def test_wrong_channel_count_is_named(mod):
    with pytest.raises(ValueError, match="expects 1 input channel\\(s\\), got 3"):
        forward(mod, mod.resnet18(), np.zeros((2, 3, 32, 32), np.float32))


def test_wrong_rank_is_named(mod):
    with pytest.raises(ValueError, match="expected a batch of shape"):
        forward(mod, mod.resnet18(), np.zeros((1, 32, 32), np.float32))


def test_bad_constructor_arguments(mod):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        mod.resnet18(num_classes=0)
    with pytest.raises(ValueError, match="must be positive"):
        mod.shape_walk(mod.resnet18(), (1, 0, 32))


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ValueError, match="choose one of torch, tf, mxnet"):
        backends.load("caffe")


def test_missing_framework_gives_install_hint(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mxnet" else real(name, *a))
    with pytest.raises(backends.BackendUnavailable, match="pip install 'd2lres\\[mxnet\\]'"):
        backends.load("mxnet")


FRAMEWORKS = {name: framework for name, (_, framework, _) in backends.BACKENDS.items()}


def _foreign_after(statements: list[str], foreign) -> list[list[str]]:
    """The frameworks of ``foreign`` loaded after each of ``statements``, run in turn in one fresh process."""
    report = "; print('loaded:', *[m for m in {!r} if m in sys.modules])".format(foreign)
    code = "import sys" + "".join(f"; {statement}{report}" for statement in statements)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [line.split()[1:] for line in out.splitlines() if line.startswith("loaded:")]


@pytest.mark.parametrize("backend", backends.available())
def test_import_pulls_in_no_other_framework(backend):
    """d2lres.<backend> imports no other framework. TensorFlow itself does: its ``tensorflow.lite``
    runs ``from jax import jit`` whenever JAX is installed; for tf only that is allowed (what
    ``import tensorflow`` loaded, in the same process, before ``import d2lres.tf``)."""
    foreign = tuple(f for n, f in FRAMEWORKS.items() if n != backend)
    first = ["import tensorflow"] if backend == "tf" else []
    *allowed, loaded = _foreign_after([*first, f"import d2lres.{backend}"], foreign)
    assert loaded == (allowed[0] if allowed else [])


THREADS = ("import os, torch, d2lres.torch, d2lres.tf, d2lres.mxnet; "
           "print(torch.get_num_threads(), len(os.sched_getaffinity(0)))")


NEEDS_MXNET = pytest.mark.skipif("mxnet" not in backends.available(), reason="MXNet is not in this set")


@NEEDS_MXNET
def test_torch_keeps_all_cores_after_importing_all_three():
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"}
    threads, cores = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True,
                                    check=True, env=env).stdout.split()[-2:]
    assert int(threads) == int(cores)


@NEEDS_MXNET
def test_user_thread_setting_is_respected():
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    threads, _ = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True,
                                check=True, env=env).stdout.split()[-2:]
    assert int(threads) == 1
