"""MXNet data-parallel beyond one process (issue 14): the ``dist_sync`` kvstore with a scheduler, a
server and 2 workers on 127.0.0.1 (``d2lres.mxnet.launch``), on the CPU.

- One step of 2 dist_sync workers (one context each) is what ``parallel.emulate_unsynchronized``
  says (per-worker BatchNorm: the per-shard single-device steps, averaged) within
  ``parallel.check_step``'s tolerances, with momentum and weight decay (applied once, to the
  summed gradient), and both workers end with the same weights; the kvstore's ranks are the
  launcher's process ids.
- ``d2lres train --backend mxnet --devices 2 --no-sync-bn`` (one process, two contexts, a
  ``device`` kvstore) writes its metrics; the same run as 2 dist_sync workers gives the same
  metrics and weights; without ``--no-sync-bn`` the CPU refusal is one error line.
- The launcher stops the others when one worker fails.
"""
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from d2lres import parallel
from d2lres.host import backends

pytestmark = pytest.mark.skipif("mxnet" not in backends.available(), reason="MXNet is not in this set")

TIMEOUT = 300
#: A small run: 1 epoch of 4 global batches of 8 (shards of 4: BatchNorm over 2 images at ResNet-18's
#: 1x1 last stage diverges within a few steps, on one device as on two).
RUN = ["--backend", "mxnet", "--resize", "28", "--epochs", "1", "--no-progress", "--lr", "0.01",
       "--batch-size", "8", "--momentum", "0.9", "--schedule", "constant", "--limit", "32",
       "--checkpoint-every", "2"]
#: One worker's part of the step check: check_step in the dist_sync job, its result per process id.
STEP_JOB = """
import json, os, sys
from pathlib import Path
from d2lres import parallel
from d2lres.mxnet import parallel as mxp
result = parallel.check_step("mxnet", 2, sync_bn=False, momentum=0.9, weight_decay=0.05)
result["kv_rank"], result["kv_workers"] = mxp.dist_kvstore().rank, mxp.dist_kvstore().num_workers
Path(sys.argv[1], os.environ["D2LRES_PROCESS_ID"] + ".json").write_text(json.dumps(result))
"""


