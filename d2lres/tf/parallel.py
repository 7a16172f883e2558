"""Data-parallel training in TensorFlow: ``tf.distribute.MirroredStrategy`` over the GPUs, or over
logical CPU devices on a machine without one (``logical_cpus``, which must run before TensorFlow
starts its runtime: importing this module does it when ``D2LRES_REPLICAS`` is set, as
``d2lres.parallel.environment`` sets it). Across machines, ``MultiWorkerMirroredStrategy`` with
``TF_CONFIG`` (README). See ``d2lres.parallel`` for the split and the BatchNorm option.

The network is built inside the strategy's scope (its variables mirrored on every replica);
:class:`ParallelTrainer` rebuilds a single-device network there with the same weights. Each
replica computes its shard's summed loss over the global batch size, the gradients are summed
over replicas (``strategy.reduce``) and the SGD update runs once, in cross-replica context, on the
mirrored variables. BatchNorm's running statistics are created with ``MEAN`` aggregation, so their
update from replica context is averaged over replicas.

**Synchronized BatchNorm.** d2lres's ``BatchNorm`` is Keras's layer with its own ``call``
(TensorFlow's fused kernel and PyTorch's unbiased running variance), so Keras's
``BatchNormalization(synchronized=True)`` -- a one-pass ``E[x^2] - E[x]^2`` variance with Keras's
biased running variance -- would change the function. :class:`SyncBatchNorm` does what it does
(``ReplicaContext.all_reduce`` of the sums, which TensorFlow differentiates) with the two-pass
variance and the unbiased running variance over the global count.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from .. import parallel


def logical_cpus(n: int) -> None:
    """Split the CPU into ``n`` logical devices (before TensorFlow's runtime starts); refuses if
    it started already with another number."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < n:
            raise parallel.ParallelError(
                f"{n} CPU replicas asked, TensorFlow started with {have} logical CPU(s); split the CPU before "
                f"TensorFlow runs anything (import d2lres.tf.parallel first with D2LRES_REPLICAS={n}, or call "
                f"d2lres.tf.parallel.logical_cpus({n}) first)") from None


if int(os.environ.get("D2LRES_REPLICAS", "1")) > 1 and not tf.config.list_physical_devices("GPU"):
    logical_cpus(int(os.environ["D2LRES_REPLICAS"]))

from .model import BatchNorm  # noqa: E402  (after the logical devices)
from .train import Trainer, _inputs  # noqa: E402


class SyncBatchNorm(BatchNorm):
    """d2lres's ``BatchNorm`` with the global batch's statistics in a replica context of more
    than one replica (all-reduced sums); elsewhere ``BatchNorm``."""

    def call(self, X, training=None):
        ctx = tf.distribute.get_replica_context()
        if not training or ctx is None or ctx.num_replicas_in_sync == 1:
            return super().call(X, training=training)
        axes = [0, 1, 2]
        local = tf.cast(tf.size(X) // tf.shape(X)[-1], tf.float32)
        total, n = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tf.reduce_sum(X, axes), local])
        mean = total / n
        centred = X - mean
        var = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(centred * centred, axes)) / n
        Y = centred * tf.math.rsqrt(var + self.epsilon) * self.gamma + self.beta
        m = 1 - self.momentum  # PyTorch's momentum (Keras's is the weight of the old average)
        self.moving_mean.assign(self.moving_mean * (1 - m) + m * mean)
        self.moving_variance.assign(self.moving_variance * (1 - m) + m * var * n / tf.maximum(n - 1, 1))
        return Y


def strategy(replicas: int) -> tf.distribute.MirroredStrategy:
    """``MirroredStrategy`` over the first ``replicas`` GPUs, or logical CPUs without a GPU."""
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        logical_cpus(replicas)
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))][:replicas]
    if len(devices) < replicas:
        raise parallel.ParallelError(f"{replicas} replicas asked, TensorFlow has {len(devices)} device(s)")
    return tf.distribute.MirroredStrategy(devices)


def _mean_statistics(next_creator, **kwargs):
    if not kwargs.get("trainable", True):
        kwargs["aggregation"] = tf.VariableAggregation.MEAN
    return next_creator(**kwargs)


