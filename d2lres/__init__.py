"""d2lres: the ResNet chapter of Dive into Deep Learning as software, one API in every framework."""
from .host.threads import prepare_openmp

__version__ = "0.1.0"

prepare_openmp()
