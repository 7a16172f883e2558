"""Data-parallel training in MXNet, the book's way: the parameters on a list of contexts
(``cpu(0)``, ``cpu(1)``, ... or GPUs), the global batch split over them, the gradients summed by a
kvstore and the same SGD update on every context. See ``d2lres.parallel`` for the split and the
BatchNorm option.

**One process** (``d2lres train --backend mxnet --devices N``): ``N`` contexts (``D2LRES_REPLICAS``,
which ``split.environment`` sets; 1 when unset) and a ``'device'`` kvstore.

**Several processes, several machines**: MXNet's parameter server, a ``'dist_sync'`` kvstore,
chosen when MXNet's distributed environment is present (``DMLC_ROLE=worker``, see
``d2lres.mxnet.launch``). A dist_sync job is a scheduler, S servers and W workers; every worker
runs ``d2lres train`` with ``D2LRES_REPLICAS`` contexts of its own (default 1), so the run has
``W x contexts`` replicas. Each worker trains on its contexts' shards of the global batch (the
global shards ``split.shard_slices(n, replicas)`` in the order of ``kv.rank`` then context),
the kvstore sums the gradients of every context of every worker, and every worker applies the
same SGD update (momentum and weight decay once, on the summed gradient: the single-device
update). The loss and correct count, and (unsynchronized) the running statistics, are summed
through the kvstore too, so every worker holds the same weights and reports the global batch's
numbers. ``contrib.SyncBatchNorm`` synchronizes the contexts of one process only, so across
workers BatchNorm is per replica (``sync_bn=False``, what ``split.emulate_unsynchronized``
describes); ``sync_bn=True`` is refused there.

Each context's loss is its shard's summed cross-entropy over the global batch size, so the summed
gradients are the global mean loss's. MXNet updates BatchNorm's running variance with the biased
batch variance; as ``d2lres.mxnet.Trainer`` does, the update is rescaled to the unbiased one, over
the images the statistics came from (the global batch when synchronized, the shard otherwise).
Unsynchronized, the replicas' running statistics are averaged (weighted by shard size) after each
step.

**Synchronized BatchNorm**: MXNet's ``contrib.SyncBatchNorm`` operator (the op behind
``mx.gluon.contrib.nn.SyncBatchNorm``), with ``ndev`` the number of contexts and one key per layer;
d2lres's BatchNorm layers are switched to it in place (same parameters, names and checkpoints).
On CPU contexts it is refused: the operator's cross-device barrier hangs there (MXNet 1.9.1; the
first step never returns), so on CPUs MXNet trains with per-context BatchNorm only
(``--no-sync-bn``).
"""
from __future__ import annotations

import itertools
import os

import mxnet as mx
import numpy as onp
from mxnet import autograd
from mxnet.gluon import nn

from .. import spec
from ..core import precision as precisions
from ..errors import UserValueError
from ..loop import split
from .train import BF16_REFUSED, Trainer, try_gpu
from .weights import named_parameters

#: The dist_sync kvstore of this process (one per process: it registers the process as a worker).
_DIST: dict = {}
#: Keys of the dist_sync kvstore, never reused within the process.
_DIST_KEYS = itertools.count()


class SyncBatchNorm(nn.BatchNorm):
    """d2lres's BatchNorm computed by ``contrib.SyncBatchNorm`` over ``_ndev`` contexts."""

    _ndev = 1

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        kw = self._kwargs
        out = F.contrib.SyncBatchNorm(
            x.as_nd_ndarray(), gamma.as_nd_ndarray(), beta.as_nd_ndarray(), running_mean.as_nd_ndarray(),
            running_var.as_nd_ndarray(), name="fwd", eps=kw["eps"], momentum=kw["momentum"],
            fix_gamma=kw["fix_gamma"], use_global_stats=kw["use_global_stats"], ndev=self._ndev, key=self.name)
        return out.as_np_ndarray()


def contexts(replicas: int, device=None) -> list:
    """``replicas`` GPUs if there are so many (and ``device``, when given, is not the CPU), else
    ``cpu(0)`` ... ``cpu(replicas - 1)``."""
    if mx.context.num_gpus() >= replicas and getattr(device, "device_type", "gpu") != "cpu":
        return [mx.gpu(i) for i in range(replicas)]
    return [mx.cpu(i) for i in range(replicas)]


def distributed(env=None) -> bool:
    """Whether this process is a worker of MXNet's parameter server (``DMLC_ROLE=worker``)."""
    return (os.environ if env is None else env).get("DMLC_ROLE") == "worker"


