"""bf16 mixed precision (``precision=`` of every ``Trainer``): it takes effect, keeps the weights and
the optimizer state in float32, stays within its own bound of the float64 reference (the bfloat16
rounding model of ``d2lres.checks``), and is warned about or refused where it must be."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from d2lres import checks
from d2lres.core import precision
from d2lres.errors import UserValueError
from d2lres.host import backends, isa
from helpers import SMALL_RUN

pytestmark = pytest.mark.framework

MIXED = ["torch", "tf", "jax"]


def _load(name):
    if name not in backends.available():
        pytest.skip(f"{name} is not installed")
    return backends.load(name)


def _refused_here(name) -> bool:
    """TensorFlow refuses bf16 on a CPU with bfloat16 units held to AVX2 (the current set's pass):
    asserted here, with its reason, instead of the bf16 run."""
    if name != "tf" or not (isa.cpu_info()["bf16"] and isa.held_isa() == "avx2"):
        return False
    mod = _load(name)
    with pytest.raises(ValueError, match="while oneDNN is held to AVX2.*precision='float32'"):
        mod.Trainer(mod.resnet18(), precision="bf16")
    return True


def _trainer(name, prec, **options):
    mod = _load(name)
    net = mod.resnet18()
    mod.init_weights(net, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", precision.SlowPrecisionWarning)
        return mod.Trainer(net, momentum=0.9, precision=prec, **options)


@pytest.mark.parametrize("name", MIXED)
def test_bf16_takes_effect_and_keeps_float32_state(name):
    if _refused_here(name):
        return
    rng = np.random.default_rng(0)
    X = rng.random((4, 1, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 4)
    plain, mixed = _trainer(name, "float32"), _trainer(name, "bf16")
    assert mixed.precision == "bf16" and plain.precision == "float32"
    a, b = plain.forward(X), mixed.forward(X)
    assert b.dtype == np.float32
    d = float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(a))))
    # bfloat16's unit roundoff is 2^-8: far above float32's differences (1e-6), far below a wrong net's
    assert 1e-4 < d < 0.1, d
    for trainer in (plain, mixed):  # the step itself: test_bf16_within_its_bound_of_float64
        trainer.step(*trainer.convert(X, y), 0.05)
        trainer.step(*trainer.convert(X, y), 0.05)
    assert all(v.dtype == np.float32 for v in mixed.get_weights().values())
    state = mixed.optimizer_state()
    assert state and all(v.dtype == np.float32 for v in state.values())


@pytest.mark.parametrize("name", MIXED)
def test_bf16_within_its_bound_of_float64(name):
    _load(name)
    if _refused_here(name):
        return
    result = checks.cross_backend_checks([name], input_shape=(1, 32, 32), step_size=32, precision="bf16")
    assert result["precision"] == "bf16"
    assert result["ok"], checks.format_checks(result)


def test_unknown_precision_is_refused_in_every_backend():
    for name in backends.available():
        mod = backends.load(name)
        with pytest.raises(ValueError, match="unknown precision 'fp8'"):
            mod.Trainer(mod.resnet18(), precision="fp8")


def test_mxnet_refuses_bf16_with_its_reason():
    mod = _load("mxnet")
    with pytest.raises(ValueError, match="MXNet"):
        mod.Trainer(mod.resnet18(), precision="bf16")


def test_held_bf16_is_refused_only_on_a_cpu_with_bfloat16_units():
    cpu = {"model": "Intel Xeon", "bf16": True, "held": "avx2"}
    with pytest.raises(UserValueError, match="tf: precision 'bf16' cannot run on this CPU .Intel Xeon. while oneDNN"):
        precision.refuse_held_bf16("tf", cpu)
    precision.refuse_held_bf16("tf", {**cpu, "held": "native"})
    precision.refuse_held_bf16("tf", {**cpu, "bf16": False})


def test_emulated_reason_names_flags_and_the_hold():
    cpu = {"model": "AMD EPYC", "bf16": False, "held": "native"}
    assert "no bfloat16 units" in precision.emulated_reason(cpu=cpu)
    assert precision.emulated_reason(cpu={**cpu, "bf16": True}) is None
    held = precision.emulated_reason(cpu={**cpu, "bf16": True, "held": "avx2"})
    assert "held to AVX2" in held
    assert "framework's own check" in precision.emulated_reason(False, cpu={**cpu, "bf16": True})
    with pytest.raises(UserValueError, match="compute capability 8.0"):
        precision.refuse_gpu("torch", "cuda:0", supported=False)


def test_bf16_warns_once_under_the_avx2_hold(tmp_path):
    _load("torch")
    script = ("import warnings, d2lres.torch as d\n"
              "warnings.simplefilter('always')\n"
              "with warnings.catch_warnings(record=True) as w:\n"
              "    warnings.simplefilter('always')\n"
              "    d.Trainer(d.resnet18(), precision='bf16'); d.Trainer(d.resnet18(), precision='bf16')\n"
              "print([str(x.message) for x in w if x.category.__name__ == 'SlowPrecisionWarning'])\n")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    messages = eval(out.stdout.strip().splitlines()[-1])
    assert len(messages) == 1, messages
    assert "slower than float32" in messages[0] and "held to AVX2" in messages[0]


def test_the_precision_is_part_of_a_runs_identity(torch_run, real_data, tmp_path):
    """A float32 run's checkpoint does not resume in bf16 (the difference is named), and its metrics say float32."""
    folder = tmp_path / "run"
    shutil.copytree(torch_run, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["config"]["precision"] == metrics["run"]["precision"] == "float32"
    out = subprocess.run([sys.executable, "-m", "d2lres", "train", "--backend", "torch", *SMALL_RUN, "--precision",
                          "bf16", "--resume", "--data-dir", str(real_data), "--out", str(folder)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "belongs to another run: precision: checkpoint float32, now bf16" in out.stderr


@pytest.mark.slow
def test_bench_times_both_precisions_in_one_run(real_data, tmp_path):
    """``bench --precision float32 bf16``: d2lres's way in bf16 beside float32, its own matmul limit, the ratios."""
    _load("torch")
    out = subprocess.run([sys.executable, "-m", "d2lres", "bench", "--quick", "--backends", "torch", "--batches", "4",
                          "--rounds", "1", "--precision", "float32", "bf16", "--out", str(tmp_path), "--data-dir",
                          str(real_data)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["way"], r["precision"]) for r in report["runs"]] == [
        ("d2lres", "float32"), ("chapter", "float32"), ("d2lres", "bf16")]
    limits = report["matmul_limit_by_precision"]
    assert set(limits) == {"float32", "bf16"} and all(v > 0 for v in limits.values())
    ratio = report["precision_ratios"]["torch"]["bf16"]
    assert set(ratio) == {"end_to_end", "train_4"} and all(v > 0 for v in ratio.values())
    table = (tmp_path / "bench.md").read_text()
    assert "| torch | d2lres precision=bf16 |" in table and "| torch | bf16 |" in table


def test_compare_in_bf16_states_its_own_parity_criteria():
    from d2lres.pipeline import compare
    runs = {n: {"first_step_loss": loss, "test_acc": 0.9, "run": {"train_images": 60000}}
            for n, loss in (("torch", 2.400), ("tf", 2.420))}
    plain, mixed = compare.parity(runs), compare.parity(runs, "bf16")
    assert plain["ok"] is False and mixed["ok"] is True  # 0.02 apart: beyond float32's 1e-4, within bf16's bound
    assert mixed["criteria"]["first_step_loss"] == 2 * checks.BF16_ERROR_CONSTANTS["step_loss"] * 2 ** -8
    assert abs(mixed["first_step_loss_max_diff"] - 0.02 / 2.42) < 1e-12
    with pytest.raises(compare.CompareError, match="mxnet cannot train in bf16"):
        compare.mixed_backends(["torch", "mxnet"], "bf16", chosen=True)
    assert compare.mixed_backends(["torch", "mxnet", "jax"], "bf16", chosen=False) == ["torch", "jax"]
