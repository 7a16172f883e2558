"""Data-parallel training: the check that one data-parallel step is the single-device step on the
same global batch, for each backend and between backends (``python -m d2lres.parallel check``).
The split itself -- how a global batch is cut over replicas, synchronized BatchNorm, the
launchers' environment -- is ``d2lres.loop.split``, which every backend builds on; this module
re-exports its names (``d2lres.parallel.shard_slices`` is ``d2lres.loop.split.shard_slices``), so
``d2lres.parallel`` is the one path for data parallel in documents and users' code.

The backends' data-parallel trainers live in ``d2lres.<backend>.parallel`` (``ParallelTrainer``
with the ``Trainer`` interface); :func:`data_parallel_step` runs one step of it for the checks
(PyTorch and TensorFlow have their own: processes it spawns, the strategy's scope). ``python -m
d2lres.parallel check --backend B`` runs :func:`check_step` in a process set up for ``B``'s
replicas (JAX's host-platform device count, TensorFlow's logical CPUs must be set before the
framework starts) and prints the comparison as JSON.
"""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import spec
from .core.description import arch_from_job, arch_job
from .host import backends, process
from .loop.split import (  # noqa: F401 (the split, re-exported: see the docstring)
    LOOPBACK,
    SYNC_BN_DEFAULT,
    ParallelError,
    bn_batch_size,
    die_with_launcher,
    emulate_unsynchronized,
    environment,
    free_port,
    free_ports,
    launch_command,
    launched,
    loss_weights,
    process_rank,
    shard_sizes,
    shard_slices,
    split,
)
from .util import files, jobs

#: The quantities a step check compares (a subset of ``d2lres.checks.QUANTITIES``).
STEP_QUANTITIES = ("step_loss", "step_weights", "bn_stats")
#: Seconds a check's subprocess may take before it is killed.
CHECK_TIMEOUT = 600


# --- the check ---------------------------------------------------------------------------------

def step_differences(a: dict, b: dict, scale: dict | None = None) -> dict[str, float]:
    """``d2lres.checks.differences`` restricted to one step: loss, updated weights, BatchNorm
    running statistics of two results ``{"step_loss": float, "after_step": {name: array}}``."""
    from .checks import differences
    dummy = {"eval_logits": np.zeros(1), "train_logits": np.zeros(1)}
    full = differences({**dummy, **a}, {**dummy, **b}, scale=None if scale is None else {**dummy, **scale})
    return {q: full[q] for q in STEP_QUANTITIES}


def step_inputs(input_shape=(1, 64, 64), batch_size: int = 4, num_classes: int = 10, seed: int = 0, arch=None):
    """``(weights, X, y)``: the step check's weights (``checks.test_weights`` with the SGD-step
    check's BatchNorm shift, away from ReLU's kink) and a random global batch (X NCHW)."""
    from .checks import STEP_BN_SHIFT, test_weights
    rng = np.random.default_rng(seed)
    X = rng.random((batch_size, *input_shape), dtype=np.float32)
    y = rng.integers(0, num_classes, batch_size)
    return test_weights(num_classes, input_shape[0], seed, STEP_BN_SHIFT, arch=arch), X, y


def single_device_step(backend: str, weights: dict, X: np.ndarray, y: np.ndarray, lr: float, *,
                       arch: spec.Arch, momentum: float = 0.0, weight_decay: float = 0.0) -> dict:
    """One step of the backend's ordinary ``Trainer`` on one device from ``weights``."""
    mod = backends.load(backend)
    a = arch
    net = mod.resnet(a.name, a.version, num_classes=10, in_channels=X.shape[1], flavour=a.flavour)
    mod.set_weights(net, weights)
    trainer = mod.Trainer(net, momentum=momentum, weight_decay=weight_decay, device=mod.try_gpu())
    loss, _ = trainer.step(*trainer.convert(X, y), lr)
    return {"step_loss": loss, "after_step": trainer.get_weights()}


def data_parallel_step(backend: str, weights: dict, X: np.ndarray, y: np.ndarray, lr: float, *, replicas: int = 2,
                       sync_bn: bool = SYNC_BN_DEFAULT, arch: spec.Arch, momentum: float = 0.0,
                       weight_decay: float = 0.0) -> dict:
    """One data-parallel step of ``backend``'s ``ParallelTrainer`` on ``replicas`` replicas from
    ``weights`` on the global batch ``(X, y)`` (NCHW numpy, through the trainer's ``convert``):
    ``{"step_loss", "after_step"}``. JAX and MXNet use this; PyTorch (processes it spawns) and
    TensorFlow (the net built in the strategy's scope) have their own ``data_parallel_step``."""
    mod = backends.load(backend)
    a = arch
    net = mod.resnet(a.name, a.version, num_classes=10, in_channels=X.shape[1], flavour=a.flavour)
    mod.set_weights(net, weights)
    trainer = backend_module(backend).ParallelTrainer(net, momentum, weight_decay, replicas=replicas,
                                                      sync_bn=sync_bn)
    loss, _ = trainer.step(*trainer.convert(X, y), lr)
    return {"step_loss": loss, "after_step": trainer.get_weights()}


