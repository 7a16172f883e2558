"""The training loop, framework-free: epochs of steps on a backend's ``Trainer``
(``d2lres.loop.trainer``), evaluation after each epoch, and the history of the run. Everything
around it -- progress, expected time, checkpoints and resume, signals, curves, d2l's printed
lines -- is a :class:`Callback` that the loop calls at its hooks (``d2lres.loop.callbacks``);
each front end (``d2lres.training.fit`` and ``train_ch6``, ``d2lres.run``) chooses its own."""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from ..errors import TrainingError, UserValueError
from ..host.devices import describe
from .checkpoints import kept


def to_numpy(value) -> np.ndarray:
    """A framework's tensor (PyTorch, TensorFlow, MXNet, JAX) or an array as a numpy array."""
    for method in ("asnumpy", "numpy"):  # MXNet; PyTorch and TensorFlow
        if hasattr(value, method):
            return getattr(value, method)()
    return np.asarray(value)


def num_batches(data_iter) -> int:
    """Batches per epoch of a data loader; a clear error for one without a length."""
    try:
        return len(data_iter)
    except TypeError:
        raise UserValueError(f"the training data must know its number of batches, and this "
                             f"{type(data_iter).__name__} does not; pass a finite loader (for tf.data: "
                             f"from_tensor_slices(...).batch(n), or .apply(tf.data.experimental.assert_cardinality(n)))"
                             ) from None


def evaluate_accuracy(trainer, data_iter) -> float:
    """Eval-mode accuracy over ``data_iter``."""
    correct = total = 0
    for X, y in data_iter:
        logits = trainer.predict(X)
        labels = to_numpy(y).reshape(-1)
        correct += int((logits.argmax(axis=1) == labels).sum())
        total += labels.size
    return correct / max(total, 1)


class Callback:
    """What surrounds the loop, called at its hooks (each a no-op here; ``loop`` is the
    :class:`Loop`, whose state a callback reads and, to resume, sets)."""

    def on_train_begin(self, loop: "Loop") -> None:
        """Before the first step of this call (a resumed run: before its next step)."""

    def on_epoch_begin(self, loop: "Loop") -> None:
        """Before an epoch's first step (or the next one of a resumed epoch)."""

    def on_step_end(self, loop: "Loop") -> None:
        """After each step (``loop.acc``, ``loop.step_in_epoch`` counted; may :meth:`Loop.request_stop`)."""

    def on_test_begin(self, loop: "Loop") -> None:
        """After an epoch's last step, before its evaluation."""

    def on_epoch_end(self, loop: "Loop") -> None:
        """After an epoch's evaluation (its row in ``loop.history``; may :meth:`Loop.request_stop`)."""

    def on_stop(self, loop: "Loop") -> None:
        """When a callback asked the loop to stop, before it returns or raises."""

    def on_train_end(self, loop: "Loop") -> None:
        """After the last epoch."""

    def on_exception(self, loop: "Loop", error: BaseException) -> None:
        """When the loop ends with ``error``."""


