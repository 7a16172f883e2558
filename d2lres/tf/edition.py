"""d2l 1.0's names for TensorFlow, the edition d2l.ai prints (``from d2lres import tensorflow as
d2l``): ``Module`` (a Keras model), ``Classifier``, ``DataModule``, ``FashionMNIST``, ``cpu``,
``gpu``, ``num_gpus``, d2l's tensor aliases, and the ``Trainer(max_epochs, ...)`` front end of
d2lres's loop (``d2lres.loop.edition``). They follow d2l 1.0.3's signatures and behaviour;
docs/book-code.md says where d2lres differs (BatchNorm in training mode during the steps)."""
from __future__ import annotations

import keras
import tensorflow as tf

from ..errors import UserTypeError, UserValueError
from ..loop import edition
from ..loop.edition import EditionTrainer, HyperParameters, ProgressBoard, add_to_class, show_images  # noqa: F401 (NAMES)
from .train import Device, to_tensors, try_gpu
from .train import Trainer as StepTrainer

#: What ``d2lres.tf`` exports from here (its ``Trainer`` is reached through the contract's
#: ``Trainer``, which builds this one when called as d2l 1.0's ``Trainer(max_epochs, ...)``).
NAMES = ("HyperParameters", "ProgressBoard", "add_to_class", "Module", "Classifier", "DataModule", "FashionMNIST",
         "cpu", "gpu", "num_gpus", "show_images", "nn_Module", "size", "reshape", "ones_like", "ones", "zeros_like",
         "zeros", "meshgrid", "sin", "sinh", "cos", "cosh", "tanh", "linspace", "exp", "normal", "rand", "matmul",
         "reduce_sum", "reduce_mean", "argmax", "tensor", "arange", "astype", "int32", "int64", "float32",
         "transpose", "concat", "stack", "abs", "eye", "log", "sigmoid", "expand_dims", "repeat", "batch_matmul",
         "numpy")

# d2l 1.0's tensor aliases for TensorFlow, one line each (d2l/tensorflow.py).
nn_Module = tf.keras.Model
size = lambda a: tf.size(a).numpy()  # noqa: E731
reshape = tf.reshape
ones_like = tf.ones_like
ones = tf.ones
zeros_like = tf.zeros_like
zeros = tf.zeros
meshgrid = tf.meshgrid
sin = tf.sin
sinh = tf.sinh
cos = tf.cos
cosh = tf.cosh
tanh = tf.tanh
linspace = tf.linspace
exp = tf.exp
normal = tf.random.normal
rand = tf.random.uniform
matmul = tf.matmul
reduce_sum = tf.reduce_sum
reduce_mean = tf.reduce_mean
argmax = tf.argmax
tensor = tf.constant
arange = tf.range
astype = tf.cast
int32 = tf.int32
int64 = tf.int64
float32 = tf.float32
transpose = tf.transpose
concat = tf.concat
stack = tf.stack
abs = tf.abs
eye = tf.eye
log = tf.math.log
sigmoid = tf.sigmoid
expand_dims = tf.expand_dims
repeat = tf.repeat
batch_matmul = tf.matmul
numpy = lambda x, *args, **kwargs: x.numpy(*args, **kwargs)  # noqa: E731


def cpu():
    """The CPU: ``"/CPU:0"``, also a ``tf.device`` context (``with d2l.cpu():``), as :func:`try_gpu`."""
    return Device("/CPU:0")


def gpu(i=0):
    """GPU ``i``: ``"/GPU:i"``, also a ``tf.device`` context."""
    return Device(f"/GPU:{i}")


def num_gpus():
    """How many GPUs TensorFlow sees."""
    return len(tf.config.list_physical_devices("GPU"))


def unhide_loss(model) -> None:
    """Keras 3's ``Model.__init__`` sets ``self.loss = None`` (its ``compile``'s loss), which hides
    the class's ``loss`` method: d2l 1.0.3's ``training_step`` then fails with ``TypeError:
    'NoneType' object is not callable``. Removed, ``model.loss(Y_hat, Y)`` is d2l's method again
    (``model.compile(loss=...)`` sets Keras's own back)."""
    if "loss" in vars(model) and vars(model)["loss"] is None:
        del vars(model)["loss"]


class Module(edition.ModuleBase, tf.keras.Model):
    """d2l 1.0's base of models, a Keras model: ``self.net`` (or ``forward``), its loss, its SGD,
    its board. ``call`` runs ``forward``; a ``training=`` given to the call reaches the layers
    inside through Keras's call context (d2lres's step passes ``training=True``)."""

    def __init__(self, plot_train_per_epoch=2, plot_valid_per_epoch=1):
        super().__init__(plot_train_per_epoch, plot_valid_per_epoch)
        unhide_loss(self)
        self.training = None

    def call(self, X, *args, **kwargs):
        if kwargs and "training" in kwargs:
            self.training = kwargs["training"]
        return self.forward(X, *args)

    def configure_optimizers(self):
        return tf.keras.optimizers.SGD(self.lr)


