"""``d2lres bench``: the quick run writes a well-formed report, and every acceleration switch
of every backend computes the same training steps as the plain path."""
import json
import math
import subprocess
import sys

import pytest

from d2lres import checks
from d2lres.host import backends
from d2lres.perf import bench

pytestmark = pytest.mark.framework

ACCELERATED = [(name, options) for name, variants in bench.ACCELERATIONS.items() if name in backends.available()
               for options in variants]


@pytest.mark.parametrize("backend,options", [pytest.param(n, o, id=f"{n}-{'-'.join(o) or 'default'}",
                                                          marks=[pytest.mark.slow] if o.get("compile") else [])
                                             for n, o in ACCELERATED])
def test_acceleration_computes_the_same_function(backend, options):
    """The cross-backend checks (forwards and one SGD step, same tolerances), plain vs accelerated."""
    runs = checks.run_all({"plain": (backend, bench.PLAIN[backend]), "fast": (backend, options)})
    diff = checks.differences(runs["plain"], runs["fast"])
    assert all(diff[k] <= tol for k, tol in checks.TOLERANCES.items()), diff


@pytest.mark.slow
def test_quick_bench_writes_a_well_formed_report(real_data, tmp_path):
    """Held to AVX2 (what most learners' CPUs have), the ISA recorded with the CPU."""
    out = subprocess.run([sys.executable, "-m", "d2lres", "bench", "--quick", "--isa", "avx2", "--rounds", "1",
                          "--out", str(tmp_path), "--data-dir", str(real_data)], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    runs = {(r["backend"], r["way"]) for r in report["runs"]}
    assert runs == {(n, w) for n in backends.available() for w in bench.WAYS}
    for r in report["runs"]:
        rates = [*r["train"].values(), *r["infer"].values(), r["end_to_end"]["images_per_s"], r["matmul_gflops"]]
        assert all(math.isfinite(v) and v > 0 for v in rates), r
        assert set(r["train"]) == {"16", "4"} and 0 < r["train_share"]["16"] < 10
        assert len(r["end_to_end"]["rounds"]) == report["config"]["rounds"] == 1
    assert report["training_flops"] == 6 * report["forward_macs"] > 0
    assert set(report["matmul_gflops"]) == {"numpy", *backends.available()}
    assert report["matmul_limit_gflops"] == max(report["matmul_gflops"].values())
    assert set(report["ratios"]) == set(backends.available())
    assert all(v > 0 for ratios in report["ratios"].values() for v in ratios.values())
    assert report["cpu"]["held"] == "avx2" and report["cpu"]["model"]
    table = (tmp_path / "bench.md").read_text()
    assert "held to AVX2" in table.splitlines()[0]
    n = len(backends.available())
    assert table.count("| d2lres |") == n and table.count("| chapter |") == n
    assert table.split("\n\n![bench]")[0] in out.stdout  # the same table printed
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_an_unknown_backend():
    out = subprocess.run([sys.executable, "-m", "d2lres", "bench", "--quick", "--backends", "caffe"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and f"choose one of {', '.join(backends.BACKENDS)}" in out.stderr
