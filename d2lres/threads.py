"""Thread counts when several frameworks share a process.

Importing MXNet sets the shared OpenMP runtime to one thread, which halves PyTorch's speed on
two cores whichever of the two is imported first. Unless the user chose ``OMP_NUM_THREADS``,
the backends call :func:`restore_torch_threads` after their imports.
"""
from __future__ import annotations

import os
import sys


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def restore_torch_threads() -> None:
    """Give PyTorch every available core again if MXNet took them and the user set nothing."""
    torch = sys.modules.get("torch")
    if torch is None or "mxnet" not in sys.modules or "OMP_NUM_THREADS" in os.environ:
        return
    if torch.get_num_threads() < available_cores():
        torch.set_num_threads(available_cores())
