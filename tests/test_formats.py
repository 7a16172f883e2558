"""Versioned formats (issue 24): the neutral weights file and the checkpoint record their format,
version and architecture (``d2lres.weights.FORMAT_KEY``); files without the record (written
before it) still load; a newer version, another kind of file and another architecture are
refused naming what they are."""
from __future__ import annotations

import json

import numpy as np
import pytest

from d2lres import spec, training, weights


def record(path) -> dict:
    with np.load(path) as data:
        return json.loads(str(data[weights.FORMAT_KEY]))


def rewrite(path, **changes) -> None:
    """Rewrite the file's format record with ``changes`` (``None`` removes it)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    if changes.pop("remove", False):
        del arrays[weights.FORMAT_KEY]
    else:
        arrays[weights.FORMAT_KEY] = np.array(json.dumps({**json.loads(str(arrays[weights.FORMAT_KEY])), **changes}))
    np.savez(path, **arrays)


class Trainer:
    """What ``training.save_checkpoint`` asks of a trainer."""

    def __init__(self, w):
        self.w = w

    def get_weights(self):
        return self.w

    def optimizer_state(self):
        return {f"momentum.{k}": np.zeros_like(v) for k, v in self.w.items()}


@pytest.fixture
def files(tmp_path):
    arch = spec.get_arch("resnet18")
    w = weights.init_weights(seed=0, arch=arch)
    path = weights.save_npz(tmp_path / "weights.npz", w, arch)
    identity = {"backend": "torch", "arch": arch.name, "version": arch.version, "flavour": arch.flavour}
    training.save_checkpoint(tmp_path, Trainer(w), {"history": {}, "acc": {}, "epoch": 0, "step_in_epoch": 1,
                                                    "identity": identity})
    return path, tmp_path, w


def test_files_record_their_format_and_architecture(files):
    path, folder, w = files
    arch = {"name": "resnet18", "version": 1, "flavour": "chapter"}
    assert record(path) == {"format": "d2lres-weights", "version": 1, "arch": arch}
    assert record(folder / training.CHECKPOINT) == {"format": "d2lres-checkpoint", "version": 1, "arch": arch}
    loaded = weights.load_npz(path)
    assert loaded.format["arch"] == arch and weights.FORMAT_KEY not in loaded and loaded.keys() == w.keys()
    saved_weights, state, progress = training.load_checkpoint(folder)
    assert saved_weights.keys() == w.keys() and progress["step_in_epoch"] == 1


def test_files_without_a_record_still_load(files):
    path, folder, w = files
    rewrite(path, remove=True)
    rewrite(folder / training.CHECKPOINT, remove=True)
    assert weights.load_npz(path).format is None and weights.load_npz(path).keys() == w.keys()
    assert training.load_checkpoint(folder)[0].keys() == w.keys()
    assert training.read_identity(folder)["backend"] == "torch"


def test_a_newer_version_is_refused_naming_it(files):
    path, folder, _ = files
    rewrite(path, version=2)
    rewrite(folder / training.CHECKPOINT, version=7)
    with pytest.raises(weights.WeightsFileError, match=f"{path}: written in format version 2 by a newer d2lres"):
        weights.load_npz(path)
    with pytest.raises(weights.WeightsFileError, match="format version 7 by a newer d2lres.*upgrade d2lres"):
        training.load_checkpoint(folder)


def test_another_kind_or_a_damaged_record_is_refused(files):
    path, folder, _ = files
    checkpoint = r"is a d2lres checkpoint \(a run's weights, momentum and progress\), not a weights file: to continue"
    with pytest.raises(weights.WeightsFileError, match=checkpoint + " that run, pass --resume"):
        weights.load_npz(folder / training.CHECKPOINT)
    rewrite(path, version="1")
    with pytest.raises(weights.WeightsFileError, match="format record __format__ is damaged"):
        weights.load_npz(path)


def test_another_architecture_is_refused_naming_both(files):
    path, _, _ = files
    arrays = weights.load_npz(path)
    weights.check_arch(arrays, "resnet18", path)
    with pytest.raises(weights.WeightsFileError, match="holds resnet18 version 1, flavour chapter, not ResNet-34"):
        weights.check_arch(arrays, "resnet34", path)
    with pytest.raises(weights.WeightsFileError, match="not ResNet-18"):
        weights.check_arch(arrays, spec.get_arch("resnet18", version=2), path)