class Classifier(edition.ClassifierBase, Module):
    """d2l 1.0's classifier: cross-entropy, accuracy, the validation points, ``layer_summary``."""

    def accuracy(self, Y_hat, Y, averaged=True):
        Y_hat = tf.reshape(Y_hat, (-1, Y_hat.shape[-1]))
        preds = tf.cast(tf.argmax(Y_hat, axis=1), Y.dtype)
        compare = tf.cast(preds == tf.reshape(Y, -1), tf.float32)
        return tf.reduce_mean(compare) if averaged else compare

    def loss(self, Y_hat, Y, averaged=True):
        Y_hat = tf.reshape(Y_hat, (-1, Y_hat.shape[-1]))
        Y = tf.reshape(Y, (-1,))
        fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return fn(Y, Y_hat)

    def layer_summary(self, X_shape):
        """Each layer of ``self.net`` and its output's shape, for a random batch of ``X_shape`` (NHWC)."""
        X = normal(X_shape)
        for layer in self.net.layers:
            X = layer(X)
            print(layer.__class__.__name__, "output shape:\t", X.shape)


class DataModule(edition.DataModule):
    """d2l 1.0's base of data (TensorFlow's has no ``num_workers``)."""

    def __init__(self, root="../data"):
        self.save_hyperparameters()

    def get_tensorloader(self, tensors, train, indices=slice(0, None)):
        """A ``tf.data.Dataset`` over ``tensors[indices]`` in batches of ``self.batch_size``, shuffled for training."""
        tensors = tuple(a[indices] for a in tensors)
        shuffle_buffer = tensors[0].shape[0] if train else 1
        return tf.data.Dataset.from_tensor_slices(tensors).shuffle(buffer_size=shuffle_buffer).batch(self.batch_size)


class FashionMNIST(edition.FashionMNIST, DataModule):
    """d2l 1.0's Fashion-MNIST (``d2lres.loop.edition.FashionMNIST``; d2l reads Keras's copy): ``X``
    ``(batch, side, side, 1)`` (NHWC), ``y`` int32."""

    convert = staticmethod(to_tensors)


def current_device() -> str:
    """Where TensorFlow puts an op now: the device of an enclosing ``with tf.device(...)`` /
    ``with d2l.try_gpu():``, else its default (the first GPU if there is one)."""
    spec = tf.DeviceSpec.from_string(tf.zeros(()).device)
    return f"/{(spec.device_type or 'CPU').upper()}:{spec.device_index or 0}"


class Trainer(EditionTrainer):
    """d2l 1.0's ``Trainer(max_epochs, num_gpus=0, gradient_clip_val=0)`` on d2lres's loop. It
    trains where TensorFlow would: on the device of an enclosing ``with d2l.try_gpu():`` (the
    chapter's form), else TensorFlow's default (the first GPU if there is one); ``num_gpus`` > 0
    (which d2l's TensorFlow trainer refuses) trains on ``try_gpu()``."""

    classifier = Classifier

    def clip_gradients(self, grad_clip_val, grads):
        """d2l's clipping: ``grads`` scaled so that their joint norm is at most ``grad_clip_val``."""
        grad_clip_val = tf.constant(grad_clip_val, dtype=tf.float32)
        new_grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        norm = tf.math.sqrt(sum(tf.reduce_sum(g ** 2) for g in new_grads))
        if tf.greater(norm, grad_clip_val):
            return [g * grad_clip_val / norm for g in new_grads]
        return grads

    def _step_trainer(self, model, optimizer):
        if not isinstance(model, keras.Model):
            raise UserTypeError(f"Trainer.fit: the model must be a d2l Module (a Keras model), got a "
                                f"{type(model).__name__}")
        if not isinstance(optimizer, keras.optimizers.SGD):
            raise UserTypeError(f"Trainer.fit: d2lres trains with SGD (tf.keras.optimizers.SGD), and "
                                f"configure_optimizers gave a {type(optimizer).__name__}")
        if optimizer.nesterov:
            raise UserValueError("Trainer.fit: d2lres's SGD has no Nesterov momentum")
        if optimizer.weight_decay or optimizer.clipnorm or optimizer.clipvalue or optimizer.global_clipnorm:
            raise UserValueError("Trainer.fit: d2lres's SGD step has no Keras weight_decay (decoupled) or gradient "
                                 "clipping; leave the optimizer's weight_decay, clipnorm, clipvalue, global_clipnorm "
                                 "unset")
        if isinstance(optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            raise UserValueError("Trainer.fit: d2lres trains at the optimizer's constant learning rate; a schedule "
                                 "is not taken")
        device = try_gpu() if self.num_gpus else current_device()
        momentum = float(optimizer.momentum)  # Keras's v = m v - lr g, w += v: PyTorch's form at a constant lr
        trainer = StepTrainer(model, momentum, device=device, precision=self.precision,
                              gradient_clip_val=self.gradient_clip_val)
        return trainer, float(optimizer.learning_rate.numpy())