class Loop:
    """``num_epochs`` epochs over ``train_iter`` (batches the trainer takes, with a length) at the
    learning rate ``lr`` (a constant, or a function of the global step), each evaluated on
    ``test_iter``. :meth:`run` returns the history: per-epoch rows, train loss and accuracy points
    (about every tenth of an epoch), the first step's loss, the device. ``checkpoint_dir`` is where
    the last checkpoint a callback wrote lies (named in a failed run's error; None: none kept).
    ``evaluate(trainer, test_iter)`` gives the test accuracy (default :func:`evaluate_accuracy`; a
    front end may record more on the way, as d2l 1.0's board does)."""

    def __init__(self, trainer, train_iter, test_iter, num_epochs: int, lr: float | Callable[[int], float], *,
                 evaluate: Callable[[object, object], float] = evaluate_accuracy):
        self.trainer, self.train_iter, self.test_iter, self.num_epochs = trainer, train_iter, test_iter, num_epochs
        self.evaluate = evaluate
        self.lr_at = lr if callable(lr) else (lambda step, _lr=lr: _lr)
        self.steps_per_epoch = num_batches(train_iter)
        self.total_steps = num_epochs * self.steps_per_epoch
        device = getattr(trainer, "device_label", None) or describe(trainer.device, trainer.backend)  # JAX's DP
        self.history = {"backend": trainer.backend, "device": device, "epochs": [], "points": [],
                        "first_step_loss": None}
        self.epoch = self.step_in_epoch = self.steps_this_call = 0
        self.last_loss = None  # the last step's mean loss
        self.acc = self._fresh()
        self.checkpoint_dir = None
        self.recorded = False  # whether the last step added a point to the history
        self._stop: Callable[["Loop"], BaseException] | bool | None = None
        self._tic = 0.0

    @staticmethod
    def _fresh() -> dict:
        return {"loss": 0.0, "correct": 0, "n": 0, "seconds": 0.0}

    def request_stop(self, error: Callable[["Loop"], BaseException] | None = None) -> None:
        """Stop after the current step or epoch: return the history, or raise ``error(loop)``
        (built once every callback's :meth:`Callback.on_stop` has run)."""
        self._stop = error or True

    def lap(self) -> None:
        """Add the training time since the last lap to ``acc["seconds"]`` (before a checkpoint records it)."""
        now = time.perf_counter()
        self.acc["seconds"] += now - self._tic
        self._tic = now

    def run(self, callbacks=()) -> dict:
        try:
            return self._run(list(callbacks))
        except BaseException as err:
            for c in callbacks:
                c.on_exception(self, err)
            raise

    def _stopped(self, callbacks) -> dict:
        for c in callbacks:
            c.on_stop(self)
        if callable(self._stop):
            raise self._stop(self)
        return self.history

    def _run(self, callbacks) -> dict:
        for c in callbacks:
            c.on_train_begin(self)
        record_every = max(1, self.steps_per_epoch // 10)
        while self.epoch < self.num_epochs:
            if hasattr(self.train_iter, "set_epoch"):
                self.train_iter.set_epoch(self.epoch)
            for c in callbacks:
                c.on_epoch_begin(self)
            batches = iter(self.train_iter)
            for _ in range(self.step_in_epoch):
                next(batches)
            self._tic = time.perf_counter()
            for X, y in batches:
                self._step(X, y)
                self.recorded = self.step_in_epoch % record_every == 0 or self.step_in_epoch == self.steps_per_epoch
                if self.recorded:
                    acc = self.acc
                    self.history["points"].append([self.epoch + self.step_in_epoch / self.steps_per_epoch,
                                                   acc["loss"] / acc["n"], acc["correct"] / acc["n"]])
                for c in callbacks:
                    c.on_step_end(self)
                if self._stop:
                    self.lap()
                    return self._stopped(callbacks)
            self.lap()
            for c in callbacks:
                c.on_test_begin(self)
            test_acc = self.evaluate(self.trainer, self.test_iter)
            acc = self.acc
            self.history["epochs"].append({
                "epoch": self.epoch + 1, "train_loss": acc["loss"] / acc["n"], "train_acc": acc["correct"] / acc["n"],
                "test_acc": test_acc, "images_per_s": acc["n"] / acc["seconds"], "train_seconds": acc["seconds"]})
            self.epoch, self.step_in_epoch, self.acc = self.epoch + 1, 0, self._fresh()
            for c in callbacks:
                c.on_epoch_end(self)
            if self._stop:
                return self._stopped(callbacks)
        for c in callbacks:
            c.on_train_end(self)
        return self.history

    def _step(self, X, y) -> None:
        n = int(X.shape[0])
        lr = self.lr_at(self.epoch * self.steps_per_epoch + self.step_in_epoch)
        where = f"at epoch {self.epoch + 1}, batch {self.step_in_epoch + 1}"
        try:
            loss, correct = self.trainer.step(X, y, lr)
        except TrainingError as err:  # non-finite batch statistics (kept out of the running ones)
            raise TrainingError(f"{err} {where} (lr {lr:g}). {kept(self.checkpoint_dir)}") from None
        if not math.isfinite(loss):
            raise TrainingError(f"the loss is {loss} {where} (lr {lr:g}); try a lower learning rate. "
                                f"{kept(self.checkpoint_dir)}")
        if self.history["first_step_loss"] is None:
            self.history["first_step_loss"] = loss
        self.last_loss = loss
        self.acc["loss"] += loss * n
        self.acc["correct"] += correct
        self.acc["n"] += n
        self.step_in_epoch += 1
        self.steps_this_call += 1
