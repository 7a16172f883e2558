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

Several machines: ``jax.distributed.initialize(coordinator_address, num_processes, process_id)``
in each process before anything else; ``jax.devices()`` then lists every process's devices and the
same code shards over all of them (each process feeds its addressable shards).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .. import parallel
from .train import Trainer, _jit_train_step, _logits_and_stats, sgd

AXIS = "data"


def mesh(replicas: int | None = None) -> Mesh:
    """A one-axis mesh ``("data",)`` over the first ``replicas`` devices (all by default)."""
    devices = jax.devices()
    replicas = replicas or len(devices)
    if replicas > len(devices):
        raise parallel.ParallelError(
            f"{replicas} replicas asked, JAX sees {len(devices)} device(s) ({devices[0].platform}); on the CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={replicas} before JAX is imported")
    return Mesh(np.array(devices[:replicas]), (AXIS,))


def _unsync_step(momentum, weight_decay, graphdef, params, stats, opt_state, X, y, lr):
    """One replica's step inside ``shard_map``: its shard's loss, gradients and BatchNorm
    statistics, averaged over ``"data"``, then the same SGD update on every replica."""
    tx = sgd(momentum, weight_decay)

    def loss_fn(params):
        logits, new_stats = _logits_and_stats(graphdef, params, stats, X)
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
    """``Trainer`` over ``replicas`` devices (default: all of ``jax.devices()``) in one process:
    ``step`` takes the global batch and shards it over the mesh. ``sync_bn``: synchronized
    BatchNorm (default ``d2lres.parallel.SYNC_BN_DEFAULT``)."""

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, *, replicas: int | None = None,
                 compile: bool | None = None, channels_last: bool | None = None,
                 sync_bn: bool = parallel.SYNC_BN_DEFAULT, device=None):
        if compile is False:
            raise parallel.ParallelError("data-parallel JAX runs compiled (jax.jit); compile=False is not available")
        self.mesh = mesh(replicas)
        self.replicas, self.sync_bn = self.mesh.size, sync_bn
        self.replicated, self.sharded = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P(AXIS))
        super().__init__(net, momentum, weight_decay, device=self.replicated, compile=True,
                         channels_last=channels_last)
        self.opt_state = jax.device_put(self.opt_state, self.replicated)

    def _batch_sharding(self, n: int):
        return self.sharded if n % self.replicas == 0 else self.replicated

    def step(self, X, y, lr: float) -> tuple[float, int]:
        n = int(X.shape[0])
        where = self._batch_sharding(n)
        if not self.sync_bn and where is self.replicated:
            raise parallel.ParallelError(
                f"unsynchronized BatchNorm in JAX needs batches that divide over the {self.replicas} devices; "
                f"this one has {n} images (choose a batch size and --limit that divide, or synchronized BatchNorm)")
        X = jax.device_put(jnp.asarray(X, jnp.float32), where)
        y = jax.device_put(jnp.asarray(y, jnp.int32), where)
        params, stats = jax.device_put(self._state(), self.replicated)
        lr = jax.device_put(jnp.asarray(lr, jnp.float32), self.replicated)
        if self.sync_bn:
            step = functools.partial(_jit_train_step, self.momentum, self.weight_decay, self._graph_train)
        else:
            step = _compiled_unsync(self.mesh, self.momentum, self.weight_decay, self._graph_train)
        params, stats, self.opt_state, loss, correct = step(params, stats, self.opt_state, X, y, lr)
        nnx.update(self.net, params, stats)
        return float(loss), int(correct)

    def _input(self, X) -> jax.Array:
        X = jnp.asarray(X, jnp.float32)
        return jax.device_put(X, self._batch_sharding(int(X.shape[0])))

    def predict(self, X) -> np.ndarray:
        return np.asarray(self._eval_forward(self._graph_eval, *jax.device_put(self._state(), self.replicated),
                                             self._input(X)))


def data_parallel_step(weights: dict, X: np.ndarray, y: np.ndarray, lr: float, *, replicas: int = 2,
                       sync_bn: bool = parallel.SYNC_BN_DEFAULT, arch=None, momentum: float = 0.0,
                       weight_decay: float = 0.0) -> dict:
    """One data-parallel step on ``replicas`` devices from ``weights`` on the global batch
    ``(X, y)`` (NCHW numpy): ``{"step_loss", "after_step"}``."""
    from . import resnet, set_weights
    a = parallel.get_arch(arch)
    net = resnet(a.depth, a.version, num_classes=10, in_channels=X.shape[1], flavour=a.flavour)
    set_weights(net, weights)
    trainer = ParallelTrainer(net, momentum, weight_decay, replicas=replicas, sync_bn=sync_bn)
    loss, _ = trainer.step(np.ascontiguousarray(X.transpose(0, 2, 3, 1)), y, lr)
    return {"step_loss": loss, "after_step": trainer.get_weights()}
