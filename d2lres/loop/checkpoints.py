"""The checkpoint of a run: weights, optimizer state and the loop's progress in one ``.npz``,
written atomically, read back to resume exactly, with the run's identity to refuse another run's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import TrainingError
from ..util import files
from ..weights import FORMAT_KEY, format_record, read_npz, write_npz

CHECKPOINT = "checkpoint.npz"
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


def save_checkpoint(directory: Path, trainer, progress: dict) -> None:
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
