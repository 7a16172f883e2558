"""The training loop all backends share (d2l's ``train_ch6``, plus schedules, checkpoints and
resume). A backend supplies a ``Trainer`` with ``step(X, y, lr)``, ``predict(X)``,
``get_weights``/``set_weights`` and ``optimizer_state``/``load_optimizer_state``."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .core import book
from .errors import TrainingError, UserValueError
from .host.devices import describe
from .loop.trainer import identity as network_identity
from .util import files, signals
from .weights import FORMAT_KEY, format_record, read_npz, write_npz

CHECKPOINT = "checkpoint.npz"
#: Steps timed (after the first, which compiles) for the expected time of the whole run.
ETA_STEPS = 3


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``2.1 days``."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}" if unit in ("days", "h") else f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


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


#: What to do with a checkpoint that cannot be used.
CHECKPOINT_FIX = "delete it (d2lres train: --overwrite) to start the run again"


def identity_differences(saved: dict | None, now: dict) -> list[str]:
    """``"key: checkpoint A, now B"`` for each entry of a run's identity (backend, architecture,
    settings, data slice, initial weights) that differs; the checkpoint's is ``saved``."""
    if saved is None:
        return ["the checkpoint does not record its run's settings (written by an older d2lres)"]

    def show(value):
        return "none" if value is None else str(value)
    return [f"{k}: checkpoint {show(saved.get(k))}, now {show(now.get(k))}"
            for k in dict.fromkeys([*saved, *now]) if saved.get(k) != now.get(k)]


def read_identity(directory: str | Path) -> dict | None:
    """The identity recorded in the checkpoint in ``directory`` (``None`` if it has none);
    a damaged checkpoint raises ``ValueError`` naming it."""
    path = Path(directory) / CHECKPOINT
    data = read_npz(path, what="checkpoint", fix=CHECKPOINT_FIX, keys=("progress",), kinds="fU",
                    kind="checkpoint")
    try:
        return json.loads(str(data["progress"])).get("identity")
    except (ValueError, AttributeError) as err:
        raise TrainingError(f"checkpoint {path}: no readable progress record ({err}); {CHECKPOINT_FIX}") from None


def resume_point(epoch: int, step_in_epoch: int, num_epochs: int, steps_per_epoch: int) -> str:
    """Where a checkpoint stopped, counted as the run counts (epochs from 1)."""
    if step_in_epoch:
        return f"epoch {epoch + 1} of {num_epochs}, after step {step_in_epoch} of {steps_per_epoch}"
    if epoch >= num_epochs:
        return f"all {num_epochs} epoch(s) trained; nothing left to train"
    return f"{epoch} of {num_epochs} epoch(s) trained, from the start of epoch {epoch + 1}"


def kept(directory: Path | None) -> str:
    """What a failed run leaves to resume from: the last checkpoint, or that there is none."""
    if directory is not None and (Path(directory) / CHECKPOINT).exists():
        return f"The last checkpoint ({Path(directory) / CHECKPOINT}) is kept."
    return "No checkpoint was written before this (nothing to resume): start again with other settings."


def _save_checkpoint(directory: Path, trainer, progress: dict) -> None:
    """Write the checkpoint atomically; never overwrite a good one with non-finite weights."""
    arrays = {f"weights.{k}": v for k, v in trainer.get_weights().items()}
    bad = [k for k, v in arrays.items() if not np.isfinite(v).all()]
    if bad:
        raise TrainingError(f"the weights are no longer finite ({bad[0][len('weights.'):]} and {len(bad) - 1} more) "
                            f"at epoch {progress['epoch'] + 1}, batch {progress['step_in_epoch']}; try a lower "
                            f"learning rate. {kept(directory)}")
    arrays.update(trainer.optimizer_state())
    arrays["progress"] = np.array(json.dumps(progress))
    identity = progress.get("identity") or {}
    arch = ({"name": identity["arch"], "version": identity.get("version"), "flavour": identity.get("flavour")}
            if "arch" in identity else None)
    arrays[FORMAT_KEY] = format_record("checkpoint", arch)
    files.atomic_write(directory / CHECKPOINT, lambda f: write_npz(f, arrays))


