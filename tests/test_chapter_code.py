"""The book's own code on d2lres: the ResNet chapter's cells in the d2l 0.17 edition's forms
(``tests/book/chapter_<framework>.py``, the reader's own ``Residual``, ``resnet_block`` and
network), run with ``from d2lres import <framework> as d2l`` on the real Fashion-MNIST. To keep
them fast the training cell's settings are lowered from outside, never its calls: one epoch, and
``load_data_fashion_mnist`` limited to the first images of each split. Beside them what the
book's names and forms need: ``d2lres.tensorflow``, TensorFlow's ``train_ch6(net_fn, ...)`` with
d2l's ``tf.device`` object, the old signatures refused, ``try_gpu``'s rules."""
import functools
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2lres.core import compat
from d2lres.host import backends

pytestmark = pytest.mark.framework

BOOK = Path(__file__).parent / "book"
#: Images of each split the chapter's cells train and test on here.
LIMIT = 256
#: The framework's name in d2l -> d2lres's backend.
FRAMEWORKS = {"pytorch": "torch", "mxnet": "mxnet", "tensorflow": "tf"}
STAGES = [(1, 64, 56, 56), (1, 64, 56, 56), (1, 128, 28, 28), (1, 256, 14, 14), (1, 512, 7, 7)]
STEM = [(1, 64, 112, 112)] * 3
#: The shape walk each chapter prints (the framework's own layout: TensorFlow's NHWC).
WALKS = {"pytorch": STAGES + [(1, 512, 1, 1), (1, 512), (1, 10)],
         "mxnet": STEM + STAGES + [(1, 512, 1, 1), (1, 10)],
         "tensorflow": [(n, h, w, c) for n, c, h, w in STEM + STAGES] + [(1, 512), (1, 10)]}
D2L_LINES = [r"training on \S+", r"loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}",
             r"\d+\.\d examples/sec on \S+"]


def lowered(monkeypatch, mod, data_dir, histories):
    """One epoch on the first ``LIMIT`` images of each split, set from outside the cells."""
    load, train = mod.load_data_fashion_mnist, mod.train_ch6
    monkeypatch.setattr(mod, "load_data_fashion_mnist", functools.partial(load, data_dir=data_dir, limit=LIMIT))

    def one_epoch(net, train_iter, test_iter, num_epochs, lr, device=None, **options):
        histories.append(train(net, train_iter, test_iter, 1, lr, device, **options))
        return histories[-1]
    monkeypatch.setattr(mod, "train_ch6", one_epoch)


@pytest.mark.slow
@pytest.mark.parametrize("framework", [f for f, b in FRAMEWORKS.items() if b in backends.available()])
def test_the_chapter_runs_as_the_book_prints_it(framework, real_data, monkeypatch, capsys):
    mod, histories = backends.load(FRAMEWORKS[framework]), []
    lowered(monkeypatch, mod, real_data, histories)
    runpy.run_path(str(BOOK / f"chapter_{framework}.py"), run_name="__main__")
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n--- {framework}\n{out}")
    walk = [tuple(int(d) for d in re.findall(r"\d+", line.split("output shape:")[1]))
            for line in out.splitlines() if "output shape:" in line]
    assert walk == WALKS[framework], out
    for pattern in D2L_LINES:
        assert re.search(f"^{pattern}$", out, re.M), (pattern, out)
    (epoch,) = histories[0]["epochs"]
    assert np.isfinite(epoch["train_loss"]) and 0 <= epoch["test_acc"] <= 1


def test_d2lres_tensorflow_is_d2lres_tf_and_imports_no_other_framework():
    code = ("import sys; from d2lres import tensorflow as d2l; import d2lres.tf, tensorflow; "
            "print(d2l is d2lres.tf, *[m for m in ('torch', 'mxnet') if m in sys.modules])")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True"], out


@pytest.mark.skipif("tf" not in backends.available(), reason="TensorFlow is not installed")
def test_tf_train_ch6_builds_net_fn_in_the_strategy_and_takes_a_tf_device(capsys):
    """d2l's TensorFlow form: a function building the network, and ``tf.device`` from d2l's try_gpu."""
    import tensorflow as tf

    from d2lres import data
    from d2lres import tf as d2l
    built = []

    def net_fn():
        built.append(tf.distribute.get_strategy())
        return tf.keras.Sequential([tf.keras.layers.Conv2D(4, 3), tf.keras.layers.BatchNormalization(),
                                    tf.keras.layers.GlobalAvgPool2D(), tf.keras.layers.Dense(10)])
    rng = np.random.default_rng(0)
    X, y = rng.random((64, 1, 12, 12), dtype=np.float32), rng.integers(0, 10, 64)
    convert = functools.partial(d2l.train.to_tensors)
    batches = data.ArrayBatches(X, y, 32, shuffle=True, convert=convert)
    history = d2l.train_ch6(net_fn, batches, batches, 1, 0.1, tf.device("/CPU:0"), plot=False, progress=False)
    assert isinstance(built[0], tf.distribute.OneDeviceStrategy)
    assert history["device"] == "cpu (tf: /CPU:0)" and np.isfinite(history["epochs"][0]["train_loss"])
    assert capsys.readouterr().out.splitlines()[0] == "training on /CPU:0"


