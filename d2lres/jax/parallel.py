"""Data-parallel training in JAX: the global batch sharded over ``jax.devices()`` on a one-axis
``Mesh`` (axis ``"data"``), the weights, BatchNorm statistics and optimizer state replicated. See
``d2lres.parallel`` for the split and the BatchNorm option.

- **Synchronized BatchNorm** (default): the single-device step itself (``d2lres.jax.train``'s
  compiled ``_train_step``), compiled for inputs with ``NamedSharding(mesh, P("data"))``. XLA's
  partitioner (GSPMD) keeps the function global: each device computes its shard, and every
  reduction over the batch axis -- BatchNorm's mean and variance, the loss's mean, the weight
  gradients' sum over the batch -- becomes a local reduction plus an all-reduce (a ``psum`` over
  ``"data"``). So the BatchNorm statistics are the global batch's by construction, the unbiased
  correction uses the global count, and nothing of the model changes. A batch that does not
  divide over the devices (the last of an epoch) runs replicated: the same function, unsplit.
- **Unsynchronized**: ``shard_map`` of a per-replica step over ``"data"``: each device computes
  its shard's loss, gradients and BatchNorm statistics; the gradients and losses are ``pmean``-ed
  (even shards, so the global mean) and the statistics too (``d2lres.parallel``'s convention).
  Shards must be even here: a batch that does not divide raises ``ParallelError``.

Several processes (one machine or several): ``jax.distributed.initialize`` in each process when
``d2lres.jax`` is imported, from ``JAX_COORDINATOR_ADDRESS``, ``D2LRES_NUM_PROCESSES`` and
``D2LRES_PROCESS_ID`` (``d2lres.jax.distributed``); ``jax.devices()`` then lists every process's
devices, the mesh spans them, and the same compiled step runs in every process on the same global
batch, each process placing its own devices' shards (``jax.make_array_from_callback``). The
cross-process all-reduces run over gloo on the CPU, NCCL on GPUs.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..core import precision as precisions
from ..loop import split
from .train import Trainer, eval_logits, host_arrays, jit_train_step, logits_and_stats, sgd

AXIS = "data"


def run_devices() -> list:
    """The devices of the run: every process's (``jax.devices()``); in a single process that
    ``d2lres.parallel.environment`` set up (``D2LRES_REPLICAS=N``), the first N of them."""
    devices = jax.devices()
    wanted = os.environ.get("D2LRES_REPLICAS")
    if jax.process_count() > 1 or not wanted:
        return devices
    if int(wanted) > len(devices):
        raise split.ParallelError(
            f"{wanted} devices asked, JAX sees {len(devices)} ({devices[0].platform}); on the CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={wanted} before JAX is imported (d2lres train "
            f"--devices does)")
    return devices[:int(wanted)]


def mesh(replicas: int | None = None) -> Mesh:
    """A one-axis mesh ``("data",)`` over the run's devices (:func:`run_devices`: all processes'
    after ``jax.distributed.initialize``); ``replicas``, if given, must be their number."""
    devices = run_devices()
    if replicas is not None and replicas != len(devices):
        hint = (f"on the CPU set XLA_FLAGS=--xla_force_host_platform_device_count={replicas} before JAX is imported"
                if jax.process_count() == 1 else "or start the run with as many processes x devices")
        raise split.ParallelError(
            f"{replicas} replicas asked, the JAX run has {len(devices)} device(s) ({devices[0].platform}, "
            f"{jax.process_count()} process(es)); pass replicas=None for all of them, {hint}")
    return Mesh(np.array(devices), (AXIS,))


def global_array(x, sharding: NamedSharding) -> jax.Array:
    """``x`` (the same value in every process: numpy, or a JAX array) as one array of the run
    with ``sharding``; each process places the pieces its own devices hold. An array that has
    that sharding already is returned as it is."""
    if isinstance(x, jax.Array):
        if x.sharding == sharding:
            return x
        if not x.is_fully_addressable:  # another sharding over the run's devices
            return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _unsync_step(momentum, weight_decay, graphdef, params, stats, opt_state, X, y, lr):
    """One replica's step inside ``shard_map``: its shard's loss, gradients and BatchNorm
    statistics, averaged over ``"data"``, then the same SGD update on every replica."""
    tx = sgd(momentum, weight_decay)

    def loss_fn(params):
        logits, new_stats = logits_and_stats(graphdef, params, stats, X)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads, loss, new_stats = jax.lax.pmean((grads, loss, new_stats), AXIS)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda w, v: w - lr * v, params, updates)
    correct = jax.lax.psum(jnp.sum(jnp.argmax(logits, axis=-1) == y), AXIS)
    return params, new_stats, opt_state, loss, correct


# check_vma=False: the gradient of each replica is its own (with JAX's varying-value checks on,
# the gradient of a replicated weight comes out already summed over "data"); _unsync_step
# averages explicitly.
@functools.lru_cache(maxsize=None)
def _compiled_unsync(the_mesh: Mesh, momentum: float, weight_decay: float, graphdef):
    step = functools.partial(_unsync_step, momentum, weight_decay, graphdef)
    mapped = jax.shard_map(step, mesh=the_mesh, in_specs=(P(), P(), P(), P(AXIS), P(AXIS), P()),
                           out_specs=(P(), P(), P(), P(), P()), check_vma=False)
    return jax.jit(mapped)


class ParallelTrainer(Trainer):
    """``Trainer`` over every device of the run (``replicas=None``; a number must match), in one
    process or several (``jax.distributed``, see ``d2lres.jax.distributed``): ``step`` takes the
    global batch -- the same in every process -- and shards it over the mesh; each process feeds
    its own devices' shards. ``sync_bn``: synchronized BatchNorm (default
    ``d2lres.parallel.SYNC_BN_DEFAULT``). ``rank``: ``jax.process_index()`` (0 writes the run's
    files). ``device`` is not used: the mesh is the device set. ``precision``: as ``Trainer``'s; with
    ``"bf16"`` every compiled step here (synchronized or not) and the eval forward are compiled from
    the Trainer's bf16 graph definitions."""

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, *, device=None,
                 compile: bool | None = None, channels_last: bool | None = None, precision: str = "float32",
                 replicas: int | None = None, sync_bn: bool = split.SYNC_BN_DEFAULT):
        precisions.check(precision)  # before the state is replicated
        if compile is False:
            raise split.ParallelError("data-parallel JAX runs compiled (jax.jit); compile=False is not available")
        self.mesh = mesh(replicas)
        self.replicas, self.sync_bn, self.rank = self.mesh.size, sync_bn, jax.process_index()
        self.device_label = self.mesh.devices.flat[0].platform  # reports name it, not the sharding (training.fit)
        self.replicated, self.sharded = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P(AXIS))
        nnx.update(net, self._replicate(nnx.state(net)))  # so that Trainer's device_put keeps them
        super().__init__(net, momentum, weight_decay, device=self.replicated, compile=True,
                         channels_last=channels_last, precision=precision)
        self.opt_state = self._replicate(self.opt_state)

    def _replicate(self, tree):
        return jax.tree.map(lambda x: global_array(x, self.replicated), tree)

    def _batch_sharding(self, n: int):
        return self.sharded if n % self.replicas == 0 else self.replicated

    def convert(self, X: np.ndarray, y: np.ndarray):
        """The global batch on the host (NHWC float32, int32 labels): ``step`` and ``predict``
        place each process's shards."""
        return host_arrays(X, y)

    def step(self, X, y, lr: float) -> tuple[float, int]:
        self._check(X, training=True)
        n = int(X.shape[0])
        where = self._batch_sharding(n)
        if not self.sync_bn and where is self.replicated:
            raise split.ParallelError(
                f"unsynchronized BatchNorm in JAX needs batches that divide over the {self.replicas} devices; "
                f"this one has {n} images (choose a batch size and --limit that divide, or synchronized BatchNorm)")
        X = global_array(np.asarray(X, np.float32), where)
        y = global_array(np.asarray(y, np.int32), where)
        lr = global_array(np.float32(lr), self.replicated)
        if self.sync_bn:
            step = functools.partial(jit_train_step, self.momentum, self.weight_decay, 0.0, self._graph_train)
        else:
            step = _compiled_unsync(self.mesh, self.momentum, self.weight_decay, self._graph_train)

        def run():
            params, stats = self._replicate(self._state())
            params, stats, opt_state, loss, correct = step(params, stats, self._replicate(self.opt_state), X, y, lr)
            self.opt_state = opt_state
            nnx.update(self.net, params, stats)
            return float(loss), int(correct)
        return self._keep_statistics_finite(run)

    def predict(self, X) -> np.ndarray:
        self._check(X, training=False)
        X = global_array(np.asarray(X, np.float32), self._batch_sharding(int(X.shape[0])))
        return np.asarray(_compiled_eval(self.replicated, self._graph_eval)(*self._replicate(self._state()), X))


@functools.lru_cache(maxsize=None)
def _compiled_eval(replicated: NamedSharding, graphdef):
    """The eval forward with its logits gathered on every device (each process reads them all)."""
    return jax.jit(functools.partial(eval_logits, graphdef), out_shardings=replicated)
