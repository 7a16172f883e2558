"""Which CPU and instruction set a timing came from, and holding oneDNN/MKL to AVX2.

Most learners' CPUs have AVX2 and no AVX-512/AMX. The frameworks' CPU kernels (oneDNN in
PyTorch, TensorFlow and MXNet; MKL) choose their code by the CPU, and can be told to use no
more than AVX2, so an AVX2 machine can be measured on a newer one:

- ``ONEDNN_MAX_CPU_ISA``: oneDNN 2.5+ (PyTorch, TensorFlow); verified by their oneDNN log line
  ``isa:Intel AVX2`` (:func:`probe`).
- ``DNNL_MAX_CPU_ISA``: the oneDNN 2.x that MXNet 1.9.1 bundles reads this name.
- ``MKL_ENABLE_INSTRUCTIONS``: MKL (PyTorch's matmuls on x86).
- ``OPENBLAS_CORETYPE=Haswell``: OpenBLAS (numpy's and MXNet's matmuls) on its AVX2 kernels.
- ``XLA_FLAGS=--xla_cpu_max_isa=AVX2``, merged into the flags a process has
  (``d2lres.host.process.overlay``): the code XLA compiles for JAX (its fusions; not the
  convolutions and matmuls that jaxlib ships compiled, which choose by the CPU as it is).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from ..errors import UserValueError
from .process import overlay

#: What a timed process held to AVX2 adds to ``XLA_FLAGS``.
XLA_AVX2_FLAG = "--xla_cpu_max_isa=AVX2"
#: What ``--isa avx2`` sets in every timed process (``XLA_FLAGS`` merged: ``process.overlay``).
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "OPENBLAS_CORETYPE": "Haswell", "XLA_FLAGS": XLA_AVX2_FLAG}
ISAS = ("native", "avx2")
#: The CPU flags of bfloat16 units (AVX-512 BF16 dot products; AMX tiles).
BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def isa_env(isa: str) -> dict[str, str]:
    """Environment variables that hold the frameworks to ``isa`` (``native``: none); laid over a
    process's own with ``process.overlay``, which keeps its other XLA flags."""
    if isa not in ISAS:
        raise UserValueError(f"unknown instruction set {isa!r}; choose one of {', '.join(ISAS)}")
    return dict(AVX2_ENV) if isa == "avx2" else {}


def timed_process_env(isa: str) -> dict[str, str]:
    """The environment of a timed process (bench, profile): this one's, TensorFlow's INFO lines
    off unless asked for, held to ``isa`` (and, held to AVX2, XLA's compiled code too)."""
    return overlay({**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")},
                   isa_env(isa))


def held_isa() -> str:
    """``avx2`` when this process's environment holds oneDNN to AVX2, else ``native``."""
    return "avx2" if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2" else "native"


def cpu_info(held: str | None = None) -> dict:
    """CPU model, its ISA class (avx512+amx / avx512 / avx2 / older), whether it has bfloat16
    units (``bf16``: one of :data:`BF16_FLAGS`), cores, and the ISA the
    frameworks are held to (``held="avx2"``; otherwise what this process's environment says, which
    the timed processes inherit)."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    amx = any(f.startswith("amx") for f in flags)
    avx512 = "avx512f" in flags
    cls = "avx512+amx" if amx else "avx512" if avx512 else "avx2" if "avx2" in flags else "pre-avx2"
    return {"model": model, "isa_class": cls, "avx2": "avx2" in flags, "avx512": avx512, "amx": amx,
            "bf16": bool(flags & BF16_FLAGS),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            # "native" adds no variable, so a hold in this process's environment still applies
            "held": held if held == "avx2" else held_isa()}


def describe(info: dict | None = None) -> str:
    """One line for reports: ``AMD EPYC ... (avx2; 2 cores)``, with ``, held to AVX2`` when so."""
    info = info or cpu_info()
    held = ", held to AVX2" if info["held"] == "avx2" else ""
    return f"{info['model']} ({info['isa_class']}; {info['cores']} cores{held})"


_PROBES = {
    "torch": "import torch; torch.nn.Conv2d(3, 8, 3)(torch.ones(2, 3, 16, 16))",
    "tf": "import tensorflow as tf; tf.nn.conv2d(tf.ones((2, 16, 16, 3)), tf.ones((3, 3, 3, 8)), 1, 'VALID')",
}


def probe(framework: str, env: dict[str, str] | None = None) -> str | None:
    """The instruction set oneDNN reports in ``framework`` (torch, tf) under ``env``, from its own
    log line (``isa:Intel AVX2``), run in a fresh process; None if it printed none."""
    full = {**overlay(os.environ, env or {}), "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", _PROBES[framework]], env=full, capture_output=True, text=True,
                         timeout=300)
    for line in (out.stdout + out.stderr).splitlines():
        if ",info,cpu,isa:" in line:
            return line.split("isa:", 1)[1].strip()
    return None
