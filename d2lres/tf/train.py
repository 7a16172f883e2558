"""Training primitives of the TensorFlow backend for the shared loop in ``d2lres.training``
(the step compiled with ``tf.function``), and d2l's ``try_gpu`` / ``load_data_fashion_mnist``
/ ``train_ch6``."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from .. import data, training
from .weights import from_canonical, get_weights, set_weights, to_canonical, variables


def try_gpu(i: int = 0) -> str:
    """GPU ``i`` if there is one, else the CPU (a device string for ``tf.device``)."""
    return f"/GPU:{i}" if len(tf.config.list_physical_devices("GPU")) > i else "/CPU:0"


def _to_tensors(X: np.ndarray, y: np.ndarray):
    return tf.constant(np.ascontiguousarray(X.transpose(0, 2, 3, 1))), tf.constant(y.astype(np.int32))


def load_data_fashion_mnist(batch_size: int, resize: int | None = None, **options):
    """``(train_iter, test_iter)`` of ``(X, y)`` tensors, X in NHWC, values in [0, 1]."""
    return data.load_batches(batch_size, resize, _to_tensors, **options)


class Trainer:
    """SGD with momentum and weight decay in PyTorch's form (``v = m v + g + wd w``,
    ``w -= lr v``) and cross-entropy; the step runs as one ``tf.function`` (``compile``)."""

    backend = "tf"

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, device=None,
                 compile: bool = True):
        self.net, self.device = net, device or try_gpu()
        self.momentum, self.weight_decay = momentum, weight_decay
        self.lr = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        kinds = {var.ref(): (name, kind) for name, var, kind in variables(net)}
        self._slots = [kinds[v.ref()] for v in net.trainable_variables]
        with tf.device(self.device):
            self.buffers = [tf.Variable(tf.zeros_like(v), trainable=False) for v in net.trainable_variables] \
                if momentum else []
        wrap = (lambda f: tf.function(f, reduce_retracing=True)) if compile else (lambda f: f)
        self._step, self._predict = wrap(self._step_impl), wrap(lambda X: net(X, training=False))

    def convert(self, X: np.ndarray, y: np.ndarray):
        return _to_tensors(X, y)

    def _step_impl(self, X, y):
        with tf.GradientTape() as tape:
            logits = self.net(X, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, self.net.trainable_variables)
        for i, (w, g) in enumerate(zip(self.net.trainable_variables, grads)):
            if self.weight_decay:
                g = g + self.weight_decay * w
            if self.momentum:
                g = self.buffers[i].assign(self.momentum * self.buffers[i] + g)
            w.assign_sub(self.lr * g)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=y.dtype), y), tf.int32))
        return loss, correct

    def step(self, X, y, lr: float) -> tuple[float, int]:
        """One SGD step; returns the batch's mean loss and number of correct predictions."""
        self.lr.assign(lr)
        with tf.device(self.device):
            loss, correct = self._step(X, y)
        return float(loss), int(correct)

    def predict(self, X) -> np.ndarray:
        with tf.device(self.device):
            return self._predict(X).numpy()

    def forward(self, X: np.ndarray, training: bool = False) -> np.ndarray:
        """Logits for a NCHW numpy batch (train mode uses and updates batch statistics)."""
        with tf.device(self.device):
            return self.net(tf.constant(np.ascontiguousarray(X.transpose(0, 2, 3, 1))), training=training).numpy()

    def get_weights(self) -> dict[str, np.ndarray]:
        return get_weights(self.net)

    def set_weights(self, weights) -> None:
        set_weights(self.net, weights)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Momentum buffers under ``momentum.<canonical name>``, in the canonical layout."""
        return {f"momentum.{name}": to_canonical(buf.numpy(), kind)
                for (name, kind), buf in zip(self._slots, self.buffers)}

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        for (name, kind), buf in zip(self._slots, self.buffers):
            if f"momentum.{name}" in state:
                buf.assign(from_canonical(state[f"momentum.{name}"], kind))


def train_ch6(net, train_iter, test_iter, num_epochs: int, lr: float, device=None, **kwargs):
    """d2l's ``train_ch6``: SGD at constant ``lr``, cross-entropy; prints the d2l summary line,
    plots the curves and returns the history. See ``d2lres.training.fit`` for ``kwargs``."""
    trainer = Trainer(net, device=device)
    return training.fit(trainer, train_iter, test_iter, num_epochs, lr, **kwargs)
