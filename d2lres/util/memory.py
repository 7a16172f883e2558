"""Memory before it is taken: an estimate of a large allocation, compared with what the machine has
available, refused with both figures when it does not fit. Framework-free."""
from __future__ import annotations

import os
from math import prod

from ..errors import UserError

#: Share of the available memory one allocation may take.
SHARE = 0.9
FLOAT32 = 4


class MemoryNeeded(UserError, ValueError):
    """An allocation that would not fit in this machine's available memory."""


def available_bytes() -> int:
    """The memory available to a new allocation: ``MemAvailable`` of ``/proc/meminfo`` (Linux),
    else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:,.0f} MiB"


def require(nbytes: int, what: str, fix: str) -> None:
    """Raise :class:`MemoryNeeded` if ``nbytes`` (for ``what``) exceed :data:`SHARE` of the
    available memory; the message gives both figures and ``fix``."""
    have = available_bytes()
    if nbytes > SHARE * have:
        raise MemoryNeeded(f"{what} needs about {gib(nbytes)}, and this machine has {gib(have)} available; {fix}")


def images_bytes(n: int, side: int, channels: int = 1) -> int:
    """float32 bytes of ``n`` images of ``channels`` x ``side`` x ``side``."""
    return n * channels * side * side * FLOAT32


def activations_bytes(batch: int, rows) -> int:
    """A lower bound on a forward pass's float32 activations for ``batch`` images: the outputs of
    ``spec.walk``'s ``rows`` (each stage's output; training keeps them for the backward)."""
    return batch * FLOAT32 * sum(prod(shape) for _, shape, _ in rows)
