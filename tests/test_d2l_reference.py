"""The book's ``d2l`` package (1.0.3, installed without its dependencies' pins) as the reference:
d2l's ``Residual`` and a ResNet-18 built from d2l's blocks against d2lres's with the same weights
(the checks' tolerances), and d2l's ``train_ch6`` against d2lres's on the same in-memory batches
from the same seeded Xavier draw (same weights after the epoch, the same printed lines). Two d2l
modules cannot be the reference, and a test holds their reason to the documented one:
``d2l.torch`` needs torchvision, which does not install beside the sets' PyTorch CPU builds, and
``d2l.jax`` imports tensorflow_datasets."""
import importlib
import re

import numpy as np
import pytest

from d2lres import checks
from d2lres.host import backends

pytestmark = pytest.mark.framework

TOL = checks.TOLERANCES
#: Odd sizes at every stride-2 layer's input (33, 17, 9, 5, 3): there TensorFlow's ``'same'``
#: padding is symmetric, as d2lres's (at even sizes it pads 0 before, 1 after: a listed difference).
SIDE = 33
#: d2l's two summary lines (its figure's display may precede them on the same line outside a notebook).
LOSS_LINE = re.compile(r"loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}$", re.M)
SPEED_LINE = re.compile(r"\b\d+\.\d examples/sec on (\S+)$", re.M)


#: The d2l modules that do not import on the tested sets, and the package each stops at: its
#: dependency that the sets cannot install (docs/book-code.md says so).
MISSING = {"torch": "torchvision", "jax": "tensorflow_datasets"}


def d2l_module(framework: str, backend: str):
    """``d2l.<framework>``, imported after ``d2lres.<backend>`` (MXNet's numpy.bool shim); skip
    where the backend is not on this set. Any import error is a failure: the modules of
    :data:`MISSING` are not asked for."""
    if backend not in backends.available():
        pytest.skip(f"d2lres.{backend} is not available on this set")
    backends.load(backend)
    return importlib.import_module(f"d2l.{framework}")


@pytest.mark.parametrize("framework", MISSING)
def test_d2l_modules_that_do_not_import_stop_at_the_documented_package(framework):
    """Where d2l's own module cannot be the reference, the reason is the one the docs give; a
    set where it imports fails here, so the reference tests can start using it."""
    if framework not in backends.available():
        pytest.skip(f"d2lres.{framework} is not available on this set")
    backends.load(framework)
    with pytest.raises(ModuleNotFoundError) as missing:
        importlib.import_module(f"d2l.{framework}")
    assert missing.value.name == MISSING[framework]


# --- the same network, the same weights ------------------------------------------------------

def _stages(d2l, nn, sequential, add):
    """ResNet-18's b2..b5 from d2l's ``Residual``."""
    stages = []
    for k, channels in enumerate((64, 128, 256, 512)):
        blocks = [d2l.Residual(channels, use_1x1conv=True, strides=2) if i == 0 and k else d2l.Residual(channels)
                  for i in range(2)]
        stages.append(add(sequential(), blocks))
    return stages


def _mxnet_assign(weights, layers):
    from mxnet import np as mnp
    for prefix, layer in layers:
        bn = (("gamma", "weight"), ("beta", "bias"), ("running_mean", "running_mean"), ("running_var", "running_var"))
        pairs = bn if hasattr(layer, "gamma") else (("weight", "weight"), ("bias", "bias"))
        for attr, key in pairs:
            getattr(layer, attr).set_data(mnp.array(weights[f"{prefix}.{key}"]))


def _block_layers(prefix, blk):
    return [(f"{prefix}.{a}", getattr(blk, a)) for a in ("conv1", "conv2", "conv3", "bn1", "bn2")
            if getattr(blk, a) is not None]


