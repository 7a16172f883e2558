"""One way to run d2lres's work in a fresh process: a training run (``d2lres compare``, ``d2lres
train --devices``), a timed bench or profile worker, a data-parallel check.

A job is a JSON object passed as the last argument of ``python [LAUNCHER] -m MODULE JOB``
(:func:`command`); the module reads it back with :func:`read` and writes its result as a JSON file,
atomically (:func:`write_result`), which the caller reads with :func:`read_result`. Its environment
is this process's with the job's additions on top (:func:`environment`). :func:`run` starts it
through ``signals.run_child``, so an interrupt reaches it and it never outlives the caller.

A job whose caller reports its errors (a training run: ``d2lres train --devices``, each backend of
``d2lres compare``) names an :data:`ERROR_FILE`; :func:`main` runs the module's work and writes there
its one error line (:func:`failure` reads it back) or where it stopped (:func:`stopped_at`).
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Callable

from ..errors import UserError, report_errors
from . import files, signals


class JobError(UserError, ValueError):
    """A module's command line holds no job that :func:`command` wrote."""


#: The key of a job's error file (see the module's docstring).
ERROR_FILE = "error_file"


def command(module: str, job: dict | str, *, launcher: tuple[str, ...] = (), args: tuple[str, ...] = ()) -> list[str]:
    """``python [launcher ...] -m module [args ...] JOB``; ``launcher``: Python's options, or a
    launcher's module and options (e.g. ``("-m", "d2lres.torch.launch", "--nproc-per-node=2")``)
    that starts the module itself; ``args``: the module's subcommand."""
    return [sys.executable, *launcher, "-m", module, *args, job if isinstance(job, str) else json.dumps(job)]


def environment(*layers: dict | None) -> dict[str, str]:
    """This process's environment with ``layers`` applied in order (later ones win)."""
    env = dict(os.environ)
    for layer in layers:
        env.update(layer or {})
    return env


def run(module: str, job: dict | str, *, env: dict | None = None, launcher: tuple[str, ...] = (),
        forward: bool = True, **popen) -> int:
    """Run the job to its end and return its exit status (``signals.run_child``: a signal to this
    process is forwarded to it, or ends it where ``forward`` is false). ``env``: the whole
    environment (:func:`environment`); default this process's."""
    return signals.run_child(command(module, job, launcher=launcher), forward=forward,
                             env=environment() if env is None else env, **popen)


def read(argv: list[str]) -> dict:
    """The job on a module's command line (its first argument), as the object :func:`command`
    wrote; :class:`JobError` if it is not one."""
    try:
        job = json.loads(argv[0]) if argv else None
    except (ValueError, RecursionError) as err:
        raise JobError(f"the job is not JSON ({err}); d2lres's commands start their jobs themselves") from None
    if not isinstance(job, dict):
        raise JobError(f"the job is a JSON {type(job).__name__}, not an object; d2lres's commands start their "
                       f"jobs themselves")
    return job


def write_result(path, result) -> Path:
    """Write a job's result as JSON, atomically (a reader sees all of it or nothing)."""
    return files.atomic_write_text(path, json.dumps(result, indent=1))


def read_result(path):
    """A result that :func:`write_result` wrote."""
    return json.loads(Path(path).read_text())


def run_worker(module: str, job: dict, label: str, env: dict, launcher: tuple[str, ...] = ()) -> dict:
    """A worker job whose result goes to ``job["out"]`` (the bench's and the profile's timed
    processes): says ``label`` as it starts and how long it took, ends it (rather than forward a
    signal: a timed process has nothing to keep), raises ``CalledProcessError`` if it failed and
    returns its result."""
    import subprocess
    import time
    print(f"== {label}", flush=True)
    tic = time.perf_counter()
    status = run(module, job, env=env, launcher=launcher, forward=False)
    signals.check(label, "its timed process was ended; no report written")
    if status:
        raise subprocess.CalledProcessError(status, f"{module} {label}")
    print(f"   done in {time.perf_counter() - tic:.0f} s", flush=True)
    return read_result(job["out"])


def main(argv: list[str], work: Callable[[object], int], *, writes: bool = True) -> int:
    """``python -m MODULE JOB`` for a job whose caller reports its errors: the job read once (the
    JSON value; text that is not JSON as it is, for ``work``'s own message), then ``work(job)``. Its
    error: one ``d2lres: error:`` line on stderr, or into the job's :data:`ERROR_FILE` (for
    :func:`failure`); an interrupt: its line on stderr, or where it stopped into that file (for
    :func:`stopped_at`; ``writes``: this process writes it, one of a multi-process run does not)."""
    text = argv[0] if argv else ""
    try:
        job = json.loads(text)
    except (ValueError, RecursionError):
        job = text
    if isinstance(job, str):  # not JSON, or a JSON string: the text, for work's own message
        job = text
    error_file = job.get(ERROR_FILE) if isinstance(job, dict) else None
    error_file = error_file if isinstance(error_file, str) else None
    message = io.StringIO()
    with signals.handled():
        try:
            status = report_errors(work, job, stream=message if error_file is not None else None)
        except signals.Interrupted as err:  # its caller says how to resume
            if error_file is None:
                return signals.report(err, ["job"])
            if writes:
                stopped = {"where": err.where, "detail": err.detail, "resumable": err.resumable}
                files.atomic_write_text(error_file, json.dumps({"interrupted": stopped}))
            return err.status
    if status and error_file is not None:
        files.atomic_write_text(error_file, message.getvalue())
    return status


def failure(error_file: str | os.PathLike) -> str:
    """The error line a failed job wrote to its error file (:func:`main`), without ``d2lres: error:``;
    empty if it wrote none."""
    path = Path(error_file)
    return path.read_text().strip().removeprefix("d2lres: error: ") if path.exists() else ""


def stopped_at(error_file: str | os.PathLike) -> tuple[str, str, bool]:
    """``(where, what was kept, resumable)`` that an interrupted job wrote to its error file (:func:`main`)."""
    try:
        stopped = json.loads(Path(error_file).read_text())["interrupted"]
        return str(stopped["where"]), str(stopped["detail"]), bool(stopped["resumable"])
    except (OSError, ValueError, TypeError, KeyError):
        return "", "", False
