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


import numpy as np  # noqa: E402
import pytest  # noqa: E402

from d2lres import backends  # noqa: E402


@pytest.fixture(params=list(backends.BACKENDS))
def mod(request):
    """Each backend package in turn (d2lres.torch, d2lres.tf, d2lres.mxnet)."""
    return backends.load(request.param)


@pytest.fixture(scope="session")
def real_data():
    """The real Fashion-MNIST directory (fetched if needed), or skip."""
    from d2lres import data
    try:
        return data.fetch_fashion_mnist(progress=False).data_dir
    except data.DataError as err:
        pytest.skip(f"Fashion-MNIST not available: {err}")


@pytest.fixture
def block_output():
    """``block_output(mod, block, shape)``: NCHW output shape of a block on a random NCHW input."""
    def run(mod, block, shape):
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        name = mod.__name__.rsplit(".", 1)[1]
        if name == "torch":
            import torch
            block.eval()
            return tuple(block(torch.from_numpy(x)).shape)
        if name == "tf":
            s = tuple(block(x.transpose(0, 2, 3, 1)).shape)
            return s[0], s[3], s[1], s[2]
        from mxnet import np as mnp
        block.initialize()
        return tuple(block(mnp.array(x)).shape)
    return run
