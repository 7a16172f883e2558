"""The loop's parts without a framework: the run description parsed once and through a job, the
loop's hooks in order and a callback's stop, an exact resume from a checkpoint callback, and the
trainer base's abstract methods and edition message."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from d2lres import spec
from d2lres.core.description import RunDescription
from d2lres.core.presets import preset
from d2lres.errors import UserTypeError
from d2lres.loop.callbacks import Checkpoints, StopAfter
from d2lres.loop.engine import Callback, Loop
from d2lres.loop.trainer import TrainerBase
from d2lres.util.guard import RunError


def test_a_description_is_normalised_once_and_survives_its_job():
    run = RunDescription.create("PyTorch", preset("quick"), "runs/x", arch="ResNet-50", init="w.npz", limit=8,
                                devices=2)
    assert (run.backend, run.arch, run.out, run.init) == ("torch", spec.Arch(50), Path("runs/x"), Path("w.npz"))
    job = json.loads(json.dumps({**run.to_job(), "error_file": "/tmp/e"}))  # as jobs.command and jobs.main
    assert RunDescription.from_job(job) == run


@pytest.mark.parametrize("change", [{"arch": [19, 1, "chapter"]}, {"backend": "pytorch"}, {"limit": "8"},
                                    {"surprise": 1}, {"config": {"epochs": 0}}])
def test_a_job_that_d2lres_did_not_write_is_refused(change):
    job = {**RunDescription.create("tf", preset("quick"), "runs/x").to_job(), **change}
    with pytest.raises(RunError, match="the job of d2lres.run is not one that d2lres wrote"):
        RunDescription.from_job(job)


class Counting:
    """A trainer without a framework: its weight counts the steps, its loss is 1 / step."""
    backend, device_label = "none", "nowhere"

    def __init__(self):
        self.w, self.v = np.zeros(1, np.float32), np.zeros(1, np.float32)

    def step(self, X, y, lr):
        self.w += lr
        self.v += 1
        return 1.0 / float(self.v[0]), int(len(y) // 2)

    def predict(self, X):
        return np.eye(10, dtype=np.float32)[np.zeros(len(X), int)]

    def get_weights(self):
        return {"w": self.w.copy()}

    def set_weights(self, weights):
        self.w = np.array(weights["w"], np.float32)

    def optimizer_state(self):
        return {"momentum.w": self.v.copy()}

    def load_optimizer_state(self, state):
        self.v = np.array(state["momentum.w"], np.float32)


BATCHES = [(np.zeros((2, 1)), np.array([0, 1]))] * 4


class Hooks(Callback):
    def __init__(self):
        self.seen = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return lambda loop, *rest: self.seen.append((name, loop.epoch, loop.step_in_epoch))
        return super().__getattribute__(name)


def test_the_loop_calls_its_hooks_in_order_and_a_callback_stops_it():
    hooks = Hooks()
    history = Loop(Counting(), BATCHES, BATCHES, 2, 0.5).run([hooks])
    names = [n for n, _, _ in hooks.seen]
    assert names == ["on_train_begin", *(["on_epoch_begin", *["on_step_end"] * 4, "on_test_begin", "on_epoch_end"] * 2),
                     "on_train_end"]
    assert [e["test_acc"] for e in history["epochs"]] == [0.5, 0.5] and history["first_step_loss"] == 1.0
    hooks = Hooks()
    Loop(Counting(), BATCHES, BATCHES, 2, 0.5).run([StopAfter(5), hooks])
    assert hooks.seen[-2:] == [("on_step_end", 1, 1), ("on_stop", 1, 1)]


def test_a_checkpoint_callback_resumes_the_loop_exactly(tmp_path):
    def run(*extra, resume=False):
        trainer = Counting()
        history = Loop(trainer, BATCHES, BATCHES, 2, lambda step: 0.1 * step).run(
            [Checkpoints(tmp_path, every=3, resume=resume, verbose=False), *extra])
        return trainer, history
    run(StopAfter(6))
    resumed, h_resumed = run(resume=True)
    (tmp_path / "checkpoint.npz").unlink()
    straight, h_straight = run()
    assert resumed.w == straight.w and resumed.v == straight.v
    assert h_resumed["points"] == h_straight["points"]


def test_the_trainer_base_names_what_a_backend_must_supply_and_the_edition():
    class Half(TrainerBase):
        def __init__(self, net, momentum=0.0):
            self.net = net

        def step(self, X, y, lr):
            return 0.0, 0

    with pytest.raises(TypeError, match="abstract .*_restore.*predict"):
        Half(None)
    whole = {name: (lambda self, *a: None) for name in Half.__abstractmethods__ if name != "_neutral"}
    Whole = type("Whole", (Half,), {**whole, "_neutral": (None, None)})
    assert Whole(None).net is None
    with pytest.raises(UserTypeError, match=r"Whole\(net, momentum=0.0\): .*max_epochs: d2l 1.0's Trainer"):
        Whole(None, max_epochs=10)
