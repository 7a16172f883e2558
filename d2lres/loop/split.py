"""Data parallel, the framework-free split that every backend's data-parallel trainer builds on
(the checks that a data-parallel step is the single-device step are ``d2lres.parallel``, which
re-exports these names).

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

Also here: how the processes of one run are launched and find their rank (the launchers'
environment), which the backends' launchers and ``d2lres.run`` share.
"""
from __future__ import annotations

import json
import os
import socket

import numpy as np

from ..core.description import SYNC_BN_DEFAULT  # noqa: F401 (the split's default, re-exported)
from ..errors import UserError
from ..host.process import with_xla_flags
from ..util import jobs, signals

#: The address of every process of a run on one machine (tests stay on it).
LOOPBACK = "127.0.0.1"


class ParallelError(UserError, ValueError):
    """Data-parallel training cannot run as asked; the message says why and what to do."""


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


def environment(backend: str, replicas: int, env: dict | None = None) -> dict:
    """The environment a process needs for ``replicas`` CPU replicas of ``backend`` (canonical; set before the
    framework is imported): JAX's ``--xla_force_host_platform_device_count``; the others need none
    (TensorFlow's logical CPUs are configured by ``d2lres.tf.parallel`` on import, PyTorch starts
    its own processes, MXNet's ``cpu(i)`` contexts exist)."""
    env = dict(os.environ if env is None else env)
    if backend == "jax":
        count = f"--xla_force_host_platform_device_count={replicas}"
        env["XLA_FLAGS"] = with_xla_flags(env.get("XLA_FLAGS", ""), count)
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


def launch_command(backend: str, devices: int, job: dict) -> tuple[list[str], dict]:
    """``(argv, env)`` of the process that runs the job ``job`` (``python -m d2lres.run``) on
    ``devices`` devices of this machine with ``backend``'s own engine: PyTorch through ``torchrun``
    (``d2lres.torch.launch``: one process per device), the others as one process set up by
    :func:`environment`."""
    launcher = (("-m", "d2lres.torch.launch", "--standalone", f"--nproc-per-node={devices}")
                if backend == "torch" and devices > 1 else ())
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