@pytest.mark.parametrize("backend", backends.available())
def test_old_signatures_are_refused_with_the_form_that_works(backend):
    mod = backends.load(backend)
    with pytest.raises(TypeError, match=r"use_1x1conv must be True or False, got int 3.*"
                                        r"Residual\(num_channels, use_1x1conv=False, strides=1\).*in_channels="):
        mod.Residual(3, 3)
    with pytest.raises(TypeError, match=r"first_block must be True or False, got int 2.*resnet_block\(num_channels, "
                                        r"num_residuals, first_block=False\).*in_channels=input_channels"):
        mod.resnet_block(64, 128, 2)
    with pytest.raises(TypeError, match="multiple values for argument 'first_block'.*in_channels="):
        mod.resnet_block(64, 64, 2, first_block=True)
    # the 1.0 edition's names are there (tests/test_edition*.py)
    assert type(mod.Trainer(max_epochs=10, num_gpus=1)).__module__ == mod.Trainer.edition
    assert mod.Classifier and mod.FashionMNIST
    with pytest.raises(TypeError, match="max_epochs: d2l 1.0's Trainer.*takes no network.*fit.model, data"):
        mod.Trainer(mod.resnet18(), max_epochs=10)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'$"):
        assert mod.no_such_name is None


def test_try_gpu_takes_mps_where_cuda_is_absent(monkeypatch):
    """No Mac here: the rule is tested by patching the availability queries."""
    import torch

    from d2lres import torch as d2l
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert d2l.try_gpu() == torch.device("mps") and d2l.try_all_gpus() == [torch.device("mps")]
    assert d2l.try_gpu(1) == torch.device("cpu")
    from d2lres.host import devices  # what try_gpu gives, the device check takes (resolve: before any tensor moves)
    assert devices.resolve(d2l.try_gpu(), "torch", 0, lambda kind, i: kind, mps=True) == "mps"
    with pytest.raises(devices.DeviceError, match="no Apple GPU"):
        devices.resolve("mps", "tf", 0, lambda kind, i: kind)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert d2l.try_gpu(1) == torch.device("cuda:1")
    assert d2l.try_all_gpus() == [torch.device("cuda:0"), torch.device("cuda:1")]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert d2l.try_gpu() == torch.device("cpu") and d2l.try_all_gpus() == [torch.device("cpu")]


def test_the_neutral_weights_need_a_d2lres_network():
    from torch import nn

    from d2lres import torch as d2l
    with pytest.raises(TypeError, match="needs a network d2lres built.*this Sequential has no spec.*torch.save"):
        d2l.get_weights(nn.Sequential(nn.Linear(2, 3)))
    assert not compat.is_d2lres_net(nn.Linear(2, 3)) and compat.is_d2lres_net(d2l.resnet18())


def _tiny_batches(convert):
    from d2lres import data
    rng = np.random.default_rng(0)
    X, y = rng.random((32, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, 32)
    return data.ArrayBatches(X, y, 16, shuffle=True, convert=convert)


def test_a_readers_checkpoint_resumes_only_into_the_same_structure(tmp_path):
    from torch import nn

    from d2lres import torch as d2l
    from d2lres import training

    def net(width):
        return nn.Sequential(nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(width, 10))
    batches = _tiny_batches(d2l.train.to_tensors)
    options = {"plot": False, "progress": False, "checkpoint_dir": tmp_path}
    d2l.train_ch6(net(4), batches, batches, 1, 0.1, **options)
    assert len(d2l.train_ch6(net(4), batches, batches, 2, 0.1, resume=True, **options)["epochs"]) == 2
    with pytest.raises(training.TrainingError, match="belongs to another run: structure"):
        d2l.train_ch6(net(6), batches, batches, 3, 0.1, resume=True, **options)


@pytest.mark.skipif("jax" not in backends.available(), reason="JAX is not installed")
def test_an_nnx_module_trains_and_walks():
    from flax import nnx

    from d2lres import jax as d2l
    rngs = nnx.Rngs(0)
    net = nnx.Sequential(nnx.Conv(1, 4, (3, 3), rngs=rngs), nnx.BatchNorm(4, rngs=rngs), nnx.relu,
                         lambda X: X.mean(axis=(1, 2)), nnx.Linear(4, 10, rngs=rngs))
    assert d2l.shape_walk(net, (1, 8, 8))[-1] == ("Linear", (10,)) and d2l.count_parameters(net) == (98, 8)
    before = np.array(net.layers[0].kernel.value)
    history = d2l.train_ch6(net, *[_tiny_batches(d2l.train.to_arrays)] * 2, 1, 0.1, plot=False, progress=False)
    assert np.isfinite(history["epochs"][0]["train_loss"]) and not np.array_equal(before, net.layers[0].kernel.value)
