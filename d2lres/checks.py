"""Cross-backend checks: the backends build the same network (shapes, parameter counts) and,
given the same weights through the neutral file, compute the same function (eval logits,
train-mode logits, one SGD step: loss, updated weights, BatchNorm running statistics)."""
from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np

from . import backends, spec
from . import weights as neutral

#: What ``d2lres compare --check`` requires of every pair (the tests use the same numbers).
TOLERANCES = {"eval_logits": 1e-4, "train_logits": 1e-4, "step_loss": 1e-4,
              "step_weights": 1e-4, "bn_stats": 1e-4}
#: Every other variant (deeper, pre-activation, torchvision flavour): 1e-3, and the logits and
#: the loss are compared relative to ``max(1, max|value|)`` -- float32 rounding grows with depth,
#: and a pre-activation network's logits grow with it too. What goes through batch statistics in
#: every layer (train-mode logits, the SGD step's weights and running statistics) gets
#: ``1e-3 * max(1, depth / 50)``. Measured at 64x64, batch 4 (16 values per channel in b5):
#: ResNet-101 v1 step weights up to 1.5e-3 (MXNet vs the others, spread over many tensors),
#: ResNet-152 train-mode logits up to 1.6e-3 (every pair): accumulated rounding, not one layer.
FAMILY_TOLERANCES = {k: 1e-3 for k in TOLERANCES}


def tolerances(arch=None) -> dict[str, float]:
    """What the checks require of every pair for ``arch`` (the chapter's ResNet-18: ``TOLERANCES``)."""
    arch = spec.get_arch(arch)
    if arch == spec.Arch():
        return TOLERANCES
    step = 1e-3 * max(1.0, arch.depth / 50)
    return {**FAMILY_TOLERANCES, "train_logits": step, "step_weights": step, "bn_stats": step}


#: BatchNorm shift of the SGD-step check's weights (see ``test_weights``).
STEP_BN_SHIFT = 5.0


def test_weights(num_classes: int = 10, in_channels: int = 1, seed: int = 0,
                 bn_shift: float = 0.0, arch=None) -> dict[str, np.ndarray]:
    """Random weights with non-trivial BatchNorm parameters and running statistics.

    ``bn_shift`` is added to every BatchNorm shift. The SGD-step check uses ``STEP_BN_SHIFT``:
    float32 rounding (~1e-6) flips the ReLU mask of any activation that close to zero, and one
    flipped mask moves a whole slice of a weight gradient by ~1e-2 relative -- a property of
    ReLU, not a difference between backends (seen with a shift of 0 in ResNet-18, and with 3 in
    ResNet-50 v2). Shifted by 5 (over 3 standard deviations), practically no pre-activation lies
    near the kink. The forward checks keep the shift at 0, so they do test where the ReLUs are."""
    rng = np.random.default_rng(seed + 1)
    w = neutral.init_weights(num_classes, in_channels, seed, arch)
    for name, value in w.items():
        if ".bn" in name and name.endswith(".weight"):
            w[name] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif ".bn" in name and name.endswith(".bias"):
            w[name] = (bn_shift + rng.normal(0, 0.1, value.shape)).astype(np.float32)
        elif name.endswith("running_mean"):
            w[name] = rng.normal(0, 0.2, value.shape).astype(np.float32)
        elif name.endswith("running_var"):
            w[name] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        elif name.endswith(".bias"):
            w[name] = rng.normal(0, 0.05, value.shape).astype(np.float32)
    return w


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)))


def _max_rel(a: dict, b: dict, keys) -> float:
    """Largest per-tensor ``max|a - b| / max|a|``."""
    return max(_max_abs(a[k], b[k]) / max(float(np.max(np.abs(a[k]))), 1e-12) for k in keys)


def run_backend(name: str, weights_file: Path, step_file: Path, X: np.ndarray, Xs: np.ndarray, y: np.ndarray,
                lr: float, input_shape, num_classes: int, arch=None, options: dict | None = None) -> dict:
    """Everything one backend computes for the checks: forward passes from ``weights_file``, one
    SGD step from ``step_file``; ``options`` go to its ``Trainer`` (e.g. an acceleration switch)."""
    mod = backends.load(name)
    a = spec.get_arch(arch)
    net = mod.resnet(a.depth, a.version, num_classes=num_classes, in_channels=input_shape[0], flavour=a.flavour)
    mod.load_weights(net, weights_file)
    trainer = mod.Trainer(net, device=mod.try_gpu(), **(options or {}))
    out = {"walk": mod.shape_walk(net, input_shape), "counts": mod.count_parameters(net),
           "eval_logits": trainer.forward(X, training=False)}
    mod.load_weights(net, weights_file)
    out["train_logits"] = trainer.forward(X, training=True)
    mod.load_weights(net, step_file)
    out["step_loss"], _ = trainer.step(*trainer.convert(Xs, y), lr)
    out["after_step"] = trainer.get_weights()
    return out


