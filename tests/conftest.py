"""Keep framework caches (Keras, MXNet, matplotlib) out of the user's home: the whole session
runs with a temporary HOME. The real data set's directory is resolved before that."""
import os
import tempfile

from d2lres.data import default_data_dir

REAL_DATA_DIR = str(default_data_dir())
_home = tempfile.mkdtemp(prefix="d2lres-test-home-")
os.environ.update(HOME=_home, XDG_CACHE_HOME=os.path.join(_home, ".cache"),
                  MPLCONFIGDIR=os.path.join(_home, ".matplotlib"), KERAS_HOME=os.path.join(_home, ".keras"),
                  MXNET_HOME=os.path.join(_home, ".mxnet"), TF_CPP_MIN_LOG_LEVEL="2")
os.environ.setdefault("D2LRES_DATA_DIR", REAL_DATA_DIR)