def local_replicas(env=None) -> int:
    """Contexts in this process: ``D2LRES_REPLICAS`` (set by ``split.environment`` and by
    ``d2lres.mxnet.launch --contexts``), 1 when unset."""
    value = (os.environ if env is None else env).get("D2LRES_REPLICAS") or "1"
    if not value.isdigit() or int(value) < 1:
        raise split.ParallelError(f"D2LRES_REPLICAS must be a number >= 1, got {value!r}")
    return int(value)


def dist_kvstore():
    """This process's ``dist_sync`` kvstore (created once: creating it joins the scheduler)."""
    if "kv" not in _DIST:
        _DIST["kv"] = mx.kv.create("dist_sync")
    return _DIST["kv"]


class ParallelTrainer(Trainer):
    """``Trainer`` over a list of contexts with a kvstore: ``step`` takes the global batch and
    splits it (``d2lres.parallel.shard_slices``). ``replicas``: None for every context of every
    worker of the run (``D2LRES_REPLICAS`` contexts per process, times the dist_sync workers); a
    number must match that (in one process without ``D2LRES_REPLICAS`` it sets the contexts).
    ``sync_bn``: synchronized BatchNorm (default ``d2lres.parallel.SYNC_BN_DEFAULT``; GPU contexts
    of one process only). ``device``: a CPU context keeps the contexts on the CPU even where there
    are GPUs. The kvstore: ``'dist_sync'`` under MXNet's launcher, else ``'device'``."""

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, *, device=None,
                 compile: bool | None = None, channels_last: bool | None = None, precision: str = "float32",
                 replicas: int | None = None, sync_bn: bool = split.SYNC_BN_DEFAULT):
        if precisions.check(precision) != "float32":  # refused before the process group starts
            raise UserValueError(BF16_REFUSED)
        dist = distributed()
        local = local_replicas()
        if replicas is not None and not dist and "D2LRES_REPLICAS" not in os.environ:
            local = replicas  # one process, nothing set up: the contexts asked for
        workers = int(os.environ.get("DMLC_NUM_WORKER") or 1) if dist else 1
        total = workers * local
        if replicas is not None and replicas != total:
            where = (f"{workers} dist_sync workers x {local} contexts (D2LRES_REPLICAS)" if dist else
                     f"D2LRES_REPLICAS={local} contexts in this process")
            raise split.ParallelError(f"replicas={replicas} does not match the run's {total} replicas ({where}); "
                                         f"pass replicas=None or {total}")
        self.ctxs = contexts(local, device)
        self.replicas, self.sync_bn, self.workers = total, sync_bn, workers
        if sync_bn and dist and workers > 1:
            raise split.ParallelError(
                "synchronized BatchNorm across MXNet dist_sync workers is not available (contrib.SyncBatchNorm "
                "synchronizes the contexts of one process); pass --no-sync-bn (sync_bn=False): BatchNorm per "
                "replica, running statistics averaged")
        if sync_bn and local > 1 and self.ctxs[0].device_type == "cpu":
            raise split.ParallelError(
                "synchronized BatchNorm over CPU contexts is not available in MXNet 1.9.1: contrib.SyncBatchNorm "
                "waits at a barrier for the other contexts' operators, which the CPU engine never runs alongside "
                "(the step hangs); on CPUs pass --no-sync-bn (sync_bn=False: BatchNorm per context, statistics "
                "averaged)")
        self.kv = dist_kvstore() if dist else mx.kv.create("device")  # refusals first: this joins the job
        self.rank = self.kv.rank if dist else 0
        if sync_bn:
            for _, block in _blocks(net):
                if type(block) is nn.BatchNorm:
                    block.__class__ = SyncBatchNorm
                    block._ndev = local
        super().__init__(net, momentum, weight_decay, device=self.ctxs[0], compile=False,
                         channels_last=channels_last, precision=precision)
        net.collect_params().reset_ctx(self.ctxs)
        if compile is None or compile:  # without static_alloc: with it, over several contexts, the
            net.hybridize()              # running means were never updated (MXNet 1.9.1, CPU)
        self.stats = [(name, p) for name, p in named_parameters(net) if p.grad_req == "null"]
        keys = _DIST_KEYS if dist else itertools.count()
        self.grad_keys = [next(keys) for _ in self.params]
        self.stat_keys = [next(keys) for _ in self.stats]
        self.metric_key = next(keys)
        for key, (_, p) in zip(self.grad_keys, self.params):
            self.kv.init(key, mx.nd.zeros(p.shape, ctx=self.ctxs[0]))
        for key, (_, p) in zip(self.stat_keys, self.stats):
            self.kv.init(key, mx.nd.zeros(p.shape, ctx=self.ctxs[0]))
        self.kv.init(self.metric_key, mx.nd.zeros((2,), ctx=self.ctxs[0]))
        self.buffers = [[mx.nd.zeros(p.shape, ctx=c) for c in self.ctxs] for _, p in self.params]

    def step(self, X, y, lr: float) -> tuple[float, int]:
        n, local = int(X.shape[0]), len(self.ctxs)
        parts = split.shard_slices(n, self.replicas)[self.rank * local:(self.rank + 1) * local]
        Xs = [X[s].as_in_ctx(c) for s, c in zip(parts, self.ctxs)]
        ys = [y[s].as_in_ctx(c) for s, c in zip(parts, self.ctxs)]
        old_vars = [[p.data(c).copy() for _, p in self.running_vars] for c in self.ctxs]
        with autograd.record():
            logits = [self.net(x) for x in Xs]
            losses = [self.loss(out, t).sum() / n for out, t in zip(logits, ys)]
        autograd.backward(losses)
        for key, (_, p) in zip(self.grad_keys, self.params):  # summed over contexts and workers
            grads = [g.as_nd_ndarray() for g in p.list_grad()]
            self.kv.pushpull(key, grads, out=grads)
        if self.momentum and self.last_lr and lr != self.last_lr:
            for moms in self.buffers:
                for mom in moms:
                    mom *= lr / self.last_lr
        for (_, p), moms in zip(self.params, self.buffers):
            for c, mom in zip(self.ctxs, moms):
                w = p.data(c).as_nd_ndarray()
                mx.nd.sgd_mom_update(w, p.grad(c).as_nd_ndarray(), mom, lr=lr, momentum=self.momentum,
                                     wd=self.weight_decay, out=w)
        self.last_lr = lr
        self._unbias(old_vars, Xs, n)
        metrics = [mx.nd.concat(loss.as_nd_ndarray().reshape((1,)),
                                (out.argmax(axis=1).astype("int32") == t).sum().astype("float32").as_nd_ndarray()
                                .reshape((1,)), dim=0)
                   for loss, out, t in zip(losses, logits, ys)]
        self.kv.pushpull(self.metric_key, metrics, out=metrics)  # the global batch's, on every worker
        loss, correct = metrics[0].asnumpy().tolist()
        return float(loss), int(round(correct))

    def _unbias(self, old_vars, Xs, n) -> None:
        """MXNet did ``rv = m rv_old + (1 - m) v_biased`` per context; make it unbiased over the
        images behind the statistics; unsynchronized, average the replicas' statistics (weighted by
        their shares of the global batch, summed by the kvstore over contexts and workers)."""
        shape = Xs[0].shape[2:]
        if shape not in self._bn_sizes:
            self._bn_sizes[shape] = spec.batchnorm_sizes(shape, self.net.num_classes, self.net.in_channels,
                                                         getattr(self.net, "arch", None))
        sizes, keep = self._bn_sizes[shape], 1 - spec.BN_MOMENTUM
        for c, x, olds in zip(self.ctxs, Xs, old_vars):
            for (name, p), old in zip(self.running_vars, olds):
                count = sizes[name] * (n if self.sync_bn else x.shape[0])
                if count > 1:
                    rv = p.data(c)
                    rv[:] = rv + (rv - keep * old) / (count - 1)
        if not self.sync_bn:
            share = [x.shape[0] / n for x in Xs]
            for key, (_, p) in zip(self.stat_keys, self.stats):
                parts = [(a * p.data(c)).as_nd_ndarray() for a, c in zip(share, self.ctxs)]
                self.kv.pushpull(key, parts, out=parts)
                for c, part in zip(self.ctxs, parts):
                    p.data(c)[:] = part.as_np_ndarray()

    def predict(self, X) -> onp.ndarray:
        return self.net(X.as_in_ctx(self.ctxs[0])).asnumpy()

    def optimizer_state(self) -> dict[str, onp.ndarray]:
        if not (self.momentum and self.last_lr):
            return {}
        return {f"momentum.{name}": -moms[0].asnumpy() / self.last_lr
                for (name, _), moms in zip(self.params, self.buffers)}

    def load_optimizer_state(self, state: dict[str, onp.ndarray]) -> None:
        self.last_lr = 1.0
        for (name, _), moms in zip(self.params, self.buffers):
            if f"momentum.{name}" in state:
                for c, mom in zip(self.ctxs, moms):
                    mom[:] = -mx.nd.array(state[f"momentum.{name}"], ctx=c)


def _blocks(block, prefix=""):
    yield prefix, block
    for name, child in block._children.items():
        yield from _blocks(child, f"{prefix}.{name}")


__all__ = ["ParallelTrainer", "SyncBatchNorm", "contexts", "dist_kvstore", "distributed", "local_replicas",
           "try_gpu"]