def test_mxnet_residual_and_resnet18_equal_d2ls(capsys):
    d2l = d2l_module("mxnet", "mxnet")
    from mxnet import autograd
    from mxnet import np as mnp
    from mxnet.gluon import nn

    import d2lres.mxnet as res
    weights = checks.test_weights()
    X = np.random.default_rng(0).random((4, 1, SIDE, SIDE), dtype=np.float32)
    ref = nn.Sequential()
    b1 = nn.Sequential()
    b1.add(nn.Conv2D(64, 7, 2, 3), nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool2D(3, 2, 1))
    head = nn.Sequential()
    head.add(nn.GlobalAvgPool2D(), nn.Dense(10))

    def add(seq, blocks):
        seq.add(*blocks)
        return seq
    stages = _stages(d2l, nn, nn.Sequential, add)
    ref.add(b1, *stages, head)
    ref.initialize()
    ref(mnp.array(X))
    layers = [("b1.conv", b1[0]), ("b1.bn", b1[1]), ("head.fc", head[1])]
    for k, stage in enumerate(stages):
        for i in range(2):
            layers += _block_layers(f"b{k + 2}.{i}", stage[i])
    _mxnet_assign(weights, layers)
    net = res.resnet18()
    res.set_weights(net, weights)
    for training, quantity in ((False, "eval_logits"), (True, "train_logits")):
        with autograd.train_mode() if training else autograd.predict_mode():
            got, want = net(mnp.array(X)).asnumpy(), ref(mnp.array(X)).asnumpy()
        _report(capsys, f"mxnet ResNet-18 {quantity}", np.abs(got - want).max(), TOL[quantity])
        assert np.abs(got - want).max() <= TOL[quantity], (quantity, np.abs(got - want).max())
    blk, mine = stages[1][0], net[2][0]  # a projecting block alone
    Xb = mnp.array(np.random.default_rng(1).random((2, 64, 9, 9), dtype=np.float32))
    distance = np.abs(blk(Xb).asnumpy() - mine(Xb).asnumpy()).max()
    _report(capsys, "mxnet Residual(128, use_1x1conv=True, strides=2)", distance, TOL["eval_logits"])
    assert distance <= TOL["eval_logits"]


def _keras_assign(weights, layers):
    for prefix, layer in layers:
        if hasattr(layer, "gamma"):
            layer.epsilon = 1e-5  # Keras's default is 1e-3: d2lres's one BatchNorm setting (a listed difference)
            for attr, key in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                              ("moving_variance", "running_var")):
                getattr(layer, attr).assign(weights[f"{prefix}.{key}"])
        else:
            w = weights[f"{prefix}.weight"]
            layer.kernel.assign(w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T)
            layer.bias.assign(weights[f"{prefix}.bias"])


def test_tf_residual_and_resnet18_equal_d2ls_where_the_padding_agrees(capsys):
    d2l = d2l_module("tensorflow", "tf")
    import tensorflow as tf

    import d2lres.tf as res
    weights = checks.test_weights()
    X = np.random.default_rng(0).random((4, SIDE, SIDE, 1), dtype=np.float32)
    K = tf.keras.layers
    stem = [K.Conv2D(64, 7, 2, padding="same"), K.BatchNormalization(), K.Activation("relu"),
            K.MaxPool2D(3, 2, padding="same")]
    stages = _stages(d2l, None, lambda: None, lambda _, blocks: blocks)
    head = [K.GlobalAvgPool2D(), K.Dense(10)]
    ref = tf.keras.Sequential(stem + [tf.keras.Sequential(s) for s in stages] + head)
    ref(X)
    layers = [("b1.conv", stem[0]), ("b1.bn", stem[1]), ("head.fc", head[1])]
    for k, stage in enumerate(stages):
        for i, blk in enumerate(stage):
            layers += _block_layers(f"b{k + 2}.{i}", blk)
    _keras_assign(weights, layers)
    net = res.resnet18()
    res.set_weights(net, weights)
    got, want = net(X, training=False).numpy(), ref(X, training=False).numpy()
    _report(capsys, "tf ResNet-18 eval_logits", np.abs(got - want).max(), TOL["eval_logits"])
    assert np.abs(got - want).max() <= TOL["eval_logits"], np.abs(got - want).max()
    Xb = np.random.default_rng(1).random((2, 9, 9, 64), dtype=np.float32)
    distance = np.abs(stages[1][0](Xb).numpy() - net.b3.layers[0](Xb, training=False).numpy()).max()
    _report(capsys, "tf Residual(128, use_1x1conv=True, strides=2)", distance, TOL["eval_logits"])
    assert distance <= TOL["eval_logits"]


