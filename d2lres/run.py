"""One training run of one backend, as ``d2lres train`` does it: data, the same initial
weights (a seeded neutral file), the shared loop with checkpoints, and the outputs
``metrics.json``, ``curves.png``, ``weights.npz`` in the run directory."""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import backends, data, files, training
from . import weights as neutral
from .presets import TrainConfig

CHECKPOINT_DIR = "checkpoint"


def train(backend: str, config: TrainConfig, out: str | Path, *, init: str | Path | None = None,
          data_dir=None, resume: bool = False, progress: bool = True, limit: int | None = None) -> dict:
    """Train ResNet-18 in ``backend`` with ``config``; returns (and writes) the metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mod = backends.load(backend)
    tic = time.perf_counter()
    net = mod.resnet18()
    if init is not None:
        mod.load_weights(net, init)
    else:
        mod.init_weights(net, config.seed)
    trainer = mod.Trainer(net, momentum=config.momentum, weight_decay=config.weight_decay, device=mod.try_gpu())
    train_iter, test_iter = data.load_batches(config.batch_size, config.resize, trainer.convert,
                                              data_dir=data_dir, seed=config.seed, limit=limit)
    lr = (training.one_cycle(config.lr, config.epochs * len(train_iter)) if config.schedule == "onecycle"
          else config.lr)
    history = training.fit(trainer, train_iter, test_iter, config.epochs, lr,
                           checkpoint_dir=out / CHECKPOINT_DIR, resume=resume, progress=progress,
                           curves_path=out / "curves.png")
    neutral.save_npz(out / "weights.npz", trainer.get_weights())
    last = history["epochs"][-1]
    metrics = {"backend": backends.canonical(backend), "config": config.to_dict(), "device": history["device"],
               "train_loss": last["train_loss"], "train_acc": last["train_acc"], "test_acc": last["test_acc"],
               "images_per_s": sum(e["images_per_s"] for e in history["epochs"]) / len(history["epochs"]),
               "wall_seconds": time.perf_counter() - tic, "first_step_loss": history["first_step_loss"],
               "history": history, "curves": str(out / "curves.png"), "weights": str(out / "weights.npz")}
    files.atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=1).encode()))
    return metrics
