"""d2lres: the ResNet chapter of Dive into Deep Learning in three frameworks, one API."""
__version__ = "0.1.0"
