"""Each framework's chapter code, executed once in a real Jupyter kernel, cached by a hash.

The outputs serve both languages (their code cells are the same). The key is a hash of the
framework, the mode (``fast``: ``D2LRES_FAST=1``; ``full``: the chapter's settings), the cells'
code, the installed set (its constraints file) and d2lres's own source, so a rebuild with
nothing changed executes nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("fast", "full")


def cache_key(framework: str, mode: str, cells: list[str], set_name: str) -> str:
    """The hash that names an execution's result."""
    h = hashlib.sha256(json.dumps([framework, mode, cells, set_name, sys.version.split()[0]]).encode())
    constraints = ROOT / "constraints" / f"{set_name}.txt"
    if constraints.exists():
        h.update(constraints.read_bytes())
    for path in sorted((ROOT / "d2lres").rglob("*.py")):
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:20]


def kernel_env(mode: str) -> dict[str, str]:
    """The kernel's environment: this one, d2lres importable, fast mode when asked."""
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "D2LRES_FAST")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if mode == "fast":
        env["D2LRES_FAST"] = "1"
    return env


def run_cells(cells: list[str], env: dict[str, str], timeout: int):
    """A notebook of ``cells`` executed in a fresh Python kernel with ``env``, in an empty folder."""
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with tempfile.TemporaryDirectory() as cwd:
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                         resources={"metadata": {"path": cwd}})
        client.execute(env=env)
    return nb


def execute(framework: str, cells: list[str], mode: str, cache_dir: Path, set_name: str = "all",
            timeout: int = 1800) -> tuple[list[list[dict]], bool]:
    """The outputs of ``cells`` (one list of nbformat outputs per cell) and whether they were
    executed now (False: read from the cache). An error in a cell stops the build."""
    import nbformat

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{framework}-{mode}-{cache_key(framework, mode, cells, set_name)}.ipynb"
    if path.exists():
        nb = nbformat.read(path, as_version=4)
        return [c.outputs for c in nb.cells], False
    tic = time.perf_counter()
    nb = run_cells(cells, kernel_env(mode), timeout)
    nb.metadata["d2lres"] = {"framework": framework, "mode": mode, "set": set_name,
                             "seconds": round(time.perf_counter() - tic, 1),
                             "executed": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return [c.outputs for c in nb.cells], True


def cached_metadata(framework: str, cells: list[str], mode: str, cache_dir: Path, set_name: str = "all"):
    """The stored run's metadata (mode, seconds, date), or None when it is not cached."""
    import nbformat

    path = Path(cache_dir) / f"{framework}-{mode}-{cache_key(framework, mode, cells, set_name)}.ipynb"
    return nbformat.read(path, as_version=4).metadata.get("d2lres") if path.exists() else None
