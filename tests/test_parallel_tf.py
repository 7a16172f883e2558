"""TensorFlow across processes (issue 14): ``MultiWorkerMirroredStrategy`` with ``TF_CONFIG``, two
worker processes on 127.0.0.1 (ports from ``parallel.free_port``), one CPU replica each.

The 2 workers count their replicas over the cluster and refuse another number; ``d2lres train``
run in each worker process joins one run that only worker 0 writes, the one-device run's first step, the same
run as ``--devices 2`` on one machine (``MirroredStrategy``), and resumes after both workers are
killed. (The ``--devices 2`` step is the one-device step within ``d2lres.checks``' tolerances, with
and without synchronized BatchNorm, in tests/test_parallel.py.) ResNet-18; the runs: 28x28 images,
batch 4, 24 real images, 2 epochs (``tests/test_parallel_torch.py``'s)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from d2lres import parallel
from d2lres.host import backends
from helpers import d2lres_cli, run_metrics, run_weights, wait_all

TIMEOUT = 420
RUN = ["train", "--backend", "tf", "--resize", "28", "--epochs", "2", "--no-progress", "--lr", "0.01",
       "--batch-size", "4", "--momentum", "0.9", "--schedule", "constant", "--limit", "24", "--checkpoint-every", "2"]

#: What each worker runs: the strategy's layout, the contract's attributes and refusal.
WORKER = """
import json, sys
from d2lres.host import process
from d2lres import parallel
import d2lres.tf as mod
from d2lres.tf import parallel as tfp
process.configure("tf")  # before TensorFlow's runtime starts: the strategy waits for both workers
net = mod.resnet18()
mod.init_weights(net, 0)
trainer = tfp.ParallelTrainer(net)
info = {"replicas": trainer.replicas, "rank": trainer.rank, "sync_bn": trainer.sync_bn,
        "local": len(trainer.strategy.extended.worker_devices), "process_rank": parallel.process_rank()}
try:
    tfp.ParallelTrainer(net, replicas=3)
except parallel.ParallelError as err:
    info["refused"] = str(err)
open(f"{sys.argv[1]}/{trainer.rank}.json", "w").write(json.dumps(info))
"""


def cluster(workers: int = 2) -> list[dict]:
    """Each worker's environment: ``TF_CONFIG`` for a cluster of ``workers`` on loopback."""
    hosts = [f"{parallel.LOOPBACK}:{p}" for p in parallel.free_ports(workers)]
    env = {k: v for k, v in os.environ.items() if k not in ("D2LRES_REPLICAS", "TF_CONFIG")}
    return [{**env, "TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})}
            for i in range(workers)]


def spawn_workers(argv, workers: int = 2) -> list[subprocess.Popen]:
    """``argv`` in ``workers`` processes of one cluster on loopback (each in its own session)."""
    return [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True) for env in cluster(workers)]


@pytest.fixture(autouse=True, scope="module")
def _tf():
    if "tf" not in backends.available():
        pytest.skip("tf is not available in this set")


def test_tf_config_names_this_process_and_refuses_what_it_cannot_run():
    from d2lres.tf.parallel import tf_config
    env = cluster(2)[1]
    assert parallel.process_rank(env) == 1 and parallel.launched(env)
    assert tf_config(env)["cluster"]["worker"] == json.loads(env["TF_CONFIG"])["cluster"]["worker"]
    assert tf_config({}) is None
    for bad in ['{"cluster": {}}', "not json",
                '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
                '{"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}']:
        with pytest.raises(parallel.ParallelError, match="TF_CONFIG"):
            tf_config({"TF_CONFIG": bad})


@pytest.mark.slow
@pytest.mark.serial
def test_two_workers_count_the_cluster_and_refuse_another_number(tmp_path):
    """MultiWorkerMirroredStrategy over 2 worker processes: replicas counted over the cluster, rank =
    task index, a wrong explicit number refused, in both workers."""
    wait_all(spawn_workers([sys.executable, "-c", WORKER, str(tmp_path)]))
    for rank in (0, 1):
        info = json.loads((tmp_path / f"{rank}.json").read_text())
        assert (info["replicas"], info["rank"], info["process_rank"], info["sync_bn"], info["local"]) == \
            (2, rank, rank, True, 1)
        assert "3 replicas asked, the TF_CONFIG cluster has 2 (2 worker(s) x 1 local device(s))" in info["refused"]


def test_importing_sets_up_nothing_and_configure_makes_the_logical_cpus():
    """Importing d2lres.tf leaves TensorFlow's devices as they are; ``process.configure("tf")``,
    which a run calls where it starts, splits the CPU into ``D2LRES_REPLICAS`` logical devices."""
    env = {**os.environ, "D2LRES_REPLICAS": "2"}
    env.pop("TF_CONFIG", None)
    count = "import tensorflow as tf; print(len(tf.config.list_logical_devices('CPU')))"
    for setup, want in (("import d2lres.tf", "1"), ("import d2lres.tf; from d2lres.host import process; "
                                                    "process.configure('tf')", "2")):
        done = subprocess.run([sys.executable, "-c", f"{setup}; {count}"], env=env, capture_output=True, text=True,
                              timeout=TIMEOUT)
        assert done.returncode == 0 and done.stdout.split()[-1] == want, (setup, done.stdout, done.stderr[-2000:])


@pytest.mark.slow
@pytest.mark.serial
def test_two_workers_train_one_run_that_worker_0_writes_and_resume_it(real_data, tmp_path):
    """``d2lres train`` in each of 2 worker processes (TF_CONFIG) joins one run; killed (both
    workers) after its first checkpoint and resumed by 2 workers, it is the ``--devices 2`` run on
    one machine (MirroredStrategy over 2 logical CPUs; the same losses, the weights within float32
    reduction order), whose step is the one-device step (tests/test_parallel.py). Worker 0 holds
    the folder, writes and speaks; worker 1 says nothing."""
    two, workers = tmp_path / "two", tmp_path / "workers"
    assert "on 2 devices" in d2lres_cli(*RUN, "--data-dir", real_data, "--out", two, "--devices", 2).stdout
    argv = [sys.executable, "-m", "d2lres", *RUN, "--data-dir", str(real_data), "--out", str(workers)]
    procs, checkpoint = spawn_workers(argv), workers / "checkpoint" / "checkpoint.npz"
    deadline = time.monotonic() + TIMEOUT
    while not checkpoint.exists() and all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(p.poll() is None for p in procs), "the run ended before its first checkpoint"
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
    assert not (workers / "metrics.json").exists()
    outs = wait_all(spawn_workers([*argv, "--resume"]))
    assert "test accuracy" in outs[0][0] and outs[1][0] == ""
    b, c = run_metrics(two), run_metrics(workers)
    assert (b["devices"], c["devices"], b["sync_bn"], c["sync_bn"]) == (2, 2, True, True)
    assert b["run"] == c["run"]
    assert "/job:worker/replica:0/task:0/" in c["device"]
    for key in ("first_step_loss", "train_loss", "test_acc"):  # the same arithmetic in one process or two
        assert c[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
    want, got = run_weights(two), run_weights(workers)
    assert max(float(np.abs(want[k] - got[k]).max() / max(np.abs(want[k]).max(), 1e-30)) for k in want) < 1e-5
