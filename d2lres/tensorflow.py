"""``d2lres.tensorflow``: d2l's name for the TensorFlow backend (``from d2lres import tensorflow
as d2l``). It *is* ``d2lres.tf`` -- the same module object, not a copy -- and imports nothing
else."""
import sys

from . import tf

sys.modules[__name__] = tf
