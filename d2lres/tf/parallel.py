"""Data-parallel training in TensorFlow: ``tf.distribute.MirroredStrategy`` over the GPUs, or over
logical CPU devices on a machine without one (``logical_cpus``, which must run before TensorFlow
starts its runtime: ``d2lres.host.process.configure`` does it where a run starts when
``D2LRES_REPLICAS`` is set, as ``d2lres.parallel.environment`` sets it). See ``d2lres.parallel``
for the split and the BatchNorm option.

**Across machines** (or processes): ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set
(``{"cluster": {"worker": ["host0:port", "host1:port", ...]}, "task": {"type": "worker",
"index": i}}``; README). Every worker process runs the same program (``d2lres train`` with the
same options); its local devices are its GPUs, or its CPU; the replicas are numbered over all
workers, so each process takes its own shards of the same global batch (d2lres's seeded batches
are the same in every process). The strategy configures TensorFlow's collective ops, which
TensorFlow allows only before its runtime starts, so a run with ``TF_CONFIG`` set creates it
first (``d2lres.host.process.configure``, :func:`multi_worker_strategy`; it waits there for every
worker of the cluster).
Worker 0 is rank 0 (``d2lres.parallel.process_rank``), the one that writes the run's files.

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

import json
import os

import numpy as np
import tensorflow as tf

from .. import spec
from ..loop import split
from .model import BatchNorm
from .train import Trainer, as_batch, as_float32


def logical_cpus(n: int) -> None:
    """Split the CPU into ``n`` logical devices (before TensorFlow's runtime starts); refuses if
    it started already with another number."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < n:
            raise split.ParallelError(
                f"{n} CPU replicas asked, TensorFlow started with {have} logical CPU(s); split the CPU before "
                f"TensorFlow runs anything (import d2lres.tf.parallel first with D2LRES_REPLICAS={n}, or call "
                f"d2lres.tf.parallel.logical_cpus({n}) first)") from None


def tf_config(env=None) -> dict | None:
    """``TF_CONFIG`` of this process (``env``: default ``os.environ``) as a dict, None if unset;
    refuses one that is not a worker of a cluster of workers."""
    env = os.environ if env is None else env
    if not env.get("TF_CONFIG"):
        return None
    try:
        config = json.loads(env["TF_CONFIG"])
        workers, task = config["cluster"]["worker"], config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise split.ParallelError(
            f"TF_CONFIG is not a cluster of workers ({type(err).__name__}: {err}); set it to "
            f'{{"cluster": {{"worker": ["host0:port", "host1:port"]}}, "task": {{"type": "worker", "index": i}}}} '
            f"or unset it") from None
    if task.get("type") != "worker" or not 0 <= index < len(workers) or set(config["cluster"]) - {"worker"}:
        raise split.ParallelError(
            f"TF_CONFIG: d2lres runs a cluster of workers only (task type 'worker', index 0..{len(workers) - 1}); "
            f"got task {task} in a cluster of {sorted(config['cluster'])}")
    return config


_MULTI_WORKER = None


def multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy | None:
    """The process's ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set (created once,
    before TensorFlow's runtime starts; it waits for every worker), else None."""
    global _MULTI_WORKER
    if _MULTI_WORKER is None and tf_config() is not None:
        try:
            _MULTI_WORKER = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as err:
            raise split.ParallelError(
                f"TF_CONFIG is set but TensorFlow's runtime started before d2lres could configure its collective "
                f"ops ({err}); call d2lres.host.process.configure('tf') before running anything in TensorFlow") \
                from None
    return _MULTI_WORKER


def prepare() -> None:
    """What must happen before TensorFlow's runtime starts (``d2lres.host.process.configure``
    calls it where a run starts): the multi-worker strategy under ``TF_CONFIG``, else
    ``D2LRES_REPLICAS`` logical CPUs on a machine without a GPU."""
    if multi_worker_strategy() is None and int(os.environ.get("D2LRES_REPLICAS", "1")) > 1 \
            and not tf.config.list_physical_devices("GPU"):
        logical_cpus(int(os.environ["D2LRES_REPLICAS"]))


class SyncBatchNorm(BatchNorm):
    """d2lres's ``BatchNorm`` with the global batch's statistics in a replica context of more
    than one replica (all-reduced sums); elsewhere ``BatchNorm``."""

    def call(self, X, training=None):
        ctx = tf.distribute.get_replica_context()
        if not training or ctx is None or ctx.num_replicas_in_sync == 1:
            return super().call(X, training=training)
        out_dtype = X.dtype  # bf16: bfloat16 in and out, the statistics in float32 (as the fused kernel)
        X = X if X.dtype == tf.float32 else tf.cast(X, tf.float32)
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
        return Y if Y.dtype == out_dtype else tf.cast(Y, out_dtype)


def strategy(replicas: int | None = None) -> tf.distribute.Strategy:
    """The run's strategy: ``MultiWorkerMirroredStrategy`` under ``TF_CONFIG`` (``replicas``, if
    given, must be its number of replicas over all workers), else ``MirroredStrategy`` over
    ``replicas`` GPUs, or logical CPUs without a GPU (None: ``D2LRES_REPLICAS``, else every GPU,
    else every logical CPU; a number other than ``D2LRES_REPLICAS`` is refused)."""
    multi = multi_worker_strategy()
    if multi is not None:
        if replicas is not None and replicas != multi.num_replicas_in_sync:
            raise split.ParallelError(
                f"{replicas} replicas asked, the TF_CONFIG cluster has {multi.num_replicas_in_sync} "
                f"({len(tf_config()['cluster']['worker'])} worker(s) x {len(multi.extended.worker_devices)} local "
                f"device(s)); leave the number to the cluster")
        return multi
    launched = os.environ.get("D2LRES_REPLICAS")
    if replicas is not None and launched is not None and replicas != int(launched):
        raise split.ParallelError(f"{replicas} replicas asked in a process set up for D2LRES_REPLICAS={launched}")
    gpus = tf.config.list_logical_devices("GPU")
    if replicas is None:
        replicas = int(launched) if launched is not None else len(gpus or tf.config.list_logical_devices("CPU"))
    if not gpus:
        logical_cpus(replicas)
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))][:replicas]
    if len(devices) < replicas:
        raise split.ParallelError(f"{replicas} replicas asked, TensorFlow has {len(devices)} device(s)")
    return tf.distribute.MirroredStrategy(devices)


