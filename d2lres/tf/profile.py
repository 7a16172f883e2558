"""What ``d2lres profile`` times in TensorFlow: each stage of the ``Trainer``'s own Keras network
(``net.b1`` .. ``net.head``, with the im2col + matmul rule of ``kernels.Conv2D`` as in training)
forward and backward in training mode under ``tf.function`` (as the ``Trainer``'s step), the
``Trainer``'s SGD update alone (``Trainer._update``, compiled), and ``Trainer.step``."""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def calls(trainer, feeds: dict, lr: float) -> dict:
    """Name -> callable: ``b1`` .. ``head``, ``update``, ``step`` (see ``d2lres.perf.profile``)."""
    tf.get_logger().setLevel("ERROR")  # one tf.function per stage: not a retracing problem
    X, y = trainer.convert(feeds["images"], feeds["labels"])
    trainer.step(X, y, lr)
    out = {}
    with tf.device(trainer.device):
        for name, (Xs, dY) in feeds["stages"].items():
            stage = getattr(trainer.net, name)
            Xs = tf.constant(np.ascontiguousarray(Xs.transpose(0, 2, 3, 1)))
            target = y if dY is None else tf.constant(np.ascontiguousarray(dY.transpose(0, 2, 3, 1)
                                                                           if dY.ndim == 4 else dY))
            fn = tf.function(_stage_grads(stage, [v.value for v in stage.trainable_variables],
                                          input_grad=name != "b1", loss=dY is None))
            out[name] = _in_device(trainer.device, fn, Xs, target)
        grads = [tf.ones_like(w) for w in trainer._weights]
        out["update"] = _in_device(trainer.device, tf.function(trainer._update), grads)
    out["step"] = lambda: trainer.step(X, y, lr)
    return out


def _in_device(device, fn, *args):
    def run():
        with tf.device(device):
            fn(*args)
    return run


def _stage_grads(stage, weights, input_grad: bool, loss: bool):
    def run(X, target):
        with tf.GradientTape() as tape:
            if input_grad:
                tape.watch(X)
            Y = stage(X, training=True)
            if loss:
                Y = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target, Y))
        return tape.gradient(Y, weights + ([X] if input_grad else []), output_gradients=None if loss else target)
    return run
