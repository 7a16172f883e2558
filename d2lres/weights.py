"""``d2lres.weights``: the neutral weights file and torchvision_to_npz. It is the module
``d2lres.core.weights`` itself (one object, not a copy), under the path that notebooks,
documents and users' code name."""
import sys

from .core import weights

sys.modules[__name__] = weights
