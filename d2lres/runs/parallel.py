"""Data-parallel training, the framework-free part: how a global batch is split over replicas,
synchronized BatchNorm as an option, and the check that one data-parallel step is the
single-device step on the same global batch.

**The split.** A global batch of ``n`` images is cut into ``replicas`` contiguous shards whose
sizes differ by at most one (``numpy.array_split``): replica ``r`` gets rows
``shard_slices(n, R)[r]``. Each replica's loss is its shard's summed cross-entropy divided by the
*global* ``n``; the gradients are summed over replicas (an all-reduce). So the gradient is the
gradient of the global batch's mean loss, whatever the shard sizes (the last batch of an epoch
need not divide evenly). A framework that averages gradients over replicas (PyTorch's DDP) gets
the weights :func:`loss_weights` on the per-replica mean instead; it is the same arithmetic.

**Synchronized BatchNorm (default: on).** BatchNorm normalizes with the statistics of the batch
it sees. Synchronized, every replica normalizes with the mean and variance of the *global* batch
(sums all-reduced over replicas), and the running statistics are updated with them (the unbiased
variance over the global count). Then a data-parallel step is the single-device step on the same
global batch -- same loss, same gradient, same new weights and running statistics, within float32
reduction order -- so a run on N devices is the run on one device with the same global batch,
learning rate and schedule, and its checkpoint resumes anywhere. That is why it is the default:
the result does not depend on how many devices trained it. The cost is two small all-reduces per
BatchNorm layer forward (and their backward) per step, negligible next to the gradient all-reduce
for ResNet-18 (7,808 statistics against 11.2 M gradients).

Unsynchronized (``sync_bn=False``), each replica normalizes with its own shard's statistics, as
DDP with plain ``BatchNorm2d``, Keras's default BatchNormalization, MXNet's ``BatchNorm`` on a list
of contexts and a per-device JAX step do. That is a different function, and exactly this one
(:func:`emulate_unsynchronized`): the loss is the shard-size-weighted mean of the single-device
losses of each shard on its own, the gradient is the same mean of the per-shard gradients, and the
running statistics -- which diverge per replica -- are averaged over replicas after every step
(d2lres does this in every backend, so that one set of statistics is saved). With small shards
(a few images per device) the shard statistics are noisy and the model learns differently; with
large shards the difference shrinks but does not vanish.

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
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..core import spec
from ..errors import UserError
from ..host import backends, process
from . import files, jobs, signals

#: Synchronized BatchNorm unless asked otherwise (see the module docstring).
SYNC_BN_DEFAULT = True
#: The quantities a step check compares (a subset of ``d2lres.checks.QUANTITIES``).
STEP_QUANTITIES = ("step_loss", "step_weights", "bn_stats")
#: Seconds a check's subprocess may take before it is killed.
CHECK_TIMEOUT = 600
#: The address of every process of a run on one machine (tests stay on it).
LOOPBACK = "127.0.0.1"


class ParallelError(UserError, ValueError):
    """Data-parallel training cannot run as asked; the message says why and what to do."""


def get_arch(arch=None) -> spec.Arch:
    """``spec.get_arch`` that also takes :func:`arch_key`'s ``[depth, version, flavour]`` (JSON)."""
    return spec.get_arch(*arch) if isinstance(arch, (list, tuple)) else spec.get_arch(arch)


def arch_key(arch=None) -> list:
    """``[depth, version, flavour]``: an architecture through JSON or a process boundary."""
    a = get_arch(arch)
    return [a.depth, a.version, a.flavour]


def shard_sizes(n: int, replicas: int) -> list[int]:
    """Images per replica for a global batch of ``n``: contiguous shards, sizes differing by at
    most one, the larger ones first (``numpy.array_split``)."""
    if replicas < 1:
        raise ParallelError(f"the number of replicas must be >= 1, got {replicas}")
    if n < replicas:
        raise ParallelError(f"a batch of {n} images cannot be split over {replicas} replicas (each needs one "
                            f"at least); use a global batch of {replicas} or more, or fewer --devices")
    base, extra = divmod(n, replicas)
    return [base + (r < extra) for r in range(replicas)]


def shard_slices(n: int, replicas: int) -> list[slice]:
    """The rows of the global batch each replica trains on (see :func:`shard_sizes`)."""
    out, start = [], 0
    for size in shard_sizes(n, replicas):
        out.append(slice(start, start + size))
        start += size
    return out


def split(batch, replicas: int) -> list:
    """``batch`` (an array, or a tuple of arrays with the batch on axis 0) cut into the replicas' shards."""
    if isinstance(batch, tuple):
        parts = [split(b, replicas) for b in batch]
        return [tuple(p[r] for p in parts) for r in range(replicas)]
    return [batch[s] for s in shard_slices(int(batch.shape[0]), replicas)]


