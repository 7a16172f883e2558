"""Fault injection on the command line (issue 15): kill -9 at random moments of a small run
(checkpoint writes included) and resume to exactly the uninterrupted run's weights; two runs
into one folder; resume with other settings; damaged checkpoints and --init files; bad numbers;
``--arch`` honoured. PyTorch backend, 28x28 images, batch 4, a few dozen real images."""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL_RUN
from d2lres import cli, spec

TIMEOUT = 600  # seconds, for any one command (two shared cores can be slow)
#: The small run: 2 epochs of 6 batches, a checkpoint every 2 steps and at each epoch's end.
RUN = ["--backend", "torch", *SMALL_RUN]


def d2lres(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "d2lres", *map(str, args)], capture_output=True, text=True,
                          timeout=kwargs.pop("timeout", TIMEOUT), **kwargs)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "d2lres", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    """The command failed with exit status 2 and one ``d2lres: error:`` line, no traceback."""
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("d2lres: error:")]
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0]


def weights(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


@pytest.fixture(scope="module")
def reference(torch_run):
    """The small run, uninterrupted, under umask 022: its folder (its wall time in ``.seconds``;
    conftest's ``torch_run``, also tests/test_parallel_torch.py's one-device run)."""
    return torch_run


@pytest.fixture
def interrupted(reference, tmp_path):
    """A copy of the reference run that looks interrupted (checkpoint, no metrics.json)."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for name in ("metrics.json", "weights.npz", "curves.png"):
        (out / name).unlink()
    return out


# ----------------------------------------------------------------------- kill -9 and resume

def assert_same_run(out: Path, reference: Path) -> None:
    got, want = weights(out / "weights.npz"), weights(reference / "weights.npz")
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    mine, theirs = (json.loads((p / "metrics.json").read_text()) for p in (out, reference))
    assert mine["history"]["points"] == theirs["history"]["points"]
    assert [e["test_acc"] for e in mine["history"]["epochs"]] == [e["test_acc"] for e in theirs["history"]["epochs"]]
    assert temporaries(out) == []


def kill_during_checkpoint_write(proc: subprocess.Popen, folder: Path, skip: int = 1) -> bool:
    """SIGKILL ``proc`` while it writes a checkpoint (its temporary file exists), after ``skip``
    complete checkpoints; False if the run ended first."""
    checkpoint = folder / "checkpoint" / "checkpoint.npz"
    seen, writing = 0, False
    while proc.poll() is None:
        now = bool(list((folder / "checkpoint").glob(".checkpoint.npz.*.tmp")))
        if now and not writing:
            seen += 1
        writing = now
        if writing and seen > skip and checkpoint.exists():
            proc.kill()
            proc.wait(timeout=60)
            return True
        time.sleep(0.005)
    return False


def test_kill_during_checkpoint_write_then_resume_is_exact(reference, real_data, tmp_path):
    out = tmp_path / "run"
    proc = start("train", *RUN, "--data-dir", real_data, "--out", out)
    try:
        assert kill_during_checkpoint_write(proc, out), proc.communicate()[1][-3000:]
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert temporaries(out), "the kill did not land inside a checkpoint write"
    done = d2lres("train", *RUN, "--data-dir", real_data, "--out", out, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout
    assert_same_run(out, reference)


@pytest.mark.slow
def test_kill_at_random_moments_then_resume_is_exact(reference, real_data, tmp_path):
    """Killed up to three times at random moments (any phase: start-up, a step, a checkpoint
    write, evaluation, the final outputs; seeded), resumed each time: the uninterrupted run's weights."""
    rng = random.Random(1)
    out = tmp_path / "run"
    wall = float((reference / ".seconds").read_text())  # the whole command, start-up included
    kills = 0
    for _ in range(6):
        resume = ["--resume"] if (out / "checkpoint" / "checkpoint.npz").exists() else []
        proc = start("train", *RUN, "--data-dir", real_data, "--out", out, *resume)
        try:
            proc.wait(timeout=rng.uniform(0.1, 0.9) * wall)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0 and kills == 0:  # faster than the reference run: again, killed sooner
            shutil.rmtree(out)
            wall /= 2
            continue
        if proc.returncode == 0 or kills == 3:
            break
        assert proc.returncode == -signal.SIGKILL, err[-3000:]
    resume = ["--resume"] if (out / "checkpoint" / "checkpoint.npz").exists() else []
    done = d2lres("train", *RUN, "--data-dir", real_data, "--out", out, *resume)
    assert done.returncode == 0, done.stderr[-3000:]
    assert kills >= 1
    assert_same_run(out, reference)


def test_outputs_follow_the_umask(reference):
    for path in ("metrics.json", "weights.npz", "curves.png", "checkpoint/checkpoint.npz"):
        assert (reference / path).stat().st_mode & 0o777 == 0o644, path


# ----------------------------------------------------------------------------- run folders

def test_two_runs_into_one_folder_one_refuses(real_data, tmp_path):
    out = tmp_path / "run"
    first = start("train", *RUN, "--data-dir", real_data, "--out", out)
    try:
        deadline = time.monotonic() + 120
        while not ((out / ".lock").exists() and (out / ".lock").read_text().strip()):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.05)
        second = d2lres("train", *RUN, "--data-dir", real_data, "--out", out, "--overwrite")
        line = one_error_line(second)
        assert str(out) in line and f"in use by another run (pid {first.pid})" in line
    finally:
        first.kill()
        first.communicate(timeout=60)
    # the lock dies with its process: a run killed while holding it leaves nothing stuck
    again = d2lres("train", *RUN, "--data-dir", real_data, "--out", out, "--limit", "5")
    assert "in use by another run" not in again.stderr