def launch(*args, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "d2lres.mxnet.launch", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def d2lres(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "d2lres", *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_the_launchers_environments():
    from d2lres.mxnet import launch as mxlaunch
    envs = mxlaunch.environments(2, servers=1, contexts=3, env={"PATH": "/bin", "PORT": "1", "D2LRES_PROCESS_ID": "7"})
    assert [e["DMLC_ROLE"] for e in envs["scheduler"] + envs["server"] + envs["worker"]] == \
        ["scheduler", "server", "worker", "worker"]
    for e in envs["scheduler"] + envs["server"]:
        assert "PORT" not in e and "D2LRES_PROCESS_ID" not in e and e["PATH"] == "/bin"
    workers = envs["worker"]
    assert all(e["DMLC_PS_ROOT_URI"] == e["DMLC_NODE_HOST"] == "127.0.0.1" and e["DMLC_NUM_WORKER"] == "2"
               and e["DMLC_NUM_SERVER"] == "1" and e["D2LRES_REPLICAS"] == "3" for e in workers)
    # ps-lite numbers one host's workers by their ports: ascending ports make kv.rank the process id
    assert [e["D2LRES_PROCESS_ID"] for e in workers] == ["0", "1"] and int(workers[0]["PORT"]) < int(workers[1]["PORT"])
    assert parallel.process_rank(workers[1]) == 1 and parallel.launched(workers[1])
    assert not parallel.launched(envs["server"][0]) and parallel.process_rank(envs["server"][0]) == 0
    with pytest.raises(ValueError):
        mxlaunch.environments(0)


def test_refusals_before_joining_a_job(monkeypatch):
    """Synchronized BatchNorm across dist_sync workers, and a replica count that is not the job's,
    are refused before the worker contacts the scheduler (none runs here)."""
    import d2lres.mxnet as mod
    from d2lres.mxnet.parallel import ParallelTrainer, mx  # mxnet after d2lres's numpy fix
    net = mod.resnet18()
    for name, value in {"DMLC_ROLE": "worker", "DMLC_NUM_WORKER": "2", "D2LRES_REPLICAS": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(parallel.ParallelError, match="across MXNet dist_sync workers.*--no-sync-bn"):
        ParallelTrainer(net)
    with pytest.raises(parallel.ParallelError, match=r"replicas=3 does not match the run's 2 replicas \(2 dist_sync"):
        ParallelTrainer(net, replicas=3, sync_bn=False)
    monkeypatch.delenv("DMLC_ROLE")
    monkeypatch.setenv("D2LRES_REPLICAS", "2")  # one process, two contexts, as d2lres train --devices 2
    with pytest.raises(parallel.ParallelError, match="over CPU contexts is not available.*--no-sync-bn"):
        ParallelTrainer(net, device=mx.cpu())
    with pytest.raises(parallel.ParallelError, match="replicas=3 does not match the run's 2 replicas"):
        ParallelTrainer(net, replicas=3, sync_bn=False, device=mx.cpu())
    trainer = ParallelTrainer(net, replicas=None, sync_bn=False, device=mx.cpu())
    assert (trainer.replicas, trainer.rank, trainer.sync_bn, len(trainer.ctxs)) == (2, 0, False, 2)


@pytest.mark.slow
@pytest.mark.serial
def test_two_dist_sync_workers_step_as_the_per_shard_emulation(tmp_path):
    script = tmp_path / "step_job.py"
    script.write_text(STEP_JOB)
    tic = time.monotonic()
    done = launch("--workers", 2, "--timeout", TIMEOUT - 30, "--", sys.executable, script, tmp_path)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    results = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    print(f"2 dist_sync workers, one step each: {time.monotonic() - tic:.1f} s")
    for i, r in enumerate(results):
        print(parallel.format_results([r]))
        assert (r["kv_rank"], r["kv_workers"]) == (i, 2)
        assert r["ok"], r["differences"]
        assert all(r["unsync_vs_single"][q] > r["tolerances"][q] for q in parallel.STEP_QUANTITIES)
    assert results[0]["differences"] == results[1]["differences"]  # the same weights on both workers
    assert results[0]["step_loss"] == results[1]["step_loss"]


def metrics_and_weights(out):
    metrics = json.loads((out / "metrics.json").read_text())
    with np.load(out / "weights.npz") as w:
        return metrics, {k: w[k] for k in w.files if k != "__format__"}  # d2lres.weights.FORMAT_KEY


@pytest.mark.slow
@pytest.mark.serial
def test_train_on_two_contexts_and_on_two_dist_sync_workers(real_data, tmp_path):
    """``--devices 2 --no-sync-bn``: one process, cpu(0) and cpu(1); the same run as 2 dist_sync
    workers of one context each is the same function (same shards, same sums): same metrics and
    weights within the step check's tolerance."""
    common = [*RUN, "--data-dir", real_data, "--no-sync-bn"]
    refused = d2lres("train", *RUN, "--data-dir", real_data, "--devices", 2, "--out", tmp_path / "sync")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("d2lres: error:")]
    assert len(errors) == 1 and "--no-sync-bn" in errors[0] and "CPU contexts" in errors[0], refused.stderr[-3000:]

    done = d2lres("train", *common, "--devices", 2, "--out", tmp_path / "contexts")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 devices" in done.stdout
    done = launch("--workers", 2, "--timeout", TIMEOUT - 30, "--", sys.executable, "-m", "d2lres", "train", *common,
                  "--out", tmp_path / "workers")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1  # only process 0 reports and writes
    (a, wa), (b, wb) = metrics_and_weights(tmp_path / "contexts"), metrics_and_weights(tmp_path / "workers")
    assert (a["devices"], a["sync_bn"], b["devices"], b["sync_bn"]) == (2, False, 2, False)
    assert a["run"] == b["run"] and np.isfinite(a["train_loss"])
    for key in ("train_loss", "first_step_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-5)
    assert a["test_acc"] == b["test_acc"]
    assert max(np.abs(wa[k] - wb[k]).max() / max(np.abs(wa[k]).max(), 1e-6) for k in wa) < 1e-4


@pytest.mark.slow
@pytest.mark.serial
def test_a_failing_worker_stops_the_job():
    code = ("import os, sys, time\n"
            "if os.environ['D2LRES_PROCESS_ID'] == '1': sys.exit(3)\n"
            "time.sleep(120)")
    tic = time.monotonic()
    done = launch("--workers", 2, "--", sys.executable, "-c", code, timeout=100)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "a worker exited with status 3; stopping the others" in done.stderr
    assert time.monotonic() - tic < 60


@pytest.mark.slow
@pytest.mark.serial
def test_a_killed_dist_sync_run_resumes(real_data, tmp_path):
    """SIGTERM to the launcher after the first checkpoint stops every process; the same command with
    ``--resume`` continues from the checkpoint in both workers (process 0 wrote it) and finishes.
    (Its weights are not compared with an uninterrupted run's here; tests/test_signals.py holds an
    interrupted MXNet run on one device to the uninterrupted one, bit for bit.)"""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "d2lres.mxnet.launch", "--workers", "2", "--", sys.executable, "-m", "d2lres",
            "train", *RUN, "--data-dir", str(real_data), "--no-sync-bn", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = out / "checkpoint" / "checkpoint.npz"
    deadline = time.monotonic() + TIMEOUT
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert checkpoint.exists() and not (out / "metrics.json").exists(), err[-3000:]
    assert proc.returncode != 0
    done = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("resuming from") == 1  # process 0 says so; both read it
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]["epochs"]) == 1 and np.isfinite(metrics["train_loss"])