def check_step(backend: str, replicas: int = 2, sync_bn: bool = True, *, input_shape=(1, 64, 64),
               batch_size: int = 4, lr: float = 0.05, momentum: float = 0.0, weight_decay: float = 0.0,
               seed: int = 0, arch=None, weights_to: str | Path | None = None) -> dict:
    """One data-parallel step on ``replicas`` replicas against the single-device step on the same
    global batch, from the same weights, in this process (which must be set up for the backend's
    replicas: see :func:`run_check`). Returns the differences (``checks.differences``' metric) of
    loss, weights and BatchNorm statistics, the tolerances (``checks.TOLERANCES``: another execution
    path of the same backend, as the acceleration switches) and
    ``ok``. With ``sync_bn`` the data-parallel step is compared with the single-device step;
    without it, with :func:`emulate_unsynchronized` (what it is), and the distance to the
    single-device step is reported as ``unsync_vs_single``. ``weights_to``: also save the
    data-parallel step's weights there (``.npz``)."""
    from .checks import TOLERANCES
    arch = spec.get_arch(arch)  # the edge: anything spec.get_arch takes
    weights, X, y = step_inputs(input_shape, batch_size, seed=seed, arch=arch)
    par = backend_module(backend)
    options = {"arch": arch, "momentum": momentum, "weight_decay": weight_decay}
    own = getattr(par, "data_parallel_step", None)  # torch's (spawned processes) and TF's (strategy first)
    options_step = {"replicas": replicas, "sync_bn": sync_bn, **options}
    parallel = (own(weights, X, y, lr, **options_step) if own is not None
                else data_parallel_step(backend, weights, X, y, lr, **options_step))
    single = single_device_step(backend, weights, X, y, lr, **options)
    tol = {q: TOLERANCES[q] for q in STEP_QUANTITIES}
    result = {"backend": backend, "replicas": replicas, "sync_bn": sync_bn, "arch": str(arch),
              "input_shape": list(input_shape), "batch_size": batch_size, "tolerances": tol,
              "step_loss": {"parallel": parallel["step_loss"], "single": single["step_loss"]}}
    if sync_bn:
        result["differences"] = step_differences(single, parallel)
    else:
        expected = emulate_unsynchronized(
            lambda w, Xs, ys, lr_: single_device_step(backend, w, Xs, ys, lr_, **options), weights, X, y, lr, replicas)
        result["differences"] = step_differences(expected, parallel, scale=single)
        result["unsync_vs_single"] = step_differences(single, parallel)
    result["ok"] = all(result["differences"][q] <= tol[q] for q in STEP_QUANTITIES)
    if weights_to is not None:  # the step's weights, for :func:`agreement` between backends
        np.savez(weights_to, **parallel["after_step"])
    return result


def backend_module(backend: str):
    """``d2lres.<backend>.parallel`` (``backend``: its canonical name; imports the framework)."""
    return importlib.import_module(f"d2lres.{backend}.parallel")


def run_check(backend: str, replicas: int = 2, sync_bn: bool = True, *, timeout: float = CHECK_TIMEOUT,
              **options) -> dict:
    """:func:`check_step` in a fresh process set up for ``replicas`` replicas of ``backend``
    (bounded by ``timeout`` seconds); returns its result."""
    return run_checks(backend, replicas, (sync_bn,), timeout=timeout, **options)[0]


