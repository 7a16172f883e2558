"""The 1.0 edition's TensorFlow tab (the one d2l.ai prints) on d2lres (``from d2lres import
tensorflow as d2l``): d2l 1.0.3's names with its signatures (read from the installed ``d2l``
package's source), ``try_gpu()`` as both the contract's device string and d2l's ``tf.device``
context, both ``Trainer`` forms and the refusals, a chapter-style script in the edition's
TensorFlow forms (Keras 3), and d2l 1.0.3's own ``d2l.tensorflow`` as the reference: its
``Trainer.fit`` against d2lres's on the same model, weights and batches."""
import contextlib
import importlib
import io
import json
import pickle
import runpy
from pathlib import Path

import numpy as np
import pytest

from d2lres import checks
from helpers import check_d2l_names

pytestmark = pytest.mark.framework

tf = pytest.importorskip("tensorflow")

from d2lres import tensorflow as d2l  # noqa: E402


def test_the_tf_names_have_d2l_1_0_3s_signatures():
    compared = check_d2l_names(d2l, "tensorflow", ("Module", "Classifier", "DataModule", "FashionMNIST", "Trainer",
                                                   "HyperParameters", "ProgressBoard"),
                               ("add_to_class", "cpu", "gpu", "num_gpus", "try_gpu", "try_all_gpus", "show_images"))
    assert compared >= 25
    assert d2l.nn_Module is tf.keras.Model and issubclass(d2l.Module, tf.keras.Model)


def test_try_gpu_is_the_contracts_device_string_and_d2ls_tf_device_context():
    device = d2l.try_gpu()
    expected = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    assert isinstance(device, str) and device == expected and repr(device) == repr(expected)
    assert json.loads(json.dumps(device)) == expected and pickle.loads(pickle.dumps(device)) == expected
    with device:  # d2l's form: with d2l.try_gpu(): ...
        assert tf.zeros(()).device.endswith(expected.replace("/", "device:"))
        with d2l.cpu():  # nested, and the same object entered again
            assert tf.zeros(()).device.endswith("device:CPU:0")
            with device:
                assert tf.zeros(()).device.endswith(expected.replace("/", "device:"))
        assert tf.zeros(()).device.endswith(expected.replace("/", "device:"))
    assert d2l.try_all_gpus()[0] == expected and hasattr(d2l.try_all_gpus()[0], "__enter__")
    net = d2l.resnet18(num_classes=10, in_channels=1)  # the contract's use: device=try_gpu()
    assert d2l.Trainer(net, device=d2l.try_gpu()).device == expected


def test_trainer_is_d2lress_with_a_network_and_d2ls_with_a_number_of_epochs():
    from d2lres.loop.edition import EditionTrainer
    net = d2l.resnet18(num_classes=10, in_channels=1)
    assert type(d2l.Trainer(net)) is d2l.Trainer
    for made in (d2l.Trainer(3), d2l.Trainer(max_epochs=3, num_gpus=1)):
        assert isinstance(made, EditionTrainer) and made.max_epochs == 3 and made.hparams["max_epochs"] == 3
        assert type(made).__module__ == "d2lres.tf.edition"
    with pytest.raises(ValueError, match="gradient_clip_val must be a finite number >= 0"):
        d2l.Trainer(max_epochs=1, gradient_clip_val=-1)
    with pytest.raises(TypeError, match="must be a d2l Module.*train_ch6"):
        d2l.Trainer(1).fit(tf.keras.layers.Dense(2), None)
    data = Batches(np.zeros((8, 6, 6, 1), np.float32), np.zeros(8, np.int32), 4)

    class OwnLoss(Small):
        def loss(self, Y_hat, Y, averaged=True):
            return 0.0

    class Adam(Small):
        def configure_optimizers(self):
            return tf.keras.optimizers.Adam(self.lr)

    class Decay(Small):
        def configure_optimizers(self):
            return tf.keras.optimizers.SGD(self.lr, weight_decay=1e-4)
    for model, error, message in ((OwnLoss(), TypeError, "defines its own loss"),
                                  (Adam(), TypeError, "trains with SGD.*Adam"),
                                  (Decay(), ValueError, "no Keras weight_decay")):
        with pytest.raises(error, match=message):
            d2l.Trainer(1).fit(model, data)
    grads = [tf.constant([3.0]), tf.constant([4.0])]  # d2l's clip_gradients: joint norm 5 scaled to 1
    np.testing.assert_allclose([g.numpy() for g in d2l.Trainer(1).clip_gradients(1.0, grads)], [[0.6], [0.8]])


# --- a chapter in the 1.0 edition's TensorFlow forms, written by the team (Keras 3) -------------

#: The chapter's classes, from its cells in the 1.0 TensorFlow forms (tests/book/edition_tensorflow.py).
CHAPTER = runpy.run_path(str(Path(__file__).parent / "book" / "edition_tensorflow.py"), run_name="chapter")
ResNet, ResNeXtBlock = CHAPTER["ResNet"], CHAPTER["ResNeXtBlock"]


