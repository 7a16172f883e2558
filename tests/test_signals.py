"""Interrupts as a normal way to stop (issue 24): real SIGINT / SIGTERM sent to real ``d2lres``
processes. A stopped ``train`` writes its checkpoint, releases its folder, prints one line with
the command that resumes it and exits 130 / 143; resuming gives the uninterrupted run's weights
bit for bit (PyTorch, a second backend, and PyTorch on two devices through torchrun). A second
Ctrl-C stops at once; ``compare`` and ``profile`` end every process they started."""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from d2lres import cli, training
from d2lres.host import backends
from helpers import COMMAND_TIMEOUT, d2lres_cli, run_weights

#: One epoch of 8 batches of 32 at 28 px, a checkpoint after every step (8, so that a loaded machine
#: does not finish the epoch before the signal: MXNet's steps return before their work is done).
RUN = ["--resize", "28", "--epochs", "1", "--batch-size", "32", "--limit", "256", "--lr", "0.01",
       "--momentum", "0.9", "--schedule", "constant", "--checkpoint-every", "1", "--no-progress"]
#: The second backend: MXNet where it is installed (the quickest to start), else TensorFlow.
SECOND = "mxnet" if "mxnet" in backends.available() else "tf"
#: Real processes trained and signalled: the whole suite runs them, alone after the other tests
#: (serial: each signal is timed against a running training); the current set's fast run, whose
#: frameworks this logic does not depend on, leaves them out.
pytestmark = [pytest.mark.slow, pytest.mark.serial]


def start(*args) -> subprocess.Popen:
    """``d2lres ARGS`` in a session of its own (a signal reaches only it, as Ctrl-C at a terminal
    reaches the foreground command), SIGINT's default restored (a background job of a script
    starts with it ignored, which d2lres, as any program, leaves ignored)."""
    return subprocess.Popen([sys.executable, "-m", "d2lres", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = COMMAND_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)


def stopped(proc: subprocess.Popen, signum: int) -> tuple[str, str]:
    """The process's output; it exited with 128 + ``signum`` and one ``interrupted`` line, no traceback."""
    out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 128 + signum, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("d2lres: interrupted by")]
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0], err[-3000:]
    return out, lines[0]


def assert_released(folder: Path) -> None:
    """No process holds the run folder's lock any more."""
    with open(folder / ".lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def resume_command(line: str) -> list[str]:
    """The command the interrupted line names, as argv for this interpreter."""
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[0] == "d2lres"
    return command[1:]


def assert_same_run(a: Path, b: Path) -> None:
    """The same weights bit for bit and the same losses."""
    got, want = run_weights(a), run_weights(b)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    points = [json.loads((p / "metrics.json").read_text())["history"]["points"] for p in (a, b)]
    assert points[0] == points[1]


#: SIGTERM on one device (a second backend), SIGINT on two (PyTorch through torchrun, each of whose
#: processes stops through the one-device code).
@pytest.mark.parametrize("backend,signum,devices", [(SECOND, signal.SIGTERM, 1), ("torch", signal.SIGINT, 2)])
def test_interrupted_train_resumes_exactly(real_data, tmp_path, backend, signum, devices):
    run = ["train", "--backend", backend, *RUN, "--data-dir", real_data, "--devices", devices]
    reference = tmp_path / "reference"
    args = cli.parser().parse_args([str(a) for a in (*run, "--out", reference)])
    assert args.func(args) == 0  # in this process: one framework start-up fewer
    out = tmp_path / "run"
    proc = start(*run, "--out", out)
    wait_for(out / "checkpoint" / training.CHECKPOINT, proc)
    proc.send_signal(signum)
    _, line = stopped(proc, signum)
    assert "at epoch 1, step " in line and f"checkpoint written to {out / 'checkpoint' / training.CHECKPOINT}" \
        in line, line
    assert int(line.split("step ")[1].split()[0]) < 8, line  # stopped before the end
    assert_released(out)
    assert not (out / "metrics.json").exists()
    command = resume_command(line)
    assert command[-1] == "--resume" and command[:-1] == [str(a) for a in run + ["--out", out]]
    done = d2lres_cli(*command)
    assert "resuming from" in done.stdout
    assert_same_run(out, reference)


def test_second_ctrl_c_stops_at_once_and_keeps_the_checkpoint(real_data, tmp_path):
    out = tmp_path / "run"
    proc = start("train", "--backend", "torch", *RUN, "--data-dir", real_data, "--out", out)
    checkpoint = out / "checkpoint" / training.CHECKPOINT
    wait_for(checkpoint, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert "stopped at once" in err or "d2lres: interrupted by SIGINT" in err, err[-3000:]
    assert training.load_checkpoint(checkpoint.parent) is not None  # whole
    assert_released(out)


def test_interrupted_compare_ends_every_process_and_says_which_finished(real_data, tmp_path):
    out = tmp_path / "compare"
    proc = start("compare", "--backends", "torch", SECOND, *RUN[:-3], "--no-progress", "--data-dir", real_data,
                 "--out", out)
    lock = out / SECOND / ".lock"
    wait_for(lock, proc)
    child = int(lock.read_text())
    proc.send_signal(signal.SIGTERM)
    _, line = stopped(proc, signal.SIGTERM)
    assert f"at {SECOND}'s epoch 1, step " in line or f"at {SECOND}" in line, line
    assert "finished: torch" in line and "not started: none" in line and "resume with: d2lres compare" in line, line
    assert "--resume" not in line.split("resume with: ")[1]
    assert_gone(child)
    assert_released(out / SECOND)
    assert_released(out)
    assert (out / "torch" / "metrics.json").exists() and not (out / "report.md").exists()


def test_interrupted_profile_writes_nothing_and_ends_its_timed_process(tmp_path):
    out = tmp_path / "profile"
    proc = start("profile", "--quick", "--backends", "torch", "--out", out)
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while not set(_processes_naming(out)) - {proc.pid}:  # the timed process (its job names the folder)
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    time.sleep(1.0)  # let it import the framework and start timing
    proc.send_signal(signal.SIGINT)
    _, line = stopped(proc, signal.SIGINT)
    assert "no report written" in line or "nothing more written" in line, line
    assert not _processes_naming(out)
    assert not [p for p in out.iterdir() if p.name.startswith("profile.")]


def _processes_naming(path: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass
    return found
