"""Thread counts when several frameworks share a process.

OpenMP threads that spin while they wait collapse when another program takes a core: on loaded
cores a small PyTorch training step runs many times faster with ``OMP_WAIT_POLICY=PASSIVE`` than
with the default wait policy, and on idle cores the passive policy costs nothing
(docs/performance.md gives the figures). Unless the user chose a policy, d2lres sets the passive
one when it is imported, before any framework (it has no effect on a framework imported before
d2lres).

Importing MXNet sets the shared OpenMP runtime to one thread, which leaves PyTorch a single
core whichever of the two is imported first; and MXNet's own operators use fewer OpenMP
threads than there are cores unless told, which slows its training. Unless the user chose
``OMP_NUM_THREADS``, d2lres uses every core in both.
"""
from __future__ import annotations

import os
import sys

from . import process

#: ``OMP_NUM_THREADS`` as the user set it (None: d2lres chooses).
USER_OMP_NUM_THREADS = os.environ.get("OMP_NUM_THREADS")


def prepare_openmp() -> None:
    """Call before any framework is imported: idle OpenMP threads sleep instead of spinning."""
    process.prepare("d2lres")


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare_mxnet_threads() -> None:
    """Call before importing MXNet: let its operators use every core."""
    if USER_OMP_NUM_THREADS is None:
        os.environ.pop("OMP_NUM_THREADS", None)  # set since d2lres was imported, not by the user
        process.prepare("d2lres.mxnet", available_cores())


def restore_torch_threads() -> None:
    """Give PyTorch every available core again if MXNet took them and the user set nothing."""
    torch = sys.modules.get("torch")
    if torch is None or "mxnet" not in sys.modules or USER_OMP_NUM_THREADS is not None:
        return
    if torch.get_num_threads() < available_cores():
        torch.set_num_threads(available_cores())