def test_an_existing_run_is_not_replaced_without_a_flag(reference, real_data, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = (out / "checkpoint" / "checkpoint.npz").read_bytes()
    line = one_error_line(d2lres("train", *RUN, "--data-dir", real_data, "--out", out))
    assert str(out) in line and "--resume" in line and "--overwrite" in line
    assert (out / "checkpoint" / "checkpoint.npz").read_bytes() == before
    # --resume of a finished run changes nothing
    done = d2lres("train", *RUN, "--data-dir", real_data, "--out", out, "--resume")
    assert done.returncode == 0 and "complete already" in done.stdout, done.stderr[-3000:]


def test_resume_without_a_checkpoint_is_an_error(real_data, tmp_path):
    line = one_error_line(d2lres("train", *RUN, "--data-dir", real_data, "--out", tmp_path, "--resume"))
    assert "no checkpoint" in line and str(tmp_path) in line


def test_resume_refuses_other_settings_naming_each(interrupted, real_data):
    changed = [a if a not in ("0.01", "4") else {"0.01": "0.02", "4": "8"}[a] for a in RUN]
    line = one_error_line(d2lres("train", *changed, "--seed", "3", "--resize", "32", "--arch", "resnet34",
                                 "--data-dir", real_data, "--out", interrupted, "--resume"))
    for difference in ("lr: checkpoint 0.01, now 0.02", "batch_size: checkpoint 4, now 8",
                       "seed: checkpoint 0, now 3", "resize: checkpoint 28, now 32",
                       "arch: checkpoint resnet18, now resnet34"):
        assert difference in line, line
    line = one_error_line(d2lres("train", *RUN, "--limit", "40", "--data-dir", real_data, "--out", interrupted,
                                 "--resume"))
    assert "limit: checkpoint 24, now 40" in line and "train_images: checkpoint 24, now 40" in line


# ------------------------------------------------------------------------------ damaged files

def damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes()) if path.exists() else bytearray()
    if how == "empty":
        raw = bytearray()
    elif how == "truncated":
        raw = raw[: len(raw) // 3]
    elif how == "flipped":
        raw[len(raw) // 2] ^= 0xFF
    elif how == "pickle":
        import pickle
        raw = bytearray(pickle.dumps({"weights": [1, 2, 3]}))
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["empty", "truncated", "flipped", "pickle", "missing"])
def test_damaged_checkpoint_gives_one_error_line(interrupted, real_data, how):
    checkpoint = interrupted / "checkpoint" / "checkpoint.npz"
    if how == "missing":
        checkpoint.unlink()
    else:
        damage(checkpoint, how)
    line = one_error_line(d2lres("train", *RUN, "--data-dir", real_data, "--out", interrupted, "--resume"))
    assert (str(checkpoint) if how != "missing" else str(interrupted)) in line
    assert ("--overwrite" if how != "missing" else "without --resume") in line


@pytest.mark.parametrize("how", ["missing", "empty", "truncated", "flipped", "pickle", "folder", "wrong kind"])
def test_damaged_init_gives_one_error_line(reference, real_data, tmp_path, how):
    init = tmp_path / "init.npz"
    if how == "folder":
        init.mkdir()
    elif how == "wrong kind":
        np.savez(init, x=np.zeros(3, np.float32))
    elif how != "missing":
        shutil.copy(reference / "weights.npz", init)
        damage(init, how)
    line = one_error_line(d2lres("train", *RUN, "--data-dir", real_data, "--out", tmp_path / "run",
                                 "--init", init))
    assert str(init) in line


def test_out_naming_a_file_or_below_one(real_data, tmp_path):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        line = one_error_line(d2lres("train", *RUN, "--data-dir", real_data, "--out", out))
        assert str(out) in line and "--out" in line


def test_unwritable_output_gives_one_error_line(real_data, tmp_path):
    from d2lres.util.files import claim_folder
    claim_folder(tmp_path, "train")  # a run folder of d2lres ...
    (tmp_path / "weights.npz").mkdir()  # ... with a folder where the run's weights file belongs
    line = one_error_line(d2lres("train", *RUN, "--epochs", "1", "--limit", "8", "--data-dir", real_data,
                                 "--out", tmp_path))
    assert f"{tmp_path / 'weights.npz'}: Is a directory" in line
    assert temporaries(tmp_path) == []


def test_stale_temporaries_are_removed(reference, tmp_path, real_data):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    stale = [out / ".weights.npz.abc123.tmp", out / "checkpoint" / ".checkpoint.npz.def456.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    done = d2lres("train", *RUN, "--data-dir", real_data, "--out", out, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert temporaries(out) == []


# ------------------------------------------------------------------------------ bad numbers

BAD_NUMBERS = [("--limit", "-5"), ("--limit", "0"), ("--epochs", "0"), ("--epochs", "-1"), ("--epochs", "1.5"),
               ("--batch-size", "0"), ("--lr", "0"), ("--lr", "-0.1"), ("--lr", "nan"), ("--lr", "inf"),
               ("--momentum", "5"), ("--momentum", "1"), ("--momentum", "-0.1"), ("--weight-decay", "-1"),
               ("--resize", "0"), ("--resize", "-28"), ("--seed", "-1"), ("--checkpoint-every", "0")]


@pytest.mark.parametrize("flag,value", BAD_NUMBERS)
def test_bad_numbers_are_refused_by_the_parser(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parser().parse_args(["train", "--backend", "torch", flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err


def test_bad_number_message_on_the_command_line():
    out = d2lres("train", "--backend", "torch", "--momentum", "5", timeout=120)
    assert out.returncode == 2 and "d2lres train: error: argument --momentum: must be a number in [0, 1), got 5" \
        in out.stderr


def test_last_batch_of_one_image_is_refused(real_data, tmp_path):
    line = one_error_line(d2lres("train", *RUN, "--limit", "5", "--data-dir", real_data, "--out", tmp_path))
    assert "1 image" in line and "--batch-size" in line


def test_the_checks_are_one_command_and_compare_takes_only_its_own_options(capsys):
    args = cli.parser().parse_args(["check", "--arch", "resnet50"])
    assert args.func is cli.cmd_check and args.arch == spec.Arch(50)  # parsed once, by its argparse type
    for option in ("--check", "--json=x.json", "--input=1x64x64"):  # check's, not compare's
        with pytest.raises(SystemExit):
            cli.parser().parse_args(["compare", option])
        assert f"unrecognized arguments: {option}" in capsys.readouterr().err


# ---------------------------------------------------------------------------- architectures

def test_train_honours_arch(real_data, tmp_path):
    done = d2lres("train", "--backend", "torch", "--arch", "resnet34", "--resize", "28", "--batch-size", "4",
                  "--limit", "8", "--epochs", "1", "--no-progress", "--data-dir", real_data, "--out", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ResNet-34 in torch" in done.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["arch"] == "ResNet-34" and metrics["run"]["arch"] == "resnet34"
    assert len(weights(tmp_path / "weights.npz")) > 200  # ResNet-18 has 122 entries
