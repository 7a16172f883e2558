"""What surrounds the training loop (``d2lres.loop.engine``), one :class:`Callback` each: the
progress bar, the expected time, a step reporter, checkpoints and resume, a stop on a signal, a stop
after some steps, the curves, and d2l's printed lines."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from ..errors import TrainingError, UserValueError
from ..util import signals
from .checkpoints import (
    CHECKPOINT,
    CHECKPOINT_FIX,
    identity_differences,
    load_checkpoint,
    resume_point,
    save_checkpoint,
)
from .engine import Callback, Loop

#: Steps timed (after the first, which compiles) for the expected time of the whole run.
ETA_STEPS = 3


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``2.1 days``."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}" if unit in ("days", "h") else f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


class ProgressBar(Callback):
    """A bar per epoch, with the running loss and accuracy."""

    bar = None

    def on_epoch_begin(self, loop: Loop) -> None:
        self.bar = tqdm(total=loop.steps_per_epoch, initial=loop.step_in_epoch,
                        desc=f"{loop.trainer.backend} epoch {loop.epoch + 1}/{loop.num_epochs}",
                        leave=False, unit="batch", mininterval=1.0)

    def on_step_end(self, loop: Loop) -> None:
        self.bar.update(1)
        if loop.recorded:
            acc = loop.acc
            self.bar.set_postfix(loss=f"{acc['loss'] / acc['n']:.3f}", acc=f"{acc['correct'] / acc['n']:.3f}")

    def on_test_begin(self, loop: Loop) -> None:
        self.close()

    def on_stop(self, loop: Loop) -> None:
        self.close()

    def on_exception(self, loop: Loop, error: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ExpectedTime(Callback):
    """The expected time of the whole run, said once, from :data:`ETA_STEPS` steps timed after the
    first (a run of so few steps says nothing)."""

    def on_step_end(self, loop: Loop) -> None:
        if loop.total_steps <= ETA_STEPS + 1:
            return
        if loop.steps_this_call == 1:
            self.tic = time.perf_counter()
        elif loop.steps_this_call == ETA_STEPS + 1:
            per_step = (time.perf_counter() - self.tic) / ETA_STEPS
            left = loop.total_steps - loop.epoch * loop.steps_per_epoch - loop.step_in_epoch
            tqdm.write(f"expected time of the whole run: about {duration(per_step * loop.total_steps)} "
                       f"({loop.total_steps:,} steps at {per_step:.2f} s, {duration(per_step * left)} left; "
                       f"evaluation after each epoch not included)")


class ReportSteps(Callback):
    """``report()`` after each step (``d2lres compare``'s bar across backends: ``d2lres.loop.progress``)."""

    def __init__(self, report: Callable[[], None]):
        self.report = report

    def on_step_end(self, loop: Loop) -> None:
        self.report()


class Checkpoints(Callback):
    """The checkpoint in ``directory`` (weights, momentum, the loop's progress and the run's
    ``identity``), written atomically every ``every`` steps, at each epoch's end and on a stop;
    ``resume``: the loop continues from it exactly (refused if its identity differs).
    ``write=False`` (a process of a multi-process run other than rank 0) reads it to resume and
    writes nothing; ``verbose``: says where it resumes."""

    def __init__(self, directory, *, every: int = 100, resume: bool = False, identity: dict | None = None,
                 write: bool = True, verbose: bool = True):
        self.directory, self.every, self.resume = Path(directory), every, resume
        self.identity, self.write, self.verbose = identity, write, verbose

    def on_train_begin(self, loop: Loop) -> None:
        if self.write:
            loop.checkpoint_dir = self.directory
        found = load_checkpoint(self.directory) if self.resume else None
        if found is None:
            return
        path = self.directory / CHECKPOINT
        weights, state, saved = found
        differences = identity_differences(saved.get("identity"), self.identity) if self.identity is not None else []
        if differences:
            raise TrainingError(f"cannot resume from {path}, it belongs to another run: " + "; ".join(differences))
        if saved["step_in_epoch"] > loop.steps_per_epoch:
            raise TrainingError(f"cannot resume from {path}: it stopped after batch {saved['step_in_epoch']} of an "
                                f"epoch, but this data has {loop.steps_per_epoch} batches per epoch (another batch "
                                f"size or data slice?)")
        try:
            loop.trainer.set_weights(weights)
            bad = [k for k, v in state.items() if not np.isfinite(v).all()]
            if bad:
                raise UserValueError(f"{bad[0]}: values NaN or infinite")
        except ValueError as err:
            raise TrainingError(f"checkpoint {path}: {err}; {CHECKPOINT_FIX}") from None
        loop.trainer.load_optimizer_state(state)
        loop.history, loop.acc = saved["history"], saved["acc"]
        loop.epoch, loop.step_in_epoch = saved["epoch"], saved["step_in_epoch"]
        if self.verbose and self.write:
            where = resume_point(loop.epoch, loop.step_in_epoch, loop.num_epochs, loop.steps_per_epoch)
            print(f"resuming from {path}: {where}")

    def on_step_end(self, loop: Loop) -> None:
        if loop.step_in_epoch < loop.steps_per_epoch and loop.step_in_epoch % self.every == 0:
            loop.lap()
            self.save(loop)

    def on_epoch_end(self, loop: Loop) -> None:
        self.save(loop)

    def on_stop(self, loop: Loop) -> None:
        self.save(loop)

    def save(self, loop: Loop) -> None:
        if self.write:
            save_checkpoint(self.directory, loop.trainer, {"history": loop.history, "acc": loop.acc,
                                                           "epoch": loop.epoch, "step_in_epoch": loop.step_in_epoch,
                                                           "identity": self.identity})


class StopOnSignal(Callback):
    """A stop that ``d2lres.util.signals`` handles (SIGINT, SIGTERM in the command line) ends the
    loop after the current step, or at an epoch's end, as ``signals.Interrupted`` (agreed by every
    process of a data-parallel run: the trainer's ``agree_stop``); the checkpoint callback before
    this one writes the checkpoint it names."""

    def on_step_end(self, loop: Loop) -> None:
        self._check(loop, f"epoch {loop.epoch + 1}, step {loop.step_in_epoch} of {loop.steps_per_epoch}")

    def on_epoch_end(self, loop: Loop) -> None:
        if loop.epoch < loop.num_epochs:
            self._check(loop, f"the end of epoch {loop.epoch}")

    @staticmethod
    def _check(loop: Loop, where: str) -> None:
        agree = getattr(loop.trainer, "agree_stop", None)
        signum = agree(signals.requested()) if agree is not None else signals.requested()
        if signum:
            loop.request_stop(lambda loop: signals.Interrupted(
                signum, where, "" if loop.checkpoint_dir is None else
                f"checkpoint written to {loop.checkpoint_dir / CHECKPOINT}", loop.checkpoint_dir is not None))


class StopAfter(Callback):
    """Stop after ``steps`` steps of this call (to simulate an interruption)."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, loop: Loop) -> None:
        if loop.steps_this_call >= self.steps:
            loop.request_stop()


class Curves(Callback):
    """The loss and accuracy curves after each epoch, shown in a notebook or saved to ``path``
    (``d2lres.loop.plots``), headed by ``title``."""

    def __init__(self, path=None, title: str | None = None):
        self.path, self.title = path, title

    def on_epoch_end(self, loop: Loop) -> None:
        from .plots import show_or_save_curves
        show_or_save_curves({loop.trainer.backend: loop.history}, self.path, title=self.title)


class D2lLines(Callback):
    """d2l's two closing lines: the last epoch's loss and accuracies, and examples/sec on the device
    (in the framework's own spelling, as d2l prints it)."""

    def on_train_end(self, loop: Loop) -> None:
        last = loop.history["epochs"][-1] if loop.history["epochs"] else None
        if last:
            device = getattr(loop.trainer, "device_label", None) or loop.trainer.device
            print(f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, test acc {last['test_acc']:.3f}")
            print(f"{last['images_per_s']:.1f} examples/sec on {device}")
