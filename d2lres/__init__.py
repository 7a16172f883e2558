"""d2lres: the ResNet chapter of Dive into Deep Learning as software, one API in every framework.

``d2lres.tensorflow`` is d2l's name for the TensorFlow backend (``from d2lres import tensorflow as
d2l``, as the book writes ``from d2l import tensorflow as d2l``): an attribute of this package that
is the module ``d2lres.tf`` itself (PEP 562), imported when first asked for."""
from .host.threads import prepare_openmp

__version__ = "0.1.0"

prepare_openmp()


def __getattr__(name: str):
    if name == "tensorflow":
        from . import tf
        return tf
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