class ParallelTrainer(Trainer):
    """``Trainer`` over ``replicas`` devices with ``MirroredStrategy``: ``step`` takes the global
    batch and splits it (``d2lres.parallel.shard_slices``). ``net`` is rebuilt inside the
    strategy's scope with its weights (``self.net`` is the mirrored one). ``sync_bn``:
    synchronized BatchNorm (default ``d2lres.parallel.SYNC_BN_DEFAULT``)."""

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, *, replicas: int = 2,
                 compile: bool | None = None, channels_last: bool | None = None,
                 sync_bn: bool = parallel.SYNC_BN_DEFAULT, device=None):
        from . import resnet
        from .weights import get_weights, set_weights
        self.strategy, self.replicas, self.sync_bn = strategy(replicas), replicas, sync_bn
        weights, arch = get_weights(net), net.arch
        with self.strategy.scope(), tf.variable_creator_scope(_mean_statistics):
            mirrored = resnet(arch.depth, arch.version, num_classes=net.num_classes, in_channels=net.in_channels,
                              flavour=arch.flavour)
            set_weights(mirrored, weights)
            if sync_bn:
                for layer in _layers(mirrored):
                    if type(layer) is BatchNorm:
                        layer.__class__ = SyncBatchNorm
            super().__init__(mirrored, momentum, weight_decay, device="/CPU:0", compile=compile,
                             channels_last=channels_last)
        self.device = self.strategy.extended.worker_devices[0]  # inputs land here before the split
        wrap = (lambda f: tf.function(f, reduce_retracing=True)) if self.compile else (lambda f: f)
        self._dist_step = wrap(self._dist_step_impl)

    def _dist_step_impl(self, X, y, n):
        def replica(X, y):
            with tf.GradientTape() as tape:
                logits = self.net(X, training=True)
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)) / n
            grads = tape.gradient(loss, self._weights)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=y.dtype), y), tf.int32))
            return grads, loss, correct
        grads, loss, correct = self.strategy.run(replica, (X, y))
        total = tf.distribute.ReduceOp.SUM
        grads = [self.strategy.reduce(total, g, axis=None) for g in grads]
        for i, (w, g) in enumerate(zip(self._weights, grads)):
            if self.weight_decay:
                g = g + self.weight_decay * w
            if self.momentum:
                g = self.buffers[i].assign(self.momentum * self.buffers[i] + g)
            w.assign_sub(self.lr * g)
        return self.strategy.reduce(total, loss, axis=None), self.strategy.reduce(total, correct, axis=None)

    def step(self, X, y, lr: float) -> tuple[float, int]:
        X, y = _inputs(X, y)
        n = int(X.shape[0])
        parts = parallel.shard_slices(n, self.replicas)
        self.lr.assign(lr)
        Xd = self.strategy.experimental_distribute_values_from_function(lambda c: X[parts[c.replica_id_in_sync_group]])
        yd = self.strategy.experimental_distribute_values_from_function(lambda c: y[parts[c.replica_id_in_sync_group]])
        loss, correct = self._dist_step(Xd, yd, tf.constant(n, tf.float32))
        return float(loss), int(correct)


def _layers(net):
    return [layer for _, layer in _named_layers(net)]


def _named_layers(net):
    from .weights import named_layers
    return named_layers(net)


def data_parallel_step(weights: dict, X: np.ndarray, y: np.ndarray, lr: float, *, replicas: int = 2,
                       sync_bn: bool = parallel.SYNC_BN_DEFAULT, arch=None, momentum: float = 0.0,
                       weight_decay: float = 0.0) -> dict:
    """One data-parallel step on ``replicas`` devices from ``weights`` on the global batch
    ``(X, y)`` (NCHW numpy): ``{"step_loss", "after_step"}``."""
    st = strategy(replicas)  # before anything else runs TensorFlow
    del st
    from . import resnet, set_weights
    a = parallel.get_arch(arch)
    net = resnet(a.depth, a.version, num_classes=10, in_channels=X.shape[1], flavour=a.flavour)
    set_weights(net, weights)
    trainer = ParallelTrainer(net, momentum, weight_decay, replicas=replicas, sync_bn=sync_bn)
    loss, _ = trainer.step(*trainer.convert(X, y), lr)
    return {"step_loss": loss, "after_step": trainer.get_weights()}