def test_the_keras_2_line_of_the_book_fails_on_keras_3_whatever_d2lres_does():
    """The book's ``tf.keras.models.Sequential(self.b1())``: Keras 3 takes a list of layers."""
    with pytest.raises(TypeError, match="'Sequential' object is not iterable"):
        tf.keras.models.Sequential(ResNet.b1(None))


def test_resnext_blocks_3x3_convolution_is_grouped_by_width():
    """d2l 1.0's ``groups`` is each group's width: ``ResNeXtBlock(32, 16, 1)`` has 2 groups."""
    blk = ResNeXtBlock(32, 16, 1)
    assert blk(d2l.normal((4, 96, 96, 32))).shape == (4, 96, 96, 32) and blk.conv2.groups == 2


# --- d2l 1.0.3's own Trainer.fit as the reference -----------------------------------------------

class Batches:
    """The same in-memory batches for both trainers, in order, each epoch."""

    def __init__(self, X, y, batch_size):
        self.batches = [(tf.constant(X[i:i + batch_size]), tf.constant(y[i:i + batch_size]))
                        for i in range(0, len(y), batch_size)]

    def train_dataloader(self):
        return self.batches

    def val_dataloader(self):
        return self.batches[:2]


def _layers(bn: bool):
    return [tf.keras.layers.Conv2D(8, 3, padding="same"), *([tf.keras.layers.BatchNormalization()] if bn else []),
            tf.keras.layers.ReLU(), tf.keras.layers.MaxPool2D(2), tf.keras.layers.Conv2D(16, 3, strides=2,
                                                                                           padding="same"),
            tf.keras.layers.ReLU(), tf.keras.layers.GlobalAvgPool2D(), tf.keras.layers.Dense(10)]


def small(base, bn=False):
    """A small classifier on ``base`` (d2lres's or d2l's ``Classifier``)."""
    class SmallNet(base):
        def __init__(self, lr=0.1, num_classes=10):
            super().__init__()
            self.save_hyperparameters()
            self.net = tf.keras.models.Sequential(_layers(bn))
    return SmallNet


Small = small(d2l.Classifier)


def d2l_tensorflow():
    """``d2l.tensorflow`` 1.0.3 (after d2lres.tf), or skip with the reason it does not import."""
    try:
        return importlib.import_module("d2l.tensorflow")
    except ImportError as err:
        pytest.skip(f"d2l.tensorflow does not import here: {err}")


def _fit(model, trainer, data, weights):
    model(data.batches[0][0][:1])
    model.set_weights(weights)
    vars(model).pop("loss", None)  # d2l's model on Keras 3: its Model.__init__ sets self.loss = None
    model.board.display = False
    trainer.board_path = None
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(model, data)
    return model


def test_fit_against_d2l_1_0_3s_trainer_fit(real_data, capsys):
    d2l_ref = d2l_tensorflow()
    X, y = d2l.FashionMNIST(limit=64, data_dir=real_data).train
    data = Batches(np.ascontiguousarray(X.transpose(0, 2, 3, 1)), y.astype(np.int32), 16)
    tf.keras.utils.set_random_seed(0)
    first = small(d2l.Classifier)()
    first(data.batches[0][0][:1])
    weights = first.get_weights()
    ours = _fit(small(d2l.Classifier)(lr=0.1), d2l.Trainer(max_epochs=2), data, weights)
    ref = _fit(small(d2l_ref.Classifier)(lr=0.1), d2l_ref.Trainer(max_epochs=2), data, weights)
    distance = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(ours.get_weights(), ref.get_weights()))
    with capsys.disabled():
        print(f"\ntf Trainer.fit vs d2l 1.0.3's Trainer.fit (no BatchNorm), weights after 2 epochs: "
              f"max distance {distance:.2e}")
    assert distance <= checks.TOLERANCES["step_weights"]
    assert list(ours.board.data) == list(ref.board.data) == ["train_loss", "val_loss", "val_acc"]
    for key in ours.board.data:
        (xs, ys), (ref_xs, ref_ys) = zip(*ours.board.data[key]), zip(*ref.board.data[key])
        assert xs == ref_xs, key
        np.testing.assert_allclose(ys, np.asarray(ref_ys, np.float64), rtol=0, atol=1e-4, err_msg=key)

    # What cannot be compared: with BatchNorm, d2l's step (model.training = True, no training=)
    # leaves Keras 3's BatchNormalization on its moving statistics, never updated; d2lres's trains it.
    tf.keras.utils.set_random_seed(0)
    first = small(d2l.Classifier, bn=True)()
    first(data.batches[0][0][:1])
    weights = first.get_weights()
    ours = _fit(small(d2l.Classifier, bn=True)(), d2l.Trainer(max_epochs=1), data, weights)
    ref = _fit(small(d2l_ref.Classifier, bn=True)(), d2l_ref.Trainer(max_epochs=1), data, weights)
    moving = [float(np.abs(m.net.layers[1].moving_mean.numpy()).max()) for m in (ours, ref)]
    assert moving[0] > 0 and moving[1] == 0
