"""Training settings by name. ``quick`` is the main job's (one epoch at 40x40: short enough for
a CPU, long enough for a meaningful test accuracy; docs/getting-started.md gives the time and
accuracy measured); ``chapter`` is the chapter exactly
(``lr, num_epochs, batch_size = 0.05, 10, 256``, ``resize=96``, plain SGD).

:data:`BOUNDS` says which values each numeric setting takes; the command line checks its options
against it (argparse-style errors) and :class:`TrainConfig` refuses values outside it."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from ..errors import UserValueError
from .precision import PRECISIONS

SCHEDULES = ("constant", "onecycle")
MAX_EPOCHS = 10_000

#: setting -> (test, what the value must be). ``resize`` may also be ``None`` (28x28, no resize);
#: its smallest value is the network's (``spec.check_input``), checked by the command line.
BOUNDS = {
    "epochs": (lambda v: 1 <= v <= MAX_EPOCHS, f"an integer from 1 to {MAX_EPOCHS:,} (more could not finish: "
                                               f"the chapter trains 10, each minutes on a GPU)"),
    "steps": (lambda v: v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "lr": (lambda v: math.isfinite(v) and v > 0, "a number > 0"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "resize": (lambda v: v is None or v >= 1, "an integer >= 1"),
    "limit": (lambda v: v is None or v >= 1, "an integer >= 1 (images of each split)"),
    "devices": (lambda v: v >= 1, "an integer >= 1"),
}


def check_value(name: str, value) -> str | None:
    """``None`` if ``value`` is allowed for setting ``name``, else what it must be."""
    test, must = BOUNDS[name]
    try:
        return None if test(value) else must
    except TypeError:
        return must


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    lr: float
    batch_size: int
    resize: int | None
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"  # or "onecycle"
    seed: int = 0
    precision: str = "float32"  # or "bf16" (d2lres.core.precision)

    def __post_init__(self):
        problems = [f"{f.name} must be {must}, got {getattr(self, f.name)!r}" for f in fields(self)
                    if f.name in BOUNDS and (must := check_value(f.name, getattr(self, f.name)))]
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if problems:
            raise UserValueError("invalid training settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        return cls(**values)

    def with_overrides(self, **overrides) -> "TrainConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PRESETS = {
    # lr 0.05 (the chapter's): one-cycle to 0.1 spiked once in JAX at the peak (0.8438; README)
    "quick": TrainConfig(epochs=1, lr=0.05, batch_size=128, resize=40, momentum=0.9,
                         weight_decay=5e-4, schedule="onecycle"),
    "chapter": TrainConfig(epochs=10, lr=0.05, batch_size=256, resize=96),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise UserValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
