"""What every report and ``metrics.json`` records about where it was made: the date, d2lres's
version and commit, Python's and the frameworks' versions, the CPU (and GPU), and the data set's
origin with its checksums. Imports no framework."""
from __future__ import annotations

import datetime
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..host import backends, isa

#: Distribution names of each backend's framework(s).
FRAMEWORKS = {"torch": ("torch",), "tf": ("tensorflow", "tensorflow-cpu", "keras"), "mxnet": ("mxnet",),
              "jax": ("jax", "jaxlib", "flax", "optax")}


def commit() -> str | None:
    """The git commit of d2lres's checkout (with ``+changes`` when it has uncommitted ones), if any:
    none for an installed wheel, whose folder above ``d2lres/`` is not a checkout."""
    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        return None
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=10)
        head = run("rev-parse", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (head.stdout.strip()[:12] + ("+changes" if dirty else "")) if head.returncode == 0 else None


def _versions(names) -> dict[str, str]:
    found = {}
    for backend in names:
        for dist in FRAMEWORKS.get(backend, ()):
            try:
                found[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
    return found


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def stamps(names, data: dict, held: str | None = None) -> dict:
    """The stamps of a run of the backends ``names`` on the data ``data`` (its stamp:
    ``d2lres.data.data_stamp(data_dir)``)."""
    names = [backends.canonical(n) for n in names]
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "d2lres": __version__, "commit": commit(), "python": platform.python_version(),
            "frameworks": _versions(names), "cpu": isa.cpu_info(held), "gpus": _gpus(),
            "data": data}


def describe(s: dict) -> list[str]:
    """Markdown lines for a report's header."""
    data = s["data"]
    return [f"- date: {s['date']}; d2lres {s['d2lres']}" + (f" (commit {s['commit']})" if s["commit"] else "")
            + f"; Python {s['python']}; " + ", ".join(f"{k} {v}" for k, v in s["frameworks"].items()),
            f"- CPU: {isa.describe(s['cpu'])}; GPU: {', '.join(s['gpus']) or 'none'}",
            f"- data: Fashion-MNIST, {data['origin']} ({data['dir']}); MD5 "
            + ", ".join(f"{k} {v}" for k, v in data["md5"].items())]
