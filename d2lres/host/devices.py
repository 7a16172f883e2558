"""Devices are real: one rule, without a framework, for what names a device, whether it exists and
how reports spell it. A backend's ``Trainer`` resolves its ``device`` argument with :func:`resolve`,
giving its own GPU count and constructor; so ``"cpu"``, ``"gpu:0"``, ``"cuda:1"``, ``"/GPU:0"`` and
the framework's own device objects are accepted or refused alike in every backend, and a device
that does not exist is refused instead of silently training elsewhere."""
from __future__ import annotations

import re
from typing import Callable

from ..errors import UserError

#: Spellings of a device: cpu, gpu, gpu:N, cuda:N, /GPU:N, /device:GPU:N, /job:.../device:CPU:0.
_PATTERN = re.compile(r"^(?:.*/)?(?:device:)?(cpu|gpu|cuda|mps)(?::(\d+))?$", re.IGNORECASE)


class DeviceError(UserError, ValueError):
    """A device that is not understood or does not exist on this machine."""


def parse(device) -> tuple[str, int]:
    """``("cpu" | "gpu", index)`` of a device string or a framework's device object (PyTorch
    ``torch.device``, MXNet ``Context``, JAX ``Device``, TensorFlow's device strings)."""
    if isinstance(device, str):
        match = _PATTERN.match(device.strip().lstrip("/"))
        if not match:
            raise DeviceError(f"device {device!r} is not understood; use 'cpu', 'gpu' or 'gpu:N' (also accepted: "
                              f"'cuda:N', '/GPU:N', or the framework's own device object)")
        kind = {"cpu": "cpu", "mps": "mps"}.get(match[1].lower(), "gpu")
        return kind, int(match[2] or 0)
    for kind_attr, index_attr in (("type", "index"), ("device_type", "device_id"), ("platform", "id")):
        kind = getattr(device, kind_attr, None)
        if isinstance(kind, str):
            index = getattr(device, index_attr, None) or 0
            return parse(f"{kind}:{index}") if kind.lower() in ("cpu", "gpu", "cuda", "mps") else _unknown(device)
    return _unknown(device)


def _unknown(device):
    raise DeviceError(f"device {device!r} ({type(device).__name__}) is not understood; use 'cpu', 'gpu' or "
                      f"'gpu:N', or the framework's own CPU or GPU device")


def label(kind: str, index: int) -> str:
    """The one spelling in reports: ``cpu`` or ``gpu:N``."""
    return kind if kind in ("cpu", "mps") else f"gpu:{index}"


def resolve(device, backend: str, gpus: int, make: Callable[[str, int], object], mps: bool = False):
    """The framework's device for ``device`` (``make(kind, index)``), after checking it exists:
    ``gpus`` is how many GPUs the framework sees, ``mps`` whether it has Apple's (PyTorch only). A
    CPU index other than 0 is refused too."""
    kind, index = parse(device)
    if kind == "mps" and not (mps and index == 0):
        raise DeviceError(f"device {device!r} does not exist: {backend} has no Apple GPU (mps) on this machine; use "
                          f"'cpu' or 'gpu:N' (or leave it out: the first GPU, else the CPU)")
    if kind == "gpu" and index >= gpus:
        have = f"{gpus} GPU(s), gpu:0 to gpu:{gpus - 1}" if gpus else "no GPU"
        raise DeviceError(f"device {device!r} does not exist: {backend} sees {have} on this machine; use 'cpu'"
                          + (" or one of those" if gpus else "") + " (or leave it out: the first GPU, else the CPU)")
    if kind == "cpu" and index != 0:
        raise DeviceError(f"device {device!r} does not exist: there is one CPU device, 'cpu' (cpu:0)")
    return make(kind, index)


def describe(device, backend: str) -> str:
    """``cpu (torch: cpu)``, ``gpu:0 (tf: /GPU:0)``: the one spelling, the framework's own beside it."""
    try:
        kind, index = parse(device)
    except DeviceError:
        return str(device)
    return f"{label(kind, index)} ({backend}: {device})"
