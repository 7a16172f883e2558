"""The training loop's public path: :func:`fit` and d2l's :func:`train_ch6`, two front ends of the
loop all backends share (``d2lres.loop.engine``) choosing its callbacks (``d2lres.loop.callbacks``),
and the schedule :func:`one_cycle`. A backend supplies a ``Trainer`` (``d2lres.loop.trainer``) with
``step(X, y, lr)``, ``predict(X)``, ``get_weights``/``set_weights`` and
``optimizer_state``/``load_optimizer_state``. The checkpoint's functions are
``d2lres.loop.checkpoints``', re-exported here."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from .core import compat
from .errors import TrainingError  # noqa: F401 (the loop's error, re-exported)
from .loop.callbacks import (
    Checkpoints,
    Curves,
    D2lLines,
    ExpectedTime,
    ProgressBar,
    ReportSteps,
    StopAfter,
    StopOnSignal,
)
from .loop.checkpoints import (  # noqa: F401 (re-exported: see the docstring)
    CHECKPOINT,
    identity_differences,
    load_checkpoint,
    read_identity,
    resume_point,
    save_checkpoint,
)
from .loop.engine import Loop, num_batches  # noqa: F401 (num_batches re-exported)
from .loop.trainer import identity as network_identity


def one_cycle(lr_max: float, total_steps: int, warmup: float = 0.3) -> Callable[[int], float]:
    """Learning rate per step: linear warm-up from ``lr_max / 25`` over ``warmup`` of the steps,
    then cosine annealing to ``lr_max / 1e4``."""
    warm = max(1, int(round(warmup * total_steps)))

    def lr(step: int) -> float:
        if step < warm:
            return lr_max / 25 + (lr_max - lr_max / 25) * step / warm
        t = (step - warm) / max(1, total_steps - warm)
        return lr_max / 1e4 + (lr_max - lr_max / 1e4) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return lr


def fit(trainer, train_iter, test_iter, num_epochs: int, lr: float | Callable[[int], float], *,
        checkpoint_dir: str | Path | None = None, resume: bool = False, checkpoint_every: int = 100,
        progress: bool | Callable[[], None] = True, plot: bool = True, curves_path: str | Path | None = None,
        verbose: bool = True, stop_after: int | None = None, identity: dict | None = None,
        title: str | None = None, write: bool = True) -> dict:
    """Train for ``num_epochs``; ``lr`` is a constant or a function of the global step.
    ``progress``: True draws a bar per epoch; a function is called after each step instead (the
    bar across backends of ``d2lres compare``, see ``d2lres.loop.progress``).

    ``train_iter`` / ``test_iter`` are d2lres's batches or any re-iterable of ``(X, y)`` with a
    length that the backend's ``Trainer`` takes (the framework's own data loader). Resuming
    continues exactly where the batch order is seeded per epoch (d2lres's batches, which have
    ``set_epoch``); another loader is resumed by skipping the batches already trained.

    Returns the history: per-epoch rows, train loss/accuracy points (every ~1/10 epoch), test
    accuracy per epoch, the first step's loss, images/s. With ``checkpoint_dir`` a checkpoint
    (weights, momentum, progress) is written atomically every ``checkpoint_every`` steps and at
    each epoch's end, and ``resume=True`` continues from it exactly. ``identity`` (a JSON-able
    dict: backend, architecture, settings, data) is recorded in the checkpoint, and resuming a
    checkpoint whose identity differs raises ``TrainingError`` naming each difference.
    ``stop_after`` stops after that many steps in this call (to simulate an interruption);
    ``title`` heads the curves. ``write=False`` (the other processes of a multi-process run, whose
    rank 0 writes) reads the checkpoint to resume but writes no checkpoint or curves. A stop that
    ``d2lres.util.signals`` handles (SIGINT, SIGTERM in the command line) ends the call after the
    current step, with a checkpoint, as ``signals.Interrupted`` (agreed by every process of a
    data-parallel run: the trainer's ``agree_stop``).

    The loop with the callbacks these options choose (``d2lres.loop.callbacks``); :func:`callbacks`
    gives them."""
    chosen = callbacks(checkpoint_dir=checkpoint_dir, resume=resume, checkpoint_every=checkpoint_every,
                       progress=progress, plot=plot, curves_path=curves_path, verbose=verbose, stop_after=stop_after,
                       identity=identity, title=title, write=write)
    return Loop(trainer, train_iter, test_iter, num_epochs, lr).run(chosen)


def callbacks(*, checkpoint_dir=None, resume: bool = False, checkpoint_every: int = 100,
              progress: bool | Callable[[], None] = True, plot: bool = True, curves_path=None, verbose: bool = True,
              stop_after: int | None = None, identity: dict | None = None, title: str | None = None,
              write: bool = True) -> list:
    """The callbacks of :func:`fit`'s options, in the order the loop calls them."""
    chosen = []
    if progress is True:
        chosen.append(ProgressBar())
        if verbose and write:
            chosen.append(ExpectedTime())
    elif callable(progress):
        chosen.append(ReportSteps(progress))
    if checkpoint_dir is not None:
        chosen.append(Checkpoints(checkpoint_dir, every=checkpoint_every, resume=resume, identity=identity,
                                  write=write, verbose=verbose))
    if plot and write:
        chosen.append(Curves(curves_path, title))
    chosen.append(StopOnSignal())
    if stop_after is not None:
        chosen.append(StopAfter(stop_after))
    if verbose and write:
        chosen.append(D2lLines())
    return chosen


def train_ch6(net, make_trainer, reinitialize, train_iter, test_iter, num_epochs: int, lr: float,
              **fit_options) -> dict:
    """d2l's ``train_ch6`` for any backend: ``reinitialize()`` (the backend's d2l rule) for a
    network that is not d2lres's -- d2lres's own keep their weights (its seeded scheme, which the
    same-function comparisons start from) --, then ``make_trainer()``, the line
    ``training on <device>`` and :func:`fit` at the constant ``lr`` (which prints d2l's two
    summary lines and draws the curves). A ``checkpoint_dir`` without an ``identity`` gets the
    network's (``d2lres.loop.trainer.identity``). Returns the history."""
    if not compat.is_d2lres_net(net):
        reinitialize()
    trainer = make_trainer()
    if fit_options.get("verbose", True):
        print(f"training on {getattr(trainer, 'device_label', None) or trainer.device}")
    if fit_options.get("checkpoint_dir") is not None and fit_options.get("identity") is None:
        fit_options["identity"] = network_identity(net, trainer.get_weights())
    return fit(trainer, train_iter, test_iter, num_epochs, lr, **fit_options)
