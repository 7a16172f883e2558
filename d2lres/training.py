"""``d2lres.training``: the shared training loop (fit). It is the module ``d2lres.runs.training``
itself (one object, not a copy), under the path that notebooks, documents and users' code name."""
import sys

from .runs import training

sys.modules[__name__] = training
