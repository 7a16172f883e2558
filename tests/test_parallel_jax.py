"""JAX across processes (issue 14): ``jax.distributed.initialize`` from the environment
(``JAX_COORDINATOR_ADDRESS``, ``D2LRES_NUM_PROCESSES``, ``D2LRES_PROCESS_ID``), the same GSPMD step
sharding the global batch over every process's devices, gloo on loopback.

- ``d2lres train --backend jax --devices 2`` (one process, 2 host devices) is the one-device run
  (first step, identity); the same run as two processes (two "machines" on 127.0.0.1), killed
  after its first checkpoint and resumed, is the ``--devices 2`` run bit for bit; only process 0
  writes. ResNet-18, 28x28 images, batch 4, 16 real images, 1 epoch. (The ``--devices 2`` step is
  the one-device step within ``checks.TOLERANCES`` in tests/test_parallel.py, so two processes are
  too, without a step check of their own.)"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from d2lres import checks, parallel
from helpers import one_and_two_devices, run_metrics, run_weights, wait_all

pytest.importorskip("jax")
from d2lres.jax import distributed  # noqa: E402

TIMEOUT = 420
RUN = ["train", "--backend", "jax", "--resize", "28", "--epochs", "1", "--no-progress", "--lr", "0.01",
       "--batch-size", "4", "--momentum", "0.9", "--schedule", "constant", "--limit", "16", "--checkpoint-every", "2"]


def test_settings_from_the_environment():
    assert distributed.settings({}) is None
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "D2LRES_NUM_PROCESSES": "2", "D2LRES_PROCESS_ID": "1"}
    assert distributed.settings(env) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                                         "process_id": 1}
    assert distributed.settings({"JAX_COORDINATOR_ADDRESS": "h:1"}) == {"coordinator_address": "h:1"}
    with pytest.raises(ValueError, match="D2LRES_PROCESS_ID must be an integer"):
        distributed.settings({**env, "D2LRES_PROCESS_ID": "one"})
    assert parallel.launched(env) and parallel.process_rank(env) == 1
    assert not parallel.launched({"D2LRES_PROCESS_ID": "1"}) and parallel.process_rank({"D2LRES_PROCESS_ID": "1"}) == 0


def test_local_environments():
    envs = distributed.local_environments(3, 4321, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --x",
                                                   "D2LRES_REPLICAS": "8"})
    assert [e["D2LRES_PROCESS_ID"] for e in envs] == ["0", "1", "2"]
    assert {e["JAX_COORDINATOR_ADDRESS"] for e in envs} == {"127.0.0.1:4321"}
    assert all(e["XLA_FLAGS"] == "--x --xla_force_host_platform_device_count=1" and "D2LRES_REPLICAS" not in e
               for e in envs)


def test_one_process_refuses_another_number_of_replicas():
    from d2lres.jax.parallel import mesh
    with pytest.raises(parallel.ParallelError, match="3 replicas asked"):
        mesh(3)


def _processes(argv: list[str], n: int = 2) -> list[tuple[str, str]]:
    """``(stdout, stderr)`` of ``argv`` in ``n`` processes of one JAX run on loopback."""
    return wait_all([subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for env in distributed.local_environments(n)])


@pytest.fixture(scope="module")
def runs(real_data, tmp_path_factory):
    """The small run on one device, and on 2 devices in one process (``--devices 2``)."""
    return one_and_two_devices(RUN, real_data, tmp_path_factory)


@pytest.mark.slow
@pytest.mark.serial
def test_two_devices_are_the_one_device_run(runs):
    one, two, printed = runs
    a, b = run_metrics(one), run_metrics(two)
    assert (a["devices"], b["devices"], b["sync_bn"]) == (1, 2, True) and a["run"] == b["run"]
    assert abs(a["first_step_loss"] - b["first_step_loss"]) <= checks.TOLERANCES["step_loss"]
    assert "on 2 devices" in printed and (two / "weights.npz").exists()


@pytest.mark.slow
@pytest.mark.serial
def test_two_processes_killed_and_resumed_are_the_two_device_run(runs, real_data, tmp_path):
    """Two "machines": ``d2lres train`` in two processes with JAX's coordinator on 127.0.0.1, both
    killed after the first checkpoint, resumed by two processes: the same weights, bit for bit, as
    ``--devices 2`` in one process (2 processes x 1 device run the same partitioned program)."""
    one, two, _ = runs
    argv = [sys.executable, "-m", "d2lres", *RUN, "--data-dir", str(real_data), "--out", str(tmp_path)]
    checkpoint = tmp_path / "checkpoint" / "checkpoint.npz"
    logs = [(tmp_path.parent / f"{tmp_path.name}-{i}.log").open("w") for i in range(2)]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
             for env, log in zip(distributed.local_environments(2), logs)]
    deadline = time.monotonic() + TIMEOUT
    while not checkpoint.exists() and all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    ended = [p.poll() for p in procs]
    for p, log in zip(procs, logs):
        p.kill()
        p.wait()
        log.close()
    assert ended == [None, None], ("the run ended before its first checkpoint",
                                   [Path(log.name).read_text()[-2000:] for log in logs])
    assert not (tmp_path / "metrics.json").exists()
    outs = _processes([*argv, "--resume"])
    m = run_metrics(tmp_path)
    assert m["devices"] == 2 and m["run"] == run_metrics(one)["run"]
    assert abs(m["first_step_loss"] - run_metrics(one)["first_step_loss"]) <= checks.TOLERANCES["step_loss"]
    want, got = run_weights(two), run_weights(tmp_path)
    assert all(np.array_equal(want[k], got[k]) for k in want), "the resumed 2-process run differs from --devices 2"
    assert "examples/sec" in outs[0][0] and "examples/sec" not in outs[1][0]  # process 0 speaks and writes
