"""scripts/gpu-check: it stops before any run when the GPU is missing, and its dry run (``--device
cpu``, a tiny preset) runs every step and writes the report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from d2lres.host import backends
from helpers import COMMAND_TIMEOUT

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu-check"
NEEDS = pytest.mark.skipif(not {"torch", "jax"} <= set(backends.available()), reason="needs PyTorch and JAX")


def _gpu_check(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT)


def test_is_an_executable_script():
    assert SCRIPT.stat().st_mode & 0o111 and SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")
    assert 'if __name__ == "__main__":' in SCRIPT.read_text()


@NEEDS
def test_stops_before_any_run_without_a_gpu(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    proc = _gpu_check("--out", tmp_path / "report")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.startswith("found: python ") and "torch 2." in proc.stdout
    assert "gpu-check: stopped before any run; missing:" in proc.stderr
    assert "PyTorch sees no CUDA GPU" in proc.stderr and "JAX sees no GPU" in proc.stderr
    assert not (tmp_path / "report").exists()


@NEEDS
@pytest.mark.slow
def test_dry_run_on_the_cpu_writes_the_report(tmp_path):
    out = tmp_path / "report"
    proc = _gpu_check("--device", "cpu", "--out", out, "--backends", "torch")  # the check: PyTorch's only
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and report["device"] == "cpu"
    assert report["check"]["result"] == "PASS" and report["check"]["backends"] == ["torch"]
    for backend in ("torch", "jax"):
        run = report["train"][backend]
        assert run["exit"] == 0 and run["device"].lower().startswith(("cpu", "tfrt_cpu")), run
        assert 0 <= run["test_acc"] <= 1 and run["images_per_s"] > 0 and (run["epochs"], run["resize"]) == (1, 32)
    assert report["devices_1"]["exit"] == 0 and report["devices_1"]["devices"] == 1
    text = (out / "report.md").read_text()
    assert "# gpu-check (cpu, dry run)" in text and "| torch | " in text and "| jax | " in text
    assert "$ d2lres check" in (out / "commands.log").read_text()
    print(text)
