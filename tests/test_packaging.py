"""The sdist and the wheel that ``python -m build`` makes: the wheel's metadata (version, Python
versions, dependency ranges, extras, entry point) and file list. That the wheel works outside the
checkout, per extra, is tests/test_notebooks.py's fresh venvs."""
from __future__ import annotations

import email
import tarfile
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import d2lres
from d2lres.host import backends

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        info = f"d2lres-{d2lres.__version__}.dist-info"
        return (email.message_from_bytes(z.read(f"{info}/METADATA")),
                z.read(f"{info}/entry_points.txt").decode(), z.namelist())


def _pins(name: str) -> dict[str, Version]:
    lines = (ROOT / "constraints" / name).read_text().splitlines()
    return {r.name: Version(str(r.specifier).removeprefix("==")) for r in
            (Requirement(line) for line in lines if line.strip() and not line.startswith("#"))}


def test_wheel_metadata(dist):
    meta, entry_points, _ = _metadata(dist["wheel"])
    assert meta["Name"] == "d2lres" and meta["Version"] == d2lres.__version__
    python = SpecifierSet(meta["Requires-Python"])
    assert all(f"3.{m}" in python for m in (11, 12, 13)) and "3.10" not in python and "3.14" not in python
    assert {f"Programming Language :: Python :: 3.{m}" for m in (11, 12, 13)} <= set(meta.get_all("Classifier"))
    assert meta["License-Expression"] == "Apache-2.0"
    # every backend's extra, the sets' extras and the tools' extras
    extras = set(meta.get_all("Provides-Extra"))
    assert extras == {"torch", "tf", "tf-gpu", "mxnet", "jax", "all", "current", "notebooks", "lab", "dev", "book"}
    assert {extra for _, _, extra in backends.BACKENDS.values()} <= extras
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    base = {r.name: r for r in requires if r.marker is None}
    assert set(base) == {"numpy", "matplotlib", "tqdm"}

    def of_extra(extra):
        return {r.name for r in requires if r.marker and r.marker.evaluate({"extra": extra, "python_version": "3.13"})}

    assert {"torch"} <= of_extra("torch") and "tensorflow" not in of_extra("torch")
    assert {"tensorflow-cpu"} <= of_extra("tf") and {"tensorflow"} <= of_extra("tf-gpu")
    assert {"jax", "flax", "optax"} <= of_extra("jax")
    assert {"mxnet", "numpy"} <= of_extra("mxnet")
    assert "jupyterlab" in of_extra("lab") and "jupyterlab" not in of_extra("torch") | of_extra("jax")
    assert {"build", "pytest", "ruff", "hypothesis"} <= of_extra("dev")
    assert {"sphinx", "myst-parser", "sphinx-design", "playwright"} <= of_extra("book")
    # the ranges admit both sets' pins (the sets are what is tested), and MXNet's excludes numpy 2
    ranges = {}
    for r in requires:
        ranges.setdefault(r.name, []).append(r.specifier)
    for pins, without in (("all.txt", ()), ("current.txt", ("mxnet",))):
        for name, version in _pins(pins).items():
            if name in ranges and name not in without:
                assert any(spec.contains(version) for spec in ranges[name]), (pins, name, version, ranges[name])
    mxnet_numpy = [r.specifier for r in requires if r.name == "numpy" and r.marker and "mxnet" in str(r.marker)]
    assert mxnet_numpy and not any(s.contains("2.0") for s in mxnet_numpy)
    assert "[console_scripts]\nd2lres = d2lres.cli:main" in entry_points


def test_wheel_holds_the_package_and_nothing_else(dist):
    _, _, names = _metadata(dist["wheel"])
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "d2lres").rglob("*.py"))
    assert sorted(n for n in names if not n.startswith("d2lres-")) == sources
    assert {"d2lres/torch/__init__.py", "d2lres/data/sources.py", "d2lres/loop/plots.py",
            "d2lres/spec.py"} <= set(names)
    assert dist["wheel"].stat().st_size < 1_000_000


def test_sdist_holds_what_building_and_testing_need(dist):
    with tarfile.open(dist["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"pyproject.toml", "Makefile", "constraints/all.txt", "constraints/current.txt", "notebooks/resnet.md",
            "tests/conftest.py", "d2lres/cli.py", "scripts/gpu-check"} <= names
    assert {f"notebooks/{fw}/resnet.ipynb" for fw in ("pytorch", "tensorflow", "mxnet", "jax")} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_pyproject_names_the_build_tool():
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"
    assert "build" in _pins("all.txt") and "build" in _pins("current.txt")
