"""``d2lres.inputs``: the input checks and InputError. It is the module ``d2lres.core.inputs``
itself (one object, not a copy), under the path that notebooks, documents and users' code name."""
import sys

from .core import inputs

sys.modules[__name__] = inputs
