"""``d2lres profile``: the quick run writes a well-formed report (md, json, png) with every stage
of every backend it ran, and the stages' FLOPs add up to the whole network's training FLOPs."""
import json
import math
import subprocess
import sys

import pytest

from d2lres import spec
from d2lres.host import backends, isa
from d2lres.perf import profile

pytestmark = pytest.mark.framework

#: One or two fast-starting backends (JAX compiles for tens of seconds, TensorFlow traces).
QUICK = [b for b in ("torch", "mxnet") if b in backends.available()] or backends.available()[:1]


@pytest.mark.parametrize("size", [32, 40, 96])
def test_stage_flops_add_up_to_the_network(size):
    stages = profile.stages(size)
    assert [s["stage"] for s in stages] == list(spec.STAGE_NAMES)
    assert sum(s["macs"] for s in stages) == spec.forward_macs((1, size, size))
    assert sum(profile.training_gflop(s["macs"], 128) for s in stages) == pytest.approx(
        128 * spec.training_flops((1, size, size)) / 1e9, rel=1e-12)
    assert stages[0]["input"] == (1, size, size)
    for a, b in zip(stages, stages[1:]):
        assert b["input"] == a["output"]  # each stage sees what the one before it gives
    assert stages[-1]["output"] == (10,)


def test_quick_profile_writes_a_well_formed_report(tmp_path):
    out = subprocess.run([sys.executable, "-m", "d2lres", "profile", "--quick", "--backends", *QUICK,
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "profile.json").read_text())
    size, batch = report["config"]["size"], report["config"]["batch"]
    assert [r["backend"] for r in report["runs"]] == QUICK
    assert [s["stage"] for s in report["stages"]] == list(spec.STAGE_NAMES)
    whole = batch * spec.training_flops((1, size, size)) / 1e9
    assert report["training_gflop"] == pytest.approx(whole, rel=1e-12)
    assert sum(s["gflop"] for s in report["stages"]) == pytest.approx(whole, rel=1e-12)
    assert sum(s["flop_share"] for s in report["stages"]) == pytest.approx(1.0)
    assert report["matmul_limit_gflops"] == max(report["matmul_gflops"].values()) > 0
    assert report["cpu"]["model"] and report["cpu"]["held"] == isa.held_isa()  # CI holds the current set to AVX2
    for r in report["runs"]:
        assert set(r["ms"]) == set(profile.PARTS)
        assert all(math.isfinite(v) and v > 0 for v in r["ms"].values()), r["ms"]
        assert r["other_ms"] == pytest.approx(r["ms"]["step"] - sum(r["ms"][p] for p in profile.PARTS[:-1]))
        assert r["share_of_step"]["step"] == pytest.approx(1.0)
        assert set(r["share_of_limit"]) == {*spec.STAGE_NAMES, "step"}
    table = (tmp_path / "profile.md").read_text()
    assert table.startswith(f"CPU: {report['cpu']['model']}")
    for stage in spec.STAGE_NAMES:
        assert table.count(f"| {stage} |") == 3  # ms, share of the step, share of the limit
    assert table.count("| " + " | ".join(["part", "input (CxHxW)", "GFLOP", "FLOP share", *QUICK]) + " |") == 3
    assert table.split("\n\n![profile]")[0] in out.stdout
    assert (tmp_path / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_rejects_a_size_too_small_for_the_network():
    out = subprocess.run([sys.executable, "-m", "d2lres", "profile", "--size", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and "--size" in out.stderr