def _mean_statistics(next_creator, **kwargs):
    if not kwargs.get("trainable", True):
        kwargs["aggregation"] = tf.VariableAggregation.MEAN
    return next_creator(**kwargs)


class ParallelTrainer(Trainer):
    """``Trainer`` over every replica of the run (:func:`strategy`): ``MirroredStrategy`` on one
    machine, ``MultiWorkerMirroredStrategy`` across the workers of ``TF_CONFIG``. ``step`` takes
    the global batch, trains each local replica on its shard (``d2lres.parallel.shard_slices``)
    and returns the global batch's loss and correct count. ``net`` is rebuilt inside the
    strategy's scope with its weights (``self.net`` is the mirrored one). ``replicas``: None, or
    the run's number, checked; ``rank``: this worker's index (0 in one process); ``sync_bn``:
    synchronized BatchNorm (default ``d2lres.parallel.SYNC_BN_DEFAULT``). ``device`` is not used:
    the strategy places the replicas. ``precision``: as ``Trainer``'s, on the mirrored network
    (bf16 is checked on every local replica's device; ``SyncBatchNorm`` computes in float32)."""

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, *, device=None,
                 compile: bool | None = None, channels_last: bool | None = None, precision: str = "float32",
                 replicas: int | None = None, sync_bn: bool = split.SYNC_BN_DEFAULT):
        from ..core import precision as precisions
        from . import resnet
        from .weights import get_weights, set_weights
        precisions.check(precision)  # before the strategy and the mirrored network are made
        self.strategy = strategy(replicas)
        self.replicas, self.sync_bn = self.strategy.num_replicas_in_sync, sync_bn
        config = tf_config() if self.strategy is _MULTI_WORKER else None
        self.rank = 0 if config is None else int(config["task"]["index"])
        weights, arch = get_weights(net), net.arch
        with self.strategy.scope(), tf.variable_creator_scope(_mean_statistics):
            mirrored = resnet(arch.name, arch.version, num_classes=net.num_classes, in_channels=net.in_channels,
                              flavour=arch.flavour)
            set_weights(mirrored, weights)
            if sync_bn:
                for layer in _layers(mirrored):
                    if type(layer) is BatchNorm:
                        layer.__class__ = SyncBatchNorm
            super().__init__(mirrored, momentum, weight_decay, device="/CPU:0", compile=compile,
                             channels_last=channels_last, precision=precision)
        self.device = self.strategy.extended.worker_devices[0]  # inputs land here before the split
        wrap = (lambda f: tf.function(f, reduce_retracing=True)) if self.compile else (lambda f: f)
        self._dist_step = wrap(self._dist_step_impl)

    def _precision_devices(self) -> list[str]:
        return list(self.strategy.extended.worker_devices)

    def _dist_step_impl(self, X, y, n):
        def replica(X, y):
            with tf.GradientTape() as tape:
                logits = as_float32(self.net(X, training=True))
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)) / n
            grads = tape.gradient(loss, self._weights)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=y.dtype), y), tf.int32))
            return grads, loss, correct
        grads, loss, correct = self.strategy.run(replica, (X, y))
        total = tf.distribute.ReduceOp.SUM
        self._update([self.strategy.reduce(total, g, axis=None) for g in grads])  # once, on the mirrored weights
        return self.strategy.reduce(total, loss, axis=None), self.strategy.reduce(total, correct, axis=None)

    def step(self, X, y, lr: float) -> tuple[float, int]:
        """One SGD step on the global batch ``(X, y)``; returns its mean loss and correct count."""
        X = self._check(X, training=True)
        self._own_policy()
        X, y = as_batch(X, y)
        n = int(X.shape[0])
        parts = split.shard_slices(n, self.replicas)
        self.lr.assign(lr)

        def run():
            # replica ids count over all workers: each process places its own replicas' shards
            Xd = self.strategy.experimental_distribute_values_from_function(
                lambda c: X[parts[c.replica_id_in_sync_group]])
            yd = self.strategy.experimental_distribute_values_from_function(
                lambda c: y[parts[c.replica_id_in_sync_group]])
            loss, correct = self._dist_step(Xd, yd, tf.constant(n, tf.float32))
            return float(loss), int(correct)
        return self._keep_statistics_finite(run)


def _layers(net):
    return [layer for _, layer in _named_layers(net)]


def _named_layers(net):
    from .weights import named_layers
    return named_layers(net)


def data_parallel_step(weights: dict, X: np.ndarray, y: np.ndarray, lr: float, *, replicas: int = 2,
                       sync_bn: bool = split.SYNC_BN_DEFAULT, arch: spec.Arch, momentum: float = 0.0,
                       weight_decay: float = 0.0) -> dict:
    """One data-parallel step on ``replicas`` devices from ``weights`` on the global batch
    ``(X, y)`` (NCHW numpy): ``{"step_loss", "after_step"}``."""
    strategy(replicas)  # before anything else runs TensorFlow (refuses a number the run does not have)
    from . import resnet, set_weights
    a = arch
    net = resnet(a.name, a.version, num_classes=10, in_channels=X.shape[1], flavour=a.flavour)
    set_weights(net, weights)
    trainer = ParallelTrainer(net, momentum, weight_decay, replicas=replicas, sync_bn=sync_bn)
    loss, _ = trainer.step(*trainer.convert(X, y), lr)
    return {"step_loss": loss, "after_step": trainer.get_weights()}
