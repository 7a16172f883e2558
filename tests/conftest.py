"""The tests' fixtures, and the run's environment: the whole run has a folder of its own
(``helpers.test_root``) with a temporary ``HOME`` in it, so the frameworks' caches (Keras, MXNet,
matplotlib, XLA) stay out of the user's home. ``pytest_configure`` sets it up before any test
module is collected (the frameworks read these variables when they are imported), and
``pytest_unconfigure`` puts the variables back. The folder is removed when the process exits,
after the exit handlers of what the tests imported (IPython, which d2l imports, closes its history
database in ``HOME`` then). pytest-xdist's workers inherit it from the process that started them.
The helpers the tests share are in helpers.py."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from d2lres.data import default_data_dir
from d2lres.host import backends
from helpers import COMMAND_TIMEOUT, SMALL_RUN, TEST_ROOT, forward, outside_env, shared

#: What the run sets, put back when it ends.
_ENVIRONMENT = ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "KERAS_HOME", "MXNET_HOME", "TF_CPP_MIN_LOG_LEVEL",
                "D2LRES_DATA_DIR", "PIP_CACHE_DIR", TEST_ROOT)
_SAVED = pytest.StashKey[dict]()


def pytest_configure(config):
    if os.environ.get(TEST_ROOT):  # a pytest-xdist worker: the process that started it set all this
        return
    config.stash[_SAVED] = {name: os.environ.get(name) for name in _ENVIRONMENT}
    # From the user's HOME, before it moves: the real data set, and the pip cache that the fresh
    # venvs outside the checkout share (tests/test_notebooks.py).
    os.environ.setdefault("D2LRES_DATA_DIR", str(default_data_dir()))
    os.environ.setdefault("PIP_CACHE_DIR", os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pip"))
    root = Path(tempfile.mkdtemp(prefix="d2lres-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # registered first, so it runs last
    home = root / "home"
    home.mkdir()
    (root / "shared").mkdir()
    os.environ.update({TEST_ROOT: str(root), "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
                       "MPLCONFIGDIR": str(home / ".matplotlib"), "KERAS_HOME": str(home / ".keras"),
                       "MXNET_HOME": str(home / ".mxnet"), "TF_CPP_MIN_LOG_LEVEL": "2"})


def pytest_unconfigure(config):
    for name, value in config.stash.get(_SAVED, {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def torch_run(real_data):
    """``d2lres train --backend torch SMALL_RUN`` on one device, uninterrupted, under umask 022: its
    folder (its wall time in ``.seconds``), once per test run. tests/test_faults.py's reference,
    tests/test_parallel_torch.py's one-device run. Read it or copy it, do not change it."""
    def train(out: Path) -> Path:
        tic = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "d2lres", "train", "--backend", "torch", *SMALL_RUN, "--data-dir",
                               str(real_data), "--out", str(out)], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, preexec_fn=lambda: os.umask(0o022))
        assert done.returncode == 0, done.stderr[-3000:]
        (out / ".seconds").write_text(str(time.monotonic() - tic))
        return out
    return shared("torch-run", train)


@pytest.fixture(params=backends.available())
def mod(request):
    """Each backend package in turn (d2lres.torch, d2lres.tf, d2lres.mxnet)."""
    return backends.load(request.param)


@pytest.fixture(scope="session")
def real_data():
    """The real Fashion-MNIST directory (fetched if needed), or skip."""
    from d2lres import data
    try:  # one worker fetches, the others wait for it
        return shared("real-data", lambda _: data.fetch_fashion_mnist(progress=False).data_dir)
    except data.DataError as err:
        pytest.skip(f"Fashion-MNIST not available: {err}")


@pytest.fixture
def block_output():
    """``block_output(mod, block, shape)``: NCHW output shape of a new block on a random NCHW input."""
    def run(mod, block, shape):
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        return forward(mod, block, x, fresh=True).shape
    return run


@pytest.fixture(scope="session")
def dist() -> dict[str, Path]:
    """``python -m build`` of the checkout, once per test run: ``{"sdist": ..., "wheel": ...}``."""
    def build(out: Path) -> dict[str, Path]:
        proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out),
                               str(Path(__file__).parent.parent)],
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT, env=outside_env())
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return {"sdist": next(out.glob("*.tar.gz")), "wheel": next(out.glob("*.whl"))}
    return shared("dist", build)
