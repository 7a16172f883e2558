"""What ``d2lres bench`` needs from TensorFlow: a float32 matmul, and the chapter's way as the
baseline: the Keras 3 model compiled and trained as ``train_ch6`` does (``compile`` + ``fit``,
whose batches run ``train_on_batch``'s function), fed by d2l's ``load_data_fashion_mnist``
(``tf.data``: batch, shuffle, then ``resize_with_pad`` on each batch)."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from .train import to_tensors


def matmul(n: int, precision: str = "float32"):
    """A callable doing one ``n x n`` matmul in ``precision`` (float32, or bfloat16 for bf16)."""
    dtype = tf.bfloat16 if precision == "bf16" else tf.float32
    a, b = (tf.cast(tf.random.uniform((n, n)), dtype) for _ in range(2))
    return lambda: (a @ b).numpy()


class ChapterWay:
    """``net.compile(SGD(lr), SparseCategoricalCrossentropy(from_logits=True), ['accuracy'])``."""

    def __init__(self, net: keras.Model, lr: float):
        self.net = net
        net.compile(optimizer=keras.optimizers.SGD(learning_rate=lr),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    def loader(self, images: np.ndarray, labels: np.ndarray, batch_size: int, size: int):
        X, y = tf.expand_dims(images, axis=3) / 255, tf.cast(labels, dtype="int32")
        return (tf.data.Dataset.from_tensor_slices((X, y)).batch(batch_size).shuffle(len(images))
                .map(lambda X, y: (tf.image.resize_with_pad(X, size, size), y)))

    inputs = staticmethod(to_tensors)

    def step(self, X, y) -> None:
        self.net.train_on_batch(X, y)

    def predict(self, X) -> None:
        self.net.predict_on_batch(X)