# --- d2l's train_ch6 against d2lres's ----------------------------------------------------------

def _report(capsys, what, distance, tolerance):
    with capsys.disabled():
        print(f"\n{what}: max |d2lres - d2l| = {distance:.2e} (tolerance {tolerance:g})")


def _toy(n=64, side=12, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    X = rng.random((n, 1, side, side), dtype=np.float32) * 0.3
    for i, label in enumerate(y):
        X[i, 0, label, :] += 0.7
    return X, y


def _lines(out):
    return LOSS_LINE.findall(out), SPEED_LINE.findall(out)


def test_mxnet_train_ch6_equals_d2ls(capsys):
    d2l = d2l_module("mxnet", "mxnet")
    import mxnet as mx
    from mxnet import np as mnp
    from mxnet.gluon import nn

    import d2lres.mxnet as res
    from d2lres import data
    X, y = _toy()

    def reader_net():
        net = nn.Sequential()
        net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"), d2l.Residual(8),
                d2l.Residual(16, use_1x1conv=True, strides=2), nn.GlobalAvgPool2D(), nn.Dense(10))
        net.initialize()
        net(mnp.array(X[:2]))  # as the chapter's shape walk does
        return net
    runs = {}
    for name, train_ch6 in (("d2l", d2l.train_ch6), ("d2lres", res.train_ch6)):
        batches = data.ArrayBatches(X, y, 8, shuffle=False, convert=res.train.to_arrays)
        net = reader_net()
        mx.random.seed(0)
        options = {"plot": False, "progress": False} if name == "d2lres" else {}
        train_ch6(net, batches, batches, 1, 0.1, mx.cpu(), **options)
        runs[name] = ({k: p.data().asnumpy() for k, p in net._collect_params_with_prefix().items()},
                      _lines(capsys.readouterr().out))
    (w_ref, lines_ref), (w, lines) = runs["d2l"], runs["d2lres"]
    assert w.keys() == w_ref.keys()
    distance = max(np.abs(w[k] - w_ref[k]).max() for k in w)
    _report(capsys, "mxnet train_ch6 weights after 1 epoch", distance, TOL["step_weights"])
    assert distance <= TOL["step_weights"], distance
    assert lines == lines_ref and lines[0] and lines[1] == ["cpu(0)"], (lines, lines_ref)


def test_tf_train_ch6_equals_d2ls(capsys):
    d2l = d2l_module("tensorflow", "tf")
    import keras
    import tensorflow as tf

    import d2lres.tf as res
    X, y = _toy()
    ds = tf.data.Dataset.from_tensor_slices((X.transpose(0, 2, 3, 1), y.astype(np.int32))).batch(8)
    built = []

    def net_fn():
        built.append(tf.keras.Sequential([
            tf.keras.layers.Conv2D(8, 3, padding="same"), tf.keras.layers.BatchNormalization(),
            tf.keras.layers.Activation("relu"), d2l.Residual(8), tf.keras.layers.GlobalAvgPool2D(),
            tf.keras.layers.Dense(10)]))
        return built[-1]
    runs = {}
    for name, train_ch6 in (("d2l", d2l.train_ch6), ("d2lres", res.train_ch6)):
        keras.utils.set_random_seed(0)
        options = {"plot": False, "progress": False} if name == "d2lres" else {}
        train_ch6(net_fn, ds, ds, 1, 0.1, d2l.try_gpu(), **options)
        runs[name] = ([v.numpy() for v in built[-1].weights], _lines(capsys.readouterr().out))
    (w_ref, lines_ref), (w, lines) = runs["d2l"], runs["d2lres"]
    assert [a.shape for a in w] == [a.shape for a in w_ref]
    distance = max(np.abs(a - b).max() for a, b in zip(w, w_ref))
    _report(capsys, "tf train_ch6 weights after 1 epoch", distance, TOL["step_weights"])
    assert distance <= TOL["step_weights"], distance
    assert lines == lines_ref and lines[0] and lines[1] == ["/CPU:0"], (lines, lines_ref)
