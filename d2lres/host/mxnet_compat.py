"""MXNet 1.9.1 (retired to the Apache Attic in 2023) on today's numpy, before ``import mxnet``
(framework-free, outside ``d2lres.mxnet`` so that the chapter's way in ``d2lres bench`` can
import MXNet with this fix and nothing else of d2lres).

MXNet refers to ``numpy.bool`` at import and at run time (boolean masks: ``x[mask]``,
``x[x > 0]``; comparisons of dtypes), an alias numpy 1.24 removed. On numpy 1.24-1.26 the one
fix is to give that name back, as the builtin ``bool`` it always was; nothing else is changed.
numpy 2 removed more of what MXNet uses (its C API and array conversion), so there d2lres
refuses MXNet with the name of the set that works.
"""
from __future__ import annotations

import numpy

from .backends import BackendUnavailable

#: The numpy releases MXNet 1.9.1 runs on (with :func:`prepare_numpy`).
SUPPORTED_NUMPY = "numpy 1.24-1.26 (the default set: constraints/all.txt)"


class IncompatibleNumpy(BackendUnavailable):
    """MXNet cannot run on the installed numpy."""


def prepare_numpy() -> None:
    """Check numpy's major version and restore the ``numpy.bool`` alias MXNet needs."""
    major = int(numpy.__version__.split(".")[0])
    if major >= 2:
        raise IncompatibleNumpy(
            f"MXNet 1.9.1 does not run on numpy {numpy.__version__}; it needs {SUPPORTED_NUMPY}. "
            f"Install the default set: pip install -c constraints/all.txt 'd2lres[all]', or use the "
            f"other backends (the 'current' set has no MXNet)")
    if "bool" not in vars(numpy):
        numpy.bool = bool