def loss_weights(n: int, replicas: int) -> list[float]:
    """Factors on each replica's *mean* loss so that gradients *averaged* over replicas (DDP) are
    the gradient of the global mean loss: ``replicas * shard_size / n`` (all 1 for even shards)."""
    return [replicas * size / n for size in shard_sizes(n, replicas)]


def bn_batch_size(n: int, replicas: int, sync_bn: bool, replica: int = 0) -> int:
    """Images a replica's BatchNorm computes statistics over: the global ``n`` when synchronized,
    its shard otherwise."""
    return n if sync_bn else shard_sizes(n, replicas)[replica]


# --- the check ---------------------------------------------------------------------------------

def step_differences(a: dict, b: dict, scale: dict | None = None) -> dict[str, float]:
    """``d2lres.checks.differences`` restricted to one step: loss, updated weights, BatchNorm
    running statistics of two results ``{"step_loss": float, "after_step": {name: array}}``."""
    from ..verify.checks import differences
    dummy = {"eval_logits": np.zeros(1), "train_logits": np.zeros(1)}
    full = differences({**dummy, **a}, {**dummy, **b}, scale=None if scale is None else {**dummy, **scale})
    return {q: full[q] for q in STEP_QUANTITIES}


def emulate_unsynchronized(single_step, weights: dict, X: np.ndarray, y: np.ndarray, lr: float,
                           replicas: int) -> dict:
    """What an unsynchronized data-parallel step computes, from single-device steps:
    ``single_step(weights, X, y, lr) -> {"step_loss", "after_step"}`` on each shard from the same
    ``weights``, combined with the shard sizes as weights (``s_r / n``): the loss, the new weights
    (a plain SGD step, and the first step with momentum or weight decay, is linear in the
    gradient: ``sum_r s_r / n (w - lr g_r) = w - lr sum_r s_r / n g_r``) and the running
    statistics (averaged over replicas with the same weights; equal for even shards)."""
    n = int(X.shape[0])
    parts = [single_step(weights, X[s], y[s], lr) for s in shard_slices(n, replicas)]
    share = [size / n for size in shard_sizes(n, replicas)]
    return {"step_loss": float(sum(c * p["step_loss"] for c, p in zip(share, parts))),
            "after_step": {k: sum(c * p["after_step"][k].astype(np.float64) for c, p in zip(share, parts))
                           .astype(np.float32) for k in parts[0]["after_step"]}}


def step_inputs(input_shape=(1, 64, 64), batch_size: int = 4, num_classes: int = 10, seed: int = 0, arch=None):
    """``(weights, X, y)``: the step check's weights (``checks.test_weights`` with the SGD-step
    check's BatchNorm shift, away from ReLU's kink) and a random global batch (X NCHW)."""
    from ..verify.checks import STEP_BN_SHIFT, test_weights
    rng = np.random.default_rng(seed)
    X = rng.random((batch_size, *input_shape), dtype=np.float32)
    y = rng.integers(0, num_classes, batch_size)
    return test_weights(num_classes, input_shape[0], seed, STEP_BN_SHIFT, arch=arch), X, y


def single_device_step(backend: str, weights: dict, X: np.ndarray, y: np.ndarray, lr: float, *, arch=None,
                       momentum: float = 0.0, weight_decay: float = 0.0) -> dict:
    """One step of the backend's ordinary ``Trainer`` on one device from ``weights``."""
    mod = backends.load(backend)
    a = get_arch(arch)
    net = mod.resnet(a.depth, a.version, num_classes=10, in_channels=X.shape[1], flavour=a.flavour)
    mod.set_weights(net, weights)
    trainer = mod.Trainer(net, momentum=momentum, weight_decay=weight_decay, device=mod.try_gpu())
    loss, _ = trainer.step(*trainer.convert(X, y), lr)
    return {"step_loss": loss, "after_step": trainer.get_weights()}


def data_parallel_step(backend: str, weights: dict, X: np.ndarray, y: np.ndarray, lr: float, *, replicas: int = 2,
                       sync_bn: bool = SYNC_BN_DEFAULT, arch=None, momentum: float = 0.0,
                       weight_decay: float = 0.0) -> dict:
    """One data-parallel step of ``backend``'s ``ParallelTrainer`` on ``replicas`` replicas from
    ``weights`` on the global batch ``(X, y)`` (NCHW numpy, through the trainer's ``convert``):
    ``{"step_loss", "after_step"}``. JAX and MXNet use this; PyTorch (processes it spawns) and
    TensorFlow (the net built in the strategy's scope) have their own ``data_parallel_step``."""
    mod = backends.load(backend)
    a = get_arch(arch)
    net = mod.resnet(a.depth, a.version, num_classes=10, in_channels=X.shape[1], flavour=a.flavour)
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
    from ..verify.checks import TOLERANCES
    arch = get_arch(arch)
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
    """``d2lres.<backend>.parallel`` (imports the framework)."""
    return importlib.import_module(f"d2lres.{backends.canonical(backend)}.parallel")