def load_checkpoint(directory: Path) -> tuple[dict, dict, dict] | None:
    """``(weights, optimizer state, progress)`` of the checkpoint in ``directory``, if any; a
    damaged one raises ``ValueError`` naming the file and what to do."""
    path = Path(directory) / CHECKPOINT
    if not path.exists():
        return None
    data = read_npz(path, what="checkpoint", fix=CHECKPOINT_FIX, keys=None, kinds="fU", kind="checkpoint")
    try:
        progress = json.loads(str(data["progress"]))
    except (KeyError, ValueError) as err:
        raise TrainingError(f"checkpoint {path}: no readable progress record ({err}); {CHECKPOINT_FIX}") from None
    weights = {k[len("weights."):]: v for k, v in data.items() if k.startswith("weights.")}
    state = {k: v for k, v in data.items() if k.startswith("momentum.")}
    return weights, state, progress


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
    data-parallel run: the trainer's ``agree_stop``)."""
    lr_at = lr if callable(lr) else (lambda step, _lr=lr: _lr)
    steps_per_epoch = num_batches(train_iter)
    device = getattr(trainer, "device_label", None) or describe(trainer.device, trainer.backend)  # JAX's DP: a sharding
    history = {"backend": trainer.backend, "device": device, "epochs": [],
               "points": [], "first_step_loss": None}
    epoch = step_in_epoch = 0
    acc = {"loss": 0.0, "correct": 0, "n": 0, "seconds": 0.0}
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if directory is not None and resume:
        found = load_checkpoint(directory)
        if found is not None:
            weights, state, saved = found
            differences = identity_differences(saved.get("identity"), identity) if identity is not None else []
            if differences:
                raise TrainingError(f"cannot resume from {directory / CHECKPOINT}, it belongs to another run: "
                                    + "; ".join(differences))
            if saved["step_in_epoch"] > steps_per_epoch:
                raise TrainingError(f"cannot resume from {directory / CHECKPOINT}: it stopped after batch "
                                    f"{saved['step_in_epoch']} of an epoch, but this data has {steps_per_epoch} "
                                    f"batches per epoch (another batch size or data slice?)")
            try:
                trainer.set_weights(weights)
                bad = [k for k, v in state.items() if not np.isfinite(v).all()]
                if bad:
                    raise UserValueError(f"{bad[0]}: values NaN or infinite")
            except ValueError as err:
                raise TrainingError(f"checkpoint {directory / CHECKPOINT}: {err}; {CHECKPOINT_FIX}") from None
            trainer.load_optimizer_state(state)
            history, acc = saved["history"], saved["acc"]
            epoch, step_in_epoch = saved["epoch"], saved["step_in_epoch"]
            if verbose and write:
                where = resume_point(epoch, step_in_epoch, num_epochs, steps_per_epoch)
                print(f"resuming from {directory / CHECKPOINT}: {where}")

    def checkpoint():
        if directory is not None and write:
            _save_checkpoint(directory, trainer, {"history": history, "acc": acc, "epoch": epoch,
                                                  "step_in_epoch": step_in_epoch, "identity": identity})

    def stop_signal() -> int | None:
        """A signal's request to stop (``d2lres.util.signals``), agreed by every process of the run."""
        agree = getattr(trainer, "agree_stop", None)
        return agree(signals.requested()) if agree is not None else signals.requested()

    def stop(signum: int, where: str):
        checkpoint()
        written = directory is not None and write
        return signals.Interrupted(signum, where, f"checkpoint written to {directory / CHECKPOINT}" if written
                                   else "", written)

    record_every = max(1, steps_per_epoch // 10)
    on_step = progress if callable(progress) else None
    steps_this_call = 0
    total_steps = num_epochs * steps_per_epoch
    announce = verbose and write and progress is True and total_steps > ETA_STEPS + 1
    eta_tic = 0.0
    while epoch < num_epochs:
        if hasattr(train_iter, "set_epoch"):
            train_iter.set_epoch(epoch)
        bar = tqdm(total=steps_per_epoch, initial=step_in_epoch,
                   desc=f"{trainer.backend} epoch {epoch + 1}/{num_epochs}",
                   disable=not progress or on_step is not None, leave=False, unit="batch", mininterval=1.0)
        batches = iter(train_iter)
        for _ in range(step_in_epoch):
            next(batches)
        tic = time.perf_counter()
        for X, y in batches:
            n = int(X.shape[0])
            try:
                loss, correct = trainer.step(X, y, lr_at(epoch * steps_per_epoch + step_in_epoch))
            except TrainingError as err:  # non-finite batch statistics (kept out of the running ones)
                bar.close()
                raise TrainingError(f"{err} at epoch {epoch + 1}, batch {step_in_epoch + 1} "
                                    f"(lr {lr_at(epoch * steps_per_epoch + step_in_epoch):g}). "
                                    f"{kept(directory if write else None)}") from None
            if not math.isfinite(loss):
                bar.close()
                raise TrainingError(f"the loss is {loss} at epoch {epoch + 1}, batch {step_in_epoch + 1} "
                                    f"(lr {lr_at(epoch * steps_per_epoch + step_in_epoch):g}); "
                                    f"try a lower learning rate. {kept(directory if write else None)}")
            if history["first_step_loss"] is None:
                history["first_step_loss"] = loss
            acc["loss"] += loss * n
            acc["correct"] += correct
            acc["n"] += n
            step_in_epoch += 1
            steps_this_call += 1
            bar.update(1)
            if announce and steps_this_call == 1:
                eta_tic = time.perf_counter()
            elif announce and steps_this_call == ETA_STEPS + 1:
                per_step = (time.perf_counter() - eta_tic) / ETA_STEPS
                left = total_steps - epoch * steps_per_epoch - step_in_epoch
                tqdm.write(f"expected time of the whole run: about {duration(per_step * total_steps)} "
                           f"({total_steps:,} steps at {per_step:.2f} s, {duration(per_step * left)} left; "
                           f"evaluation after each epoch not included)")
            if on_step is not None:
                on_step()
            if step_in_epoch % record_every == 0 or step_in_epoch == steps_per_epoch:
                history["points"].append([epoch + step_in_epoch / steps_per_epoch,
                                          acc["loss"] / acc["n"], acc["correct"] / acc["n"]])
                bar.set_postfix(loss=f"{acc['loss'] / acc['n']:.3f}", acc=f"{acc['correct'] / acc['n']:.3f}")
            if step_in_epoch < steps_per_epoch and step_in_epoch % checkpoint_every == 0:
                acc["seconds"] += time.perf_counter() - tic
                tic = time.perf_counter()
                checkpoint()
            signum = stop_signal()
            if signum:
                bar.close()
                acc["seconds"] += time.perf_counter() - tic
                raise stop(signum, f"epoch {epoch + 1}, step {step_in_epoch} of {steps_per_epoch}")
            if stop_after is not None and steps_this_call >= stop_after:
                bar.close()
                acc["seconds"] += time.perf_counter() - tic
                checkpoint()
                return history
        acc["seconds"] += time.perf_counter() - tic
        bar.close()
        test_acc = evaluate_accuracy(trainer, test_iter)
        history["epochs"].append({
            "epoch": epoch + 1, "train_loss": acc["loss"] / acc["n"], "train_acc": acc["correct"] / acc["n"],
            "test_acc": test_acc, "images_per_s": acc["n"] / acc["seconds"], "train_seconds": acc["seconds"]})
        epoch, step_in_epoch = epoch + 1, 0
        acc = {"loss": 0.0, "correct": 0, "n": 0, "seconds": 0.0}
        checkpoint()
        if plot and write:
            from .loop.plots import show_or_save_curves
            show_or_save_curves({trainer.backend: history}, curves_path, title=title)
        signum = stop_signal() if epoch < num_epochs else None
        if signum:
            raise stop(signum, f"the end of epoch {epoch}")
    last = history["epochs"][-1] if history["epochs"] else None
    if verbose and write and last:
        print(f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, test acc {last['test_acc']:.3f}")
        # d2l's line names the device in the framework's own spelling, as d2l prints it
        print(f"{last['images_per_s']:.1f} examples/sec on {getattr(trainer, 'device_label', None) or trainer.device}")
    return history


def train_ch6(net, make_trainer, reinitialize, train_iter, test_iter, num_epochs: int, lr: float,
              **fit_options) -> dict:
    """d2l's ``train_ch6`` for any backend: ``reinitialize()`` (the backend's d2l rule) for a
    network that is not d2lres's -- d2lres's own keep their weights (its seeded scheme, which the
    same-function comparisons start from) --, then ``make_trainer()``, the line
    ``training on <device>`` and ``training.fit`` at the constant ``lr`` (which prints d2l's two
    summary lines and draws the curves). A ``checkpoint_dir`` without an ``identity`` gets the
    network's (``d2lres.loop.trainer.identity``). Returns the history."""
    if not book.is_d2lres_net(net):
        reinitialize()
    trainer = make_trainer()
    if fit_options.get("verbose", True):
        print(f"training on {getattr(trainer, 'device_label', None) or trainer.device}")
    if fit_options.get("checkpoint_dir") is not None and fit_options.get("identity") is None:
        fit_options["identity"] = network_identity(net, trainer.get_weights())
    return fit(trainer, train_iter, test_iter, num_epochs, lr, **fit_options)
