"""Several JAX processes (on one machine or several) as one run: ``jax.distributed.initialize``
from the environment, called where a run starts (``d2lres.host.process.configure``), before JAX
computes anything.

JAX 0.7.1 reads the coordinator's address itself (``JAX_COORDINATOR_ADDRESS``, also
``JAX_LOCAL_DEVICE_IDS``, ``JAX_COORDINATOR_BIND_ADDRESS``), but not the number of processes or
this process's index (it finds those only under a cluster it detects: Slurm, Open MPI, Cloud TPU,
Kubernetes). d2lres reads them from :data:`NUM_PROCESSES` and :data:`PROCESS_ID`:

    JAX_COORDINATOR_ADDRESS=host0:1234  D2LRES_NUM_PROCESSES=2  D2LRES_PROCESS_ID=0|1

in every process (the coordinator is process 0's machine; the port must be free there and
reachable from the others). Without ``JAX_COORDINATOR_ADDRESS`` nothing happens (one process).
With it and no ``D2LRES_NUM_PROCESSES`` / ``D2LRES_PROCESS_ID``, JAX's cluster detection fills them
in where it can. On the CPU the processes' collectives run over gloo
(``jax_cpu_collectives_implementation``, JAX 0.7.1's default, set explicitly unless
``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` chooses another); GPUs use NCCL.
"""
from __future__ import annotations

import os

import jax

from ..errors import UserValueError
from ..host.process import with_xla_flags

COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # JAX's own variable
NUM_PROCESSES = "D2LRES_NUM_PROCESSES"
PROCESS_ID = "D2LRES_PROCESS_ID"


def settings(env=None) -> dict | None:
    """``jax.distributed.initialize``'s arguments from ``env`` (default ``os.environ``), or None
    when no coordinator is set (a single process)."""
    env = os.environ if env is None else env
    address = env.get(COORDINATOR)
    if not address:
        return None
    out = {"coordinator_address": address}
    for key, name in ((NUM_PROCESSES, "num_processes"), (PROCESS_ID, "process_id")):
        if env.get(key):
            try:
                out[name] = int(env[key])
            except ValueError:
                raise UserValueError(f"{key} must be an integer, got {env[key]!r}") from None
    return out


def initialize(env=None) -> bool:
    """``jax.distributed.initialize`` from the environment (see the module docstring), once;
    whether this process is part of a multi-process run."""
    if jax.distributed.is_initialized():
        return True
    args = settings(env)
    if args is None:
        return False
    if not (os.environ if env is None else env).get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**args)
    except ValueError as err:
        raise UserValueError(f"{err} -- for a multi-process JAX run set {COORDINATOR}=host:port, "
                             f"{NUM_PROCESSES}=N and {PROCESS_ID}=0..N-1 in every process") from None
    return True


def local_environments(num_processes: int, port: int | None = None, env=None, *, devices_per_process: int = 1,
                       host: str = "127.0.0.1") -> list[dict]:
    """The environments of ``num_processes`` JAX processes of one run on this machine, the
    coordinator on ``host:port`` (a free port by default; bound to ``host`` only), each process
    with ``devices_per_process`` CPU devices (``--xla_force_host_platform_device_count``)."""
    base = dict(os.environ if env is None else env)
    from ..loop.split import free_port
    port = port or free_port(host)
    base.update({COORDINATOR: f"{host}:{port}", "JAX_COORDINATOR_BIND_ADDRESS": f"{host}:{port}",
                 NUM_PROCESSES: str(num_processes),
                 "XLA_FLAGS": with_xla_flags(base.get("XLA_FLAGS", ""),
                                             f"--xla_force_host_platform_device_count={devices_per_process}")})
    base.pop("D2LRES_REPLICAS", None)
    return [{**base, PROCESS_ID: str(i)} for i in range(num_processes)]
