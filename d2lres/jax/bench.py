"""What ``d2lres bench`` needs from JAX: a float32 matmul, and the chapter's way as the baseline:
the book's own JAX code (d2l's jax tab) -- a Flax ``linen`` ``Residual`` with ``training`` as a
field and ``nn.BatchNorm(use_running_average=not training)``, ``padding='same'``, the network
as ``nn.Sequential`` stages, trained as d2l's JAX ``Trainer`` does: a ``TrainState`` that also
carries ``batch_stats``, the loss ``jax.jit``-compiled and differentiated by ``value_and_grad``
outside it (``apply(..., mutable=['batch_stats'])``), ``state.apply_gradients`` (optax ``sgd``)
run eagerly, loss and accuracy read back every batch -- fed by d2l's JAX
``load_data_fashion_mnist`` (``tf.data``: batch, ``resize_with_pad`` per batch, shuffle, as
numpy), or, without TensorFlow, the same batches resized in numpy.

The book's network is not d2lres's function (``'same'`` pads stride-2 layers unevenly, Flax's
BatchNorm momentum 0.99 and biased running variance); for timing it is the same work."""
from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from .train import to_arrays


def matmul(n: int, precision: str = "float32"):
    """A callable doing one ``n x n`` matmul in ``precision`` (float32, or bfloat16 for bf16)."""
    ka, kb = jax.random.split(jax.random.key(0))
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    a, b = jax.random.uniform(ka, (n, n), dtype), jax.random.uniform(kb, (n, n), dtype)
    return lambda: (a @ b).block_until_ready()


# --- the book's code (d2l-en, chapter_convolutional-modern/resnet, jax tab) ---------------------

class Residual(nn.Module):
    """The Residual block of ResNet models."""
    num_channels: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True

    def setup(self):
        self.conv1 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding='same', strides=self.strides)
        self.conv2 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding='same')
        if self.use_1x1conv:
            self.conv3 = nn.Conv(self.num_channels, kernel_size=(1, 1), strides=self.strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm(not self.training)
        self.bn2 = nn.BatchNorm(not self.training)

    def __call__(self, X):
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return nn.relu(Y)


class BookResNet(nn.Module):
    """The book's ``ResNet`` (``ResNet18`` is ``arch=((2, 64), (2, 128), (2, 256), (2, 512))``)."""
    arch: tuple = ((2, 64), (2, 128), (2, 256), (2, 512))
    num_classes: int = 10
    training: bool = True

    def setup(self):
        self.net = self.create_net()

    def b1(self):
        return nn.Sequential([
            nn.Conv(64, kernel_size=(7, 7), strides=(2, 2), padding='same'),
            nn.BatchNorm(not self.training), nn.relu,
            lambda x: nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='same')])

    def block(self, num_residuals, num_channels, first_block=False):
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(Residual(num_channels, use_1x1conv=True, strides=(2, 2), training=self.training))
            else:
                blk.append(Residual(num_channels, training=self.training))
        return nn.Sequential(blk)

    def create_net(self):
        net = nn.Sequential([self.b1()])
        for i, b in enumerate(self.arch):
            net.layers.extend([self.block(*b, first_block=(i == 0))])
        net.layers.extend([nn.Sequential([
            lambda x: nn.avg_pool(x, window_shape=x.shape[1:3]),
            lambda x: x.reshape((x.shape[0], -1)),
            nn.Dense(self.num_classes)])])
        return net

    def __call__(self, X):
        return self.net(X)


class TrainState(train_state.TrainState):
    batch_stats: Any


class ChapterWay:
    """d2l's JAX ``Trainer.fit_epoch`` for a ``Classifier`` with BatchNorm: ``optax.sgd(lr)``."""

    def __init__(self, net, lr: float):
        self.model = BookResNet(num_classes=net.num_classes, training=True)
        self.eval_model = BookResNet(num_classes=net.num_classes, training=False)
        variables = self.model.init(jax.random.key(0), jnp.zeros((1, 96, 96, net.in_channels)))
        self.state = TrainState.create(apply_fn=self.model.apply, params=variables["params"],
                                       batch_stats=variables["batch_stats"], tx=optax.sgd(lr))

    @partial(jax.jit, static_argnums=(0,))
    def loss(self, params, X, Y, batch_stats):
        Y_hat, updates = self.model.apply({"params": params, "batch_stats": batch_stats}, X,
                                          mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(Y_hat, Y).mean()
        return loss, (Y_hat, updates)

    def loader(self, images: np.ndarray, labels: np.ndarray, batch_size: int, size: int):
        try:
            import tensorflow as tf
        except ImportError:
            return _NumpyLoader(images, labels, batch_size, size)
        process = lambda X, y: (tf.expand_dims(X, axis=3) / 255, tf.cast(y, dtype="int32"))  # noqa: E731
        resize_fn = lambda X, y: (tf.image.resize_with_pad(X, size, size), y)  # noqa: E731
        return (tf.data.Dataset.from_tensor_slices(process(images, labels)).batch(batch_size).map(resize_fn)
                .shuffle(len(images)).as_numpy_iterator())

    @staticmethod
    def inputs(X, y):
        return to_arrays(X, y)

    def step(self, X, y) -> None:
        (loss, (Y_hat, updates)), grads = jax.value_and_grad(self.loss, has_aux=True)(
            self.state.params, X, y, self.state.batch_stats)
        self.state = self.state.apply_gradients(grads=grads)
        self.state = self.state.replace(batch_stats=updates["batch_stats"])
        float(loss), float((Y_hat.argmax(axis=1) == y).sum())

    def predict(self, X) -> None:
        np.asarray(self.eval_model.apply({"params": self.state.params, "batch_stats": self.state.batch_stats},
                                         X).argmax(axis=1))


class _NumpyLoader:
    """Without TensorFlow: the same per-batch resize in numpy (d2lres's bilinear resize)."""

    def __init__(self, images, labels, batch_size, size):
        self.images, self.labels, self.batch_size, self.size = images, labels, batch_size, size

    def __iter__(self):
        from ..data import resize_images
        order = np.random.permutation(len(self.labels))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            X = resize_images(self.images[idx], self.size)[..., None].astype(np.float32)
            yield X, self.labels[idx].astype(np.int32)
