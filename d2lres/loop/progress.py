"""One progress bar across the backends of ``d2lres compare``, and the time it expects to take.

Each backend trains in its own process; the process named in :data:`PROGRESS_FD` writes one
line per training step to that pipe instead of drawing its own bar. :class:`AcrossBackends`
reads the pipes, advances one bar over every backend's steps, and says at the start how long
the whole job should take, from the first backend's measured steps (after its warm-up: graph
compilation makes the first steps slow)."""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

from tqdm.auto import tqdm

#: Environment variable: the file descriptor a training process reports its steps to.
PROGRESS_FD = "D2LRES_PROGRESS_FD"
#: Steps left out of the estimate (compilation, caches), then steps timed for it.
WARMUP_STEPS, TIMED_STEPS = 10, 10


def step_reporter() -> Callable[[], None] | None:
    """In a training process started by :class:`AcrossBackends`: a function to call after each
    step; None when no one asked for the steps."""
    fd = os.environ.get(PROGRESS_FD)
    if not fd:
        return None
    try:
        pipe = os.fdopen(int(fd), "w", buffering=1)
    except OSError:  # a launcher in between (torchrun) closed it for us but holds it open itself
        try:
            pipe = open(f"/proc/{os.getppid()}/fd/{int(fd)}", "w", buffering=1)
        except OSError:
            return None
    return lambda: pipe.write("1\n")


def expectation(seconds_per_step: float, total_steps: int, backend: str, backends: int) -> str:
    seconds = seconds_per_step * total_steps
    duration = f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
    return (f"expected: about {duration} of training for {backends} backend(s) "
            f"({seconds_per_step:.2f} s per step measured in {backend}; the bar's estimate follows each backend)")


class AcrossBackends:
    """``with AcrossBackends(steps, enabled) as bar: env = bar.start(name); ...; bar.finish()``.
    ``steps``: backend name -> training steps it will take."""

    def __init__(self, steps: dict[str, int], enabled: bool = True):
        self.steps, self.enabled = steps, enabled
        self.bar = tqdm(total=sum(steps.values()), disable=not enabled, unit="step", desc="training",
                        mininterval=1.0, dynamic_ncols=True)
        self.estimated = False
        self._reader: threading.Thread | None = None

    def __enter__(self) -> "AcrossBackends":
        return self

    def __exit__(self, *exc) -> None:
        self.finish()
        self.bar.close()

    def start(self, backend: str) -> tuple[dict[str, str], tuple[int, ...]]:
        """Environment and file descriptors to pass to ``backend``'s process (``pass_fds``)."""
        self.finish()
        if not self.enabled:
            return {}, ()
        read_fd, write_fd = os.pipe()
        self._write_fd = write_fd
        self.bar.set_description(f"training {backend}")
        self._reader = threading.Thread(target=self._read, args=(read_fd, backend), daemon=True)
        self._reader.start()
        return {PROGRESS_FD: str(write_fd)}, (write_fd,)

    def started(self) -> None:
        """Call once the process has started: the parent's copy of the pipe is closed, so the
        reader ends when the process does."""
        if self.enabled:
            os.close(self._write_fd)

    def finish(self) -> None:
        """Wait for the current backend's reader (its process has ended)."""
        if self._reader is not None:
            self._reader.join()
            self._reader = None

    def _read(self, fd: int, backend: str) -> None:
        count, tic = 0, None
        with os.fdopen(fd) as pipe:
            for _ in pipe:
                count += 1
                self.bar.update(1)
                if count == WARMUP_STEPS:
                    tic = time.perf_counter()
                elif not self.estimated and tic is not None and count == WARMUP_STEPS + TIMED_STEPS:
                    self.estimated = True
                    per_step = (time.perf_counter() - tic) / TIMED_STEPS
                    self.bar.write(expectation(per_step, sum(self.steps.values()), backend, len(self.steps)))
