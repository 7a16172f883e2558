"""Shared caches and unwritable places (issue 24), with real processes: two processes fetching
Fashion-MNIST into one cache (a symlink to it) at once from a slow local mirror both succeed
and read whole files; a read-only cache or run folder (for an unprivileged user: CI runs as
root, for whom nothing is read-only) and a full disk while a checkpoint is written
(``RLIMIT_FSIZE``) end with one clear error and leave the last good checkpoint as it was."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from d2lres.data import FILES, write_idx
from helpers import QuietHandler, serve_directory

ROOT = Path(__file__).resolve().parents[1]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def write_official(directory: Path) -> dict[str, str]:
    """Four small IDX files standing in for the official ones; their MD5s."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for name, shape in zip(FILES, [(20, 28, 28), (20,), (10, 28, 28), (10,)]):
        write_idx(directory / name, rng.integers(0, 10, shape, dtype=np.uint8))
    return {name: hashlib.md5((directory / name).read_bytes()).hexdigest() for name in FILES}


class SlowHandler(QuietHandler):
    """Sends each file in two halves 0.3 s apart, so that two fetches overlap."""

    def copyfile(self, source, outputfile):
        data = source.read()
        outputfile.write(data[: len(data) // 2])
        outputfile.flush()
        time.sleep(0.3)
        outputfile.write(data[len(data) // 2:])


FETCH = """
import json, sys
from d2lres.data import FILES, fetch_fashion_mnist, read_idx
result = fetch_fashion_mnist(sys.argv[1], mirrors=[sys.argv[2]], npm="no-npm", progress=False,
                             official_md5=json.loads(sys.argv[3]))
print(json.dumps({"source": result.source, "sizes": [read_idx(result.data_dir / n).size for n in FILES]}))
"""


def child_env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def test_two_processes_fetch_into_one_cache_at_once(tmp_path):
    md5 = write_official(tmp_path / "mirror")
    (tmp_path / "real-cache").mkdir()
    cache = tmp_path / "cache"
    cache.symlink_to(tmp_path / "real-cache")  # a cache that is a symlink keeps working
    with serve_directory(tmp_path / "mirror", SlowHandler) as url:
        procs = [subprocess.Popen([sys.executable, "-c", FETCH, str(cache), url, json.dumps(md5)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
                 for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    results = [json.loads(out) for out, _ in outs]
    assert sorted(r["source"] for r in results) == ["cache", f"mirror {url}"]  # the second waited, then used it
    assert all(r["sizes"] == [20 * 784, 20, 10 * 784, 10] for r in results)
    assert sorted(p.name for p in (tmp_path / "real-cache").iterdir()) == sorted(FILES)


@pytest.fixture
def shared_tmp():
    """A folder an unprivileged user can enter (pytest's own are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="d2lres-caches-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def as_nobody(*argv, **kwargs) -> subprocess.CompletedProcess:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a child as an unprivileged user")
    probe = subprocess.run([*NOBODY, sys.executable, "-c", "pass"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:  # e.g. a Python built with its libpython under root's private home
        pytest.skip(f"this Python does not start as an unprivileged user: {probe.stderr.strip()[-200:]}")
    return subprocess.run([*NOBODY, sys.executable, *argv], capture_output=True, text=True, timeout=300,
                          env=child_env(HOME="/tmp", MPLCONFIGDIR="/tmp"), **kwargs)


def test_read_only_cache_and_run_folder_are_clear_errors(shared_tmp):
    md5 = write_official(shared_tmp / "mirror")
    empty = shared_tmp / "empty-cache"
    empty.mkdir(mode=0o755)
    done = as_nobody("-m", "d2lres", "data", "--data-dir", str(empty))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"d2lres: error: cannot write to the data directory {empty} (Permission denied)"), line
    # a complete read-only cache is only read
    full = shared_tmp / "full-cache"
    shutil.copytree(shared_tmp / "mirror", full)
    for p in [full, *full.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o444)
    read = as_nobody("-c", "import json, sys\nfrom d2lres.data import fetch_fashion_mnist\n"
                     "print(fetch_fashion_mnist(sys.argv[1], mirrors=[], npm='no-npm', progress=False, "
                     "official_md5=json.loads(sys.argv[2])).source)", str(full), json.dumps(md5))
    assert read.returncode == 0 and read.stdout.strip() == "cache", read.stderr[-3000:]
    # a run folder in a folder the user cannot write
    out = shared_tmp / "runs"
    out.mkdir(mode=0o755)
    done = as_nobody("-m", "d2lres", "train", "--backend", "torch", "--out", str(out / "run"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"cannot use {out / 'run'} as a run folder (Permission denied)" in done.stderr, done.stderr[-3000:]


FULL_DISK = """
import resource, sys
from pathlib import Path
import numpy as np
from d2lres import cli
from d2lres import training
from d2lres import weights

class Trainer:
    def __init__(self, w): self.w = w
    def get_weights(self): return self.w
    def optimizer_state(self): return {f"momentum.{k}": v for k, v in self.w.items()}

folder = Path(sys.argv[1])
progress = {"history": {}, "acc": {}, "epoch": 0, "step_in_epoch": 1, "identity": {"arch": "resnet18"}}
training.save_checkpoint(folder, Trainer(weights.init_weights(seed=0)), progress)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # the disk is full after 1 MiB of a file
sys.exit(cli.report_errors(lambda: training.save_checkpoint(folder, Trainer(weights.init_weights(seed=1)),
                                                             {**progress, "step_in_epoch": 2})))
"""


def test_full_disk_during_a_checkpoint_write_keeps_the_last_one(tmp_path):
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=child_env())
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("d2lres: error: ") and "File too large" in line and "free space" in line, line
    from d2lres import training, weights
    saved, _, progress = training.load_checkpoint(tmp_path)
    assert progress["step_in_epoch"] == 1
    np.testing.assert_array_equal(saved["b1.conv.weight"], weights.init_weights(seed=0)["b1.conv.weight"])
    assert [p.name for p in tmp_path.iterdir()] == [training.CHECKPOINT]  # no temporary file left