def environment(backend: str, replicas: int, env: dict | None = None) -> dict:
    """The environment a process needs for ``replicas`` CPU replicas of ``backend`` (set before the
    framework is imported): JAX's ``--xla_force_host_platform_device_count``; the others need none
    (TensorFlow's logical CPUs are configured by ``d2lres.tf.parallel`` on import, PyTorch starts
    its own processes, MXNet's ``cpu(i)`` contexts exist)."""
    env = dict(os.environ if env is None else env)
    if backends.canonical(backend) == "jax":
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={replicas}"])
    env["D2LRES_REPLICAS"] = str(replicas)
    return env


def free_ports(count: int = 1, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now, ascending (for launchers and tests)."""
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            socks[-1].bind((host, 0))
        return sorted(s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()


def free_port(host: str = LOOPBACK) -> int:
    """One TCP port free on ``host`` now."""
    return free_ports(1, host)[0]


def launch_command(backend: str, devices: int, job: str) -> tuple[list[str], dict]:
    """``(argv, env)`` of the process that runs the JSON job ``job`` (``python -m d2lres.run``) on
    ``devices`` devices of this machine with ``backend``'s own engine: PyTorch through ``torchrun``
    (``d2lres.torch.launch``: one process per device), the others as one process set up by
    :func:`environment`."""
    launcher = (("-m", "d2lres.torch.launch", "--standalone", f"--nproc-per-node={devices}")
                if backends.canonical(backend) == "torch" and devices > 1 else ())
    return jobs.command("d2lres.run", job, launcher=launcher), environment(backend, devices)


def launched(env=None) -> bool:
    """Whether this process is one of several that a multi-process launcher started for one run
    (torchrun's ``WORLD_SIZE``, TensorFlow's ``TF_CONFIG``, JAX's ``JAX_COORDINATOR_ADDRESS``, MXNet's
    ``DMLC_ROLE=worker``)."""
    env = os.environ if env is None else env
    return (int(env.get("WORLD_SIZE", "1")) > 1 or bool(env.get("TF_CONFIG") or env.get("JAX_COORDINATOR_ADDRESS"))
            or env.get("DMLC_ROLE") == "worker")


def die_with_launcher() -> None:
    """In a process of a multi-process launcher: be killed when the launcher dies. torchrun starts
    its workers in sessions of their own, so killing the command (``kill``, a closed terminal)
    would otherwise leave them training, holding the run folder (Linux ``PR_SET_PDEATHSIG``).
    Outside such a process (:func:`launched`) it does nothing."""
    if launched():
        signals.die_with_parent()


def process_rank(env=None) -> int:
    """This process's index in a multi-process run, from its launcher's environment (torchrun's
    ``RANK``, ``TF_CONFIG``'s task index, ``D2LRES_PROCESS_ID`` with JAX's coordinator: see
    ``d2lres.jax.distributed``, and of MXNet's dist_sync workers: see ``d2lres.mxnet.launch``); 0
    in a single process. Rank 0 writes the run's files."""
    env = os.environ if env is None else env
    if "RANK" in env:
        return int(env["RANK"])
    if env.get("JAX_COORDINATOR_ADDRESS") or env.get("DMLC_ROLE") == "worker":  # JAX's, MXNet's dist_sync workers
        return int(env.get("D2LRES_PROCESS_ID") or 0)
    if env.get("TF_CONFIG"):
        return int(json.loads(env["TF_CONFIG"]).get("task", {}).get("index", 0))
    return 0


def run_check(backend: str, replicas: int = 2, sync_bn: bool = True, *, timeout: float = CHECK_TIMEOUT,
              **options) -> dict:
    """:func:`check_step` in a fresh process set up for ``replicas`` replicas of ``backend``
    (bounded by ``timeout`` seconds); returns its result."""
    return run_checks(backend, replicas, (sync_bn,), timeout=timeout, **options)[0]


def run_checks(backend: str, replicas: int = 2, modes=(True, False), *, timeout: float = CHECK_TIMEOUT,
               **options) -> list[dict]:
    """:func:`run_check` for each BatchNorm mode of ``modes`` (``sync_bn``), all in one fresh
    process (one start-up of the framework); the results in that order."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        job = {"backend": backend, "replicas": replicas, "sync_bn": list(modes), **options,
               "arch": arch_key(options.get("arch")), "out": str(out)}
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
    from ..verify.checks import TOLERANCES
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