def run_checks(backend: str, replicas: int = 2, modes=(True, False), *, timeout: float = CHECK_TIMEOUT,
               **options) -> list[dict]:
    """:func:`run_check` for each BatchNorm mode of ``modes`` (``sync_bn``), all in one fresh
    process (one start-up of the framework); the results in that order."""
    backend = backends.canonical(backend)  # the edge: any spelling
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        job = {"backend": backend, "replicas": replicas, "sync_bn": list(modes), **options,
               "arch": arch_job(spec.get_arch(options.get("arch"))), "out": str(out)}
        proc = subprocess.run(jobs.command("d2lres.parallel", job, args=("check-job",)),
                              env=environment(backend, replicas), capture_output=True, text=True, timeout=timeout)
        if proc.returncode or not out.exists():
            raise RuntimeError(f"the {backend} data-parallel check failed (exit {proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        results = []
        for i, result in enumerate(jobs.read_result(out)):
            with np.load(out.with_suffix(f".{i}.npz")) as weights:
                results.append({**result, "after_step": {k: weights[k] for k in weights.files}})
        return results


def agreement(results: list[dict]) -> list[dict]:
    """Every pair of backends' data-parallel steps (:func:`run_check` results with the same
    BatchNorm mode) against each other: loss, weights and BatchNorm statistics within
    ``checks.TOLERANCES`` -- the four engines compute one function, not only each its own."""
    from .checks import TOLERANCES
    rows = []
    for i, a in enumerate(results):
        for b in results[i + 1:]:
            if a["sync_bn"] != b["sync_bn"] or a["backend"] == b["backend"]:
                continue
            d = step_differences(*({"step_loss": r["step_loss"]["parallel"], "after_step": r["after_step"]}
                                   for r in (a, b)))
            rows.append({"pair": f"{a['backend']}-{b['backend']}", "sync_bn": a["sync_bn"], "differences": d,
                         "ok": all(d[q] <= TOLERANCES[q] for q in STEP_QUANTITIES)})
    return rows


def format_agreement(rows: list[dict]) -> str:
    """A markdown table of :func:`agreement`."""
    lines = ["| pair (data-parallel steps) | BN | step loss | updated weights | BN statistics | within |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['pair']} | {'sync' if r['sync_bn'] else 'unsync'} | "
              + " | ".join(f"{r['differences'][q]:.1e}" for q in STEP_QUANTITIES)
              + f" | {'yes' if r['ok'] else 'NO'} |" for r in rows]
    return "\n".join(lines)


def format_results(results: list[dict]) -> str:
    """A markdown table of :func:`check_step` results."""
    lines = ["| backend | BN | loss 2 replicas | loss 1 device | step loss | updated weights | BN statistics "
             "| tolerance | within |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        d = r["differences"]
        lines.append(f"| {r['backend']} | {'sync' if r['sync_bn'] else 'unsync (vs emulation)'} "
                     f"| {r['step_loss']['parallel']:.6f} | {r['step_loss']['single']:.6f} "
                     + " ".join(f"| {d[q]:.1e}" for q in STEP_QUANTITIES)
                     + f" | {r['tolerances']['step_weights']:.1e} | {'yes' if r['ok'] else 'NO'} |")
        if "unsync_vs_single" in r:
            u = r["unsync_vs_single"]
            lines.append(f"| {r['backend']} | unsync vs 1 device | | | "
                         + " | ".join(f"{u[q]:.1e}" for q in STEP_QUANTITIES) + " | | (the difference) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check-job":  # internal: the checks of one (prepared) process, a list of modes
        options = jobs.read(argv[1:])
        backend, replicas, out = options.pop("backend"), options.pop("replicas"), Path(options.pop("out"))
        options["arch"] = arch_from_job(options["arch"])
        process.configure(backend)
        results = [check_step(backend, replicas, sync, **options, weights_to=out.with_suffix(f".{i}.npz"))
                   for i, sync in enumerate(options.pop("sync_bn"))]
        jobs.write_result(out, results)
        return 0
    p = argparse.ArgumentParser(prog="python -m d2lres.parallel")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="one data-parallel step against the single-device step, per backend")
    c.add_argument("--backends", nargs="+", default=backends.available())
    c.add_argument("--replicas", type=int, default=2)
    c.add_argument("--no-sync-bn", action="store_true")
    c.add_argument("--both", action="store_true", help="synchronized and unsynchronized BatchNorm")
    c.add_argument("--input", type=int, default=64,
                   help="image side (default 64; at 32 ResNet-18's last stage is 1x1, and BatchNorm over 4 values "
                        "amplifies float32 rounding beyond the tolerances even between two single-device backends)")
    c.add_argument("--batch-size", type=int, default=4)
    c.add_argument("--arch", default=None)
    c.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    modes = [True, False] if args.both else [not args.no_sync_bn]
    results = []
    for b in args.backends:
        for sync in modes:
            try:
                results.append(run_check(b, args.replicas, sync, input_shape=(1, args.input, args.input),
                                         batch_size=args.batch_size, arch=args.arch))
            except RuntimeError as err:  # a mode the engine refuses here (MXNet's on CPU contexts)
                refusal = [line for line in str(err).splitlines() if "ParallelError" in line]
                if not refusal:
                    raise
                print(f"| {b} | {'sync' if sync else 'unsync'} | refused: {refusal[-1].split(': ', 1)[-1]} |")
                continue
            print(format_results(results[-1:]).splitlines()[-1 - ("unsync_vs_single" in results[-1])], flush=True)
    pairs = agreement(results)
    print(format_results(results))
    print(format_agreement(pairs))
    if args.json:
        checks = [{k: v for k, v in r.items() if k != "after_step"} for r in results]
        files.atomic_write_text(args.json, json.dumps({"checks": checks, "agreement": pairs}, indent=1))
    return 0 if all(r["ok"] for r in results + pairs) else 1


if __name__ == "__main__":
    sys.exit(main())