def run_all(runs: dict[str, tuple[str, dict]], input_shape=(1, 96, 96), step_size: int = 96, batch_size: int = 4,
            num_classes: int = 10, lr: float = 0.05, seed: int = 0, arch=None) -> dict[str, dict]:
    """:func:`run_backend` for each ``label: (backend, Trainer options)``, all from the same
    weights and inputs: forwards at ``input_shape``, the SGD step at ``step_size`` x ``step_size``."""
    rng = np.random.default_rng(seed)
    X = rng.random((batch_size, *input_shape), dtype=np.float32)
    Xs = rng.random((batch_size, input_shape[0], step_size, step_size), dtype=np.float32)
    y = rng.integers(0, num_classes, batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = neutral.save_npz(Path(tmp) / "weights.npz", test_weights(num_classes, input_shape[0], seed, arch=arch))
        step_path = neutral.save_npz(Path(tmp) / "step.npz",
                                     test_weights(num_classes, input_shape[0], seed, STEP_BN_SHIFT, arch))
        return {label: run_backend(name, path, step_path, X, Xs, y, lr, input_shape, num_classes, arch, options)
                for label, (name, options) in runs.items()}


def differences(ra: dict, rb: dict, arch=None) -> dict[str, float]:
    """What the checks measure between two runs of :func:`run_backend` (compare with
    :func:`tolerances`). For the family, logits and loss are relative to ``max(1, |value|)``."""
    relative = spec.get_arch(arch) != spec.Arch()

    def scale(*values) -> float:
        return max(1.0, max(float(np.max(np.abs(v))) for v in values)) if relative else 1.0

    stats = [k for k in ra["after_step"] if k.endswith(("running_mean", "running_var"))]
    trainable = [k for k in ra["after_step"] if k not in stats]
    return {"eval_logits": _max_abs(ra["eval_logits"], rb["eval_logits"]) / scale(ra["eval_logits"]),
            "train_logits": _max_abs(ra["train_logits"], rb["train_logits"]) / scale(ra["train_logits"]),
            "step_loss": abs(ra["step_loss"] - rb["step_loss"]) / scale(ra["step_loss"]),
            "step_weights": _max_rel(ra["after_step"], rb["after_step"], trainable),
            "bn_stats": _max_rel(ra["after_step"], rb["after_step"], stats)}


def cross_backend_checks(names=None, input_shape=(1, 96, 96), step_size: int = 96,
                         batch_size: int = 4, num_classes: int = 10, lr: float = 0.05, seed: int = 0,
                         arch=None) -> dict:
    """Run every backend in ``names`` from the same weights files and compare every pair.
    The forward checks run at ``input_shape``, the SGD step at ``step_size`` x ``step_size``.
    ``arch``: any variant (``spec.get_arch``); left out, the chapter's ResNet-18. ``names``:
    default, every backend available."""
    names = list(names or backends.available())
    arch = spec.get_arch(arch)
    tol = tolerances(arch)
    runs = run_all({n: (n, {}) for n in names}, input_shape, step_size, batch_size, num_classes, lr, seed, arch)
    expected_walk = [(n, s) for n, s, _ in spec.walk(tuple(input_shape), num_classes, arch)]
    expected_counts = spec.param_counts(num_classes, input_shape[0], arch)["total"]
    result = {"input_shape": tuple(input_shape), "step_size": step_size, "batch_size": batch_size,
              "arch": str(arch), "relative": arch != spec.Arch(), "tolerances": dict(tol), "backends": {},
              "pairs": {}}
    for n, r in runs.items():
        result["backends"][n] = {"shapes_match_spec": r["walk"] == expected_walk,
                                 "counts": tuple(r["counts"]),
                                 "counts_match_spec": tuple(r["counts"]) == expected_counts,
                                 "step_loss": r["step_loss"]}
    for a, b in itertools.combinations(names, 2):
        result["pairs"][f"{a}-{b}"] = differences(runs[a], runs[b], arch)
    result["ok"] = all(v["shapes_match_spec"] and v["counts_match_spec"] for v in result["backends"].values()) \
        and all(d[k] <= tol[k] for d in result["pairs"].values() for k in tol)
    return result


def format_checks(result: dict) -> str:
    """The checks as one Markdown table (per backend, then per pair)."""
    tol = result.get("tolerances", TOLERANCES)
    arch = result.get("arch", "ResNet-18")
    lines = [("" if arch == "ResNet-18" else f"{arch}. ") +
             f"Input {'x'.join(map(str, result['input_shape']))}, batch {result['batch_size']}, random weights "
             f"with non-trivial BatchNorm statistics, transferred through the neutral .npz file. One SGD step "
             f"(lr 0.05, cross-entropy) at {result['step_size']}x{result['step_size']}, from weights whose "
             f"BatchNorm shifts keep pre-activations off the ReLU kink (see checks.test_weights).", "",
             "| backend | shapes = spec | trainable + BN statistics | = spec | first-step loss |",
             "|---|---|---|---|---|"]
    for n, v in result["backends"].items():
        t, s = v["counts"]
        lines.append(f"| {n} | {'yes' if v['shapes_match_spec'] else 'NO'} | {t:,} + {s:,} | "
                     f"{'yes' if v['counts_match_spec'] else 'NO'} | {v['step_loss']:.6f} |")
    rel = " (rel)" if result.get("relative") else ""
    lines += ["", f"| pair | eval logits{rel} | train-mode logits{rel} | step loss{rel} | updated weights (rel) | "
              "BN statistics (rel) |", "|---|---|---|---|---|---|"]
    for pair, d in result["pairs"].items():
        lines.append(f"| {pair} | " + " | ".join(f"{d[k]:.2e}" for k in tol) + " |")
    lines += ["", ("Logits and loss: max |difference| / max(1, max |value|). " if rel else "")
              + "Tolerance for every difference: " + ", ".join(f"{k} {v:g}" for k, v in tol.items())
              + f". Result: {'PASS' if result['ok'] else 'FAIL'}."]
    return "\n".join(lines)
