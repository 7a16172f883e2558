"""The training precisions every backend's ``Trainer`` takes (``precision=``), framework-free.

``float32`` is the default and the precision in which the backends are the same function to the
float32 bound (``d2lres.checks``). ``bf16`` is mixed precision: the convolutions and the dense
layer compute in bfloat16, the weights, the optimizer's state, BatchNorm's statistics and the
loss stay float32. Each backend says in its ``Trainer`` docstring how (PyTorch autocast, a Keras
mixed policy, a dtype policy on JAX's compiled step); MXNet refuses it.

Where the hardware has no bfloat16 units (a CPU without ``avx512_bf16`` / ``amx_bf16``, or oneDNN
held to AVX2) ``bf16`` still runs, in the frameworks' emulation, and :func:`warn_if_emulated`
says once per backend that it is slower than float32 there; a GPU without bfloat16 refuses it.
"""
from __future__ import annotations

import warnings

from ..errors import UserValueError

#: The precisions, the default first.
PRECISIONS = ("float32", "bf16")
DEFAULT = "float32"
#: The backends that train in bf16 (MXNet refuses it: its ``Trainer`` says why).
MIXED_BACKENDS = ("torch", "tf", "jax")


class SlowPrecisionWarning(UserWarning):
    """bfloat16 asked for where the hardware computes it slower than float32."""


def check(precision) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming them."""
    if precision not in PRECISIONS:
        raise UserValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)} "
                             f"(bf16: mixed precision, bfloat16 compute with float32 weights)")
    return precision


def emulated_reason(framework_native: bool | None = None, cpu: dict | None = None) -> str | None:
    """Why bfloat16 is emulated on this CPU (None: it has bfloat16 units the frameworks use): the
    CPU's flags, the oneDNN hold (``--isa avx2``) and the framework's own check
    (``framework_native``: None where the framework has none)."""
    from ..host import isa
    cpu = cpu or isa.cpu_info()
    reasons = []
    if not cpu["bf16"]:
        reasons.append(f"this CPU ({cpu['model']}) has no bfloat16 units (no {' or '.join(sorted(isa.BF16_FLAGS))})")
    if cpu["held"] == "avx2":
        reasons.append("oneDNN is held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2, --isa avx2)")
    if framework_native is False:
        reasons.append("the framework's own check says its CPU kernels have no bfloat16 path here")
    return "; ".join(reasons) or None


_WARNED: set[str] = set()


def warn_if_emulated(backend: str, framework_native: bool | None = None) -> str | None:
    """Warn (once per backend and process) that bf16 on this CPU is slower than float32, with the
    reason; returns the reason (None: native)."""
    reason = emulated_reason(framework_native)
    if reason and backend not in _WARNED:
        _WARNED.add(backend)
        warnings.warn(f"{backend}: bf16 runs here but slower than float32: {reason}. It computes the same "
                      f"mixed-precision function; use --precision float32 for speed on this machine",
                      SlowPrecisionWarning, stacklevel=3)
    return reason


def refuse_held_bf16(backend: str, cpu: dict | None = None) -> None:
    """``ValueError`` for bf16 on a CPU with bfloat16 units while oneDNN is held to AVX2: TensorFlow
    picks oneDNN's bfloat16 convolution by the CPU's flags, which the hold then cannot create (its
    convolutions fail with "could not create a primitive descriptor")."""
    from ..host import isa
    cpu = cpu or isa.cpu_info()
    if cpu["bf16"] and cpu["held"] == "avx2":
        raise UserValueError(f"{backend}: precision 'bf16' cannot run on this CPU ({cpu['model']}) while oneDNN is "
                             f"held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2, --isa avx2): its bfloat16 kernels are chosen "
                             f"by the CPU, which has bfloat16 units, and the hold refuses them; drop the hold or "
                             f"use precision='float32'")


def refuse_gpu(backend: str, device, supported: bool) -> None:
    """``ValueError`` for bf16 on a GPU without bfloat16 (``supported`` False, e.g. a T4)."""
    if not supported:
        raise UserValueError(f"{backend}: precision 'bf16' needs a GPU with bfloat16 (compute capability 8.0 or "
                             f"newer); {device} has none: use precision='float32'")
