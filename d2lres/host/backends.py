"""The backends by name, imported on demand with a clear message when a framework is
missing."""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from ..errors import UserError, UserValueError

#: backend name -> (module, framework package it needs, pip extra of d2lres)
BACKENDS = {
    "torch": ("d2lres.torch", "torch", "torch"),
    "tf": ("d2lres.tf", "tensorflow", "tf"),
    "mxnet": ("d2lres.mxnet", "mxnet", "mxnet"),
    "jax": ("d2lres.jax", "jax", "jax"),
}
ALIASES = {"pytorch": "torch", "tensorflow": "tf"}
#: backend name -> every package its code imports (the extra installs them all)
NEEDS = {"torch": ("torch",), "tf": ("tensorflow", "keras"), "mxnet": ("mxnet",), "jax": ("jax", "flax", "optax")}


class BackendUnavailable(UserError, ImportError):
    """The framework a backend needs is not installed."""


def canonical(name: str) -> str:
    """``"pytorch"`` -> ``"torch"``; an unknown name raises ``ValueError`` listing the known ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in BACKENDS:
        raise UserValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return key


def available() -> list[str]:
    """The backends that can run here, in ``BACKENDS`` order: their framework is installed (and
    for MXNet, numpy is older than 2; see ``d2lres.host.mxnet_compat``). Imports no framework."""
    import numpy
    numpy2 = int(numpy.__version__.split(".")[0]) >= 2
    return [name for name, (_, framework, _) in BACKENDS.items()
            if importlib.util.find_spec(framework) is not None and not (name == "mxnet" and numpy2)]


def require(name: str) -> None:
    """Raise :class:`BackendUnavailable` naming the pip extra to install if a package the backend
    ``name`` imports is missing (each backend package calls it before importing its framework)."""
    _require(canonical(name))


def _require(key: str) -> None:
    missing = [package for package in NEEDS[key] if importlib.util.find_spec(package) is None]
    if missing:
        raise BackendUnavailable(f"backend {key!r} needs {', '.join(missing)}, which is not installed; "
                                 f"install it with: pip install 'd2lres[{BACKENDS[key][2]}]'")


def load(name: str) -> ModuleType:
    """Import ``d2lres.<backend>``, or raise :class:`BackendUnavailable` with the install hint."""
    key = canonical(name)
    _require(key)
    return importlib.import_module(BACKENDS[key][0])
