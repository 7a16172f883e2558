"""Validate, then act: the one order of the commands that write a run folder (``d2lres train``,
``d2lres compare`` and each of its backends' runs).

1. The folder, reading only (``files.inspect_folder``): its kind, what it holds, that it can be
   written, that no other run holds it.
2. The inputs: the settings, ``--init``, the data (fetched into the data folder, which is the data's
   own: ``d2lres.data.fetch_fashion_mnist`` validates before it writes there), the run's identity,
   memory. They write nothing into the run folder.
3. The folder's state against the run (a run there, ``--resume``, ``--overwrite``, another run's
   identity), reading only: a :class:`Plan`.
4. Only then the folder is created, marked and locked (:func:`run_folder`), step 3 runs again under
   the lock (another process may have changed the folder in between), and the files the plan
   replaces (``--overwrite``) are removed, just before the run writes.

A command refused at any step leaves the disk as it was: no new folder, no removed or rewritten file.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import UserError
from . import files

LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoint"


class RunError(UserError, ValueError):
    """A run cannot start or go on as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Plan:
    """What step 3 found: the files and folders an ``--overwrite`` removes before the run writes, and
    what the command needs to know about the folder's state (``found``: e.g. a finished run's metrics)."""
    remove: tuple[Path, ...] = ()
    found: Any = None


@contextlib.contextmanager
def validated(out: str | os.PathLike, kind: str, inputs: Callable[[], Any],
              state: Callable[[Path, Any], Plan], *, writer: bool = True) -> Iterator[tuple[Path, Any, Plan]]:
    """Steps 1 to 4 for the ``kind`` run folder ``out``: ``inputs()`` checks and loads the inputs
    (its value is yielded), ``state(folder, value)`` checks the folder's state and returns the
    :class:`Plan`. Yields ``(folder, value, plan)`` with the folder created and locked for the
    duration and the plan's files removed. ``writer=False`` (a process of a data-parallel run other than
    rank 0) checks the same, but neither creates, locks nor removes anything."""
    try:
        out = files.inspect_folder(out, kind)
    except files.FolderError as err:
        raise RunError(str(err)) from None
    if writer:  # rank 0 of a data-parallel run may hold it already
        refuse_if_held(out)
    value = inputs()
    plan = state(out, value)
    if not writer:
        yield out, value, plan
        return
    with run_folder(out, kind) as out:
        plan = state(out, value)
        for path in plan.remove:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        yield out, value, plan


def refuse_if_held(out: Path) -> None:
    """Refuse now, without creating or writing anything, if another live run holds ``out``."""
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file: no run has held the folder, or it cannot be read (step 4 says so)
        return
    try:
        _lock(fd, out)
    finally:
        os.close(fd)


def _lock(fd: int, out: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise RunError(f"the run folder {out} is in use by another run (pid {_holder(fd)}); wait for it "
                       f"to end or choose another --out") from None


@contextlib.contextmanager
def run_folder(out: str | os.PathLike, kind: str = "train") -> Iterator[Path]:
    """Create and own the folder ``out`` for the duration: a ``kind`` run folder of d2lres
    (``files.claim_folder``: new, empty or already such a run, and marked so), an exclusive
    ``flock`` on ``out/.lock`` (holding this process's pid; the kernel drops it when the process
    ends, however it ends), stale temporary files removed. Raises :class:`RunError` if ``out`` is not
    d2lres's to write, cannot be created or written, or another run holds it."""
    try:
        out = files.claim_folder(out, kind)
    except files.FolderError as err:
        raise RunError(str(err)) from None
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise RunError(f"cannot use {out} as a run folder ({err.strerror or err}); choose another --out "
                       f"or make it writable") from None
    try:
        _lock(fd, out)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for folder in (out, out / CHECKPOINT_DIR):
            files.remove_stale_temporaries(folder)
        yield out
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """The pid the lock's holder wrote (it writes it just after taking the lock)."""
    for _ in range(20):
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if pid:
            return pid
        time.sleep(0.05)
    return "unknown"
