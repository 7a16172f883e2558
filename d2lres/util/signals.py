"""Interrupts as a normal way to stop, in one framework-free place.

:func:`install` (:func:`handled`: first thing in the command line and the per-backend job) turns
SIGINT, SIGTERM and SIGHUP into a request: the training loop asks :func:`requested` at each
step boundary, writes its checkpoint and raises :class:`Interrupted`, which the command line
turns into one line naming where it stopped and how to resume, and exit status 128 + the
signal (130, 143, 129). A second signal stops at once (``os._exit``, no traceback): every
write of d2lres is atomic, so the last checkpoint is whole. A signal that a process was
started with ignored (``nohup``, a background job of a script) stays ignored.

Child processes started by :func:`run_child` live in sessions of their own (a Ctrl-C at the
terminal reaches only this process) and get each signal forwarded exactly once: the training
jobs of ``compare`` and ``train --devices N`` stop as above, the timed processes of ``bench``
and ``profile`` are ended (SIGTERM). A second signal kills them (SIGKILL)."""
from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_signum: int | None = None
_children: dict[int, bool] = {}  # pid -> forward the signal itself (True) or end the process (False)


class Interrupted(BaseException):
    """The run stopped on a signal: ``where`` says where (e.g. ``epoch 1, step 3``), ``detail``
    what was kept, ``resumable`` whether a checkpoint to resume from was written. A
    ``BaseException``, like ``KeyboardInterrupt``: no ``except Exception`` hides it."""

    def __init__(self, signum: int, where: str = "", detail: str = "", resumable: bool = False):
        super().__init__(signum, where, detail)
        self.signum, self.where, self.detail, self.resumable = signum, where, detail, resumable

    @property
    def status(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _handle(signum, frame) -> None:
    global _signum
    if _signum is not None:  # the second signal: stop at once
        for pid in list(_children):
            _kill(pid, signal.SIGKILL)
        os.write(2, f"\nd2lres: stopped at once ({signal.Signals(signum).name} again); the last checkpoint "
                    f"is kept\n".encode())
        os._exit(128 + signum)
    _signum = signum
    for pid, forward in list(_children.items()):
        _kill(pid, signum if forward else signal.SIGTERM)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP as requests to stop (those not ignored); main thread only."""
    for s in SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _handle)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """:func:`install` for the block (in the main thread; elsewhere nothing changes), then the
    previous handlers again and no request pending: a command called in-process leaves no trace."""
    global _signum
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    install()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _signum = None


def requested() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _signum


def check(where: str = "", detail: str = "", resumable: bool = False) -> None:
    """Raise :class:`Interrupted` if a signal asked to stop."""
    if _signum is not None:
        raise Interrupted(_signum, where, detail, resumable)


def die_with_parent(parent: int | None = None) -> None:
    """Be killed when the parent process dies (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing): a
    process in a session of its own is not reached by a kill of its parent's group. ``parent``:
    the expected parent's pid; if it died already, exit at once."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() == 1 or (parent is not None and os.getppid() != parent):  # it died before prctl
        os._exit(1)


def run_child(argv: list[str], *, forward: bool = True, started=None, **popen) -> int:
    """Run ``argv`` to its end in a session of its own and return its exit status; each signal
    this process gets is forwarded to it (``forward``) or ends it (SIGTERM), and it is killed if
    this process is (kill -9 of the command's group does not reach a session of its own);
    ``started()`` is called once it runs (e.g. to close the parent's end of a pipe it holds). Raises
    :class:`Interrupted` before starting it if a signal came already."""
    check(detail="stopped before its next process started; nothing more written")
    parent = os.getpid()
    proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=lambda: die_with_parent(parent), **popen)
    _children[proc.pid] = forward
    try:
        if started is not None:
            started()
        if _signum is not None:  # came between the check and the registration
            _kill(proc.pid, _signum if forward else signal.SIGTERM)
        return proc.wait()
    except BaseException:
        _kill(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        _children.pop(proc.pid, None)


def command(argv: list[str], add: tuple[str, ...] = (), drop: tuple[str, ...] = ("--overwrite",)) -> str:
    """The ``d2lres`` command line ``argv`` (without the program), less ``drop``, plus ``add``."""
    args = [a for a in argv if a not in drop]
    return shlex.join(["d2lres", *args, *(a for a in add if a not in args)])


def report(err: Interrupted, argv: list[str] | None = None, stream=None) -> int:
    """Print the one line of an interrupted command and return its exit status."""
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0] if argv else ""
    line = f"d2lres: interrupted by {err.name}"
    if err.where:
        line += f" at {err.where}"
    if err.detail:
        line += f"; {err.detail}"
    if err.resumable and name in ("train", "compare"):  # compare resumes its runs by itself
        line += f"; resume with: {command(argv, add=('--resume',) if name == 'train' else ())}"
    print(line, file=stream or sys.stderr, flush=True)
    return err.status
