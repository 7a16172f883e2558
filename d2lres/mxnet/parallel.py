"""Data-parallel training in MXNet, the book's way: the parameters on a list of contexts
(``cpu(0)``, ``cpu(1)``, ... or GPUs), the global batch split over them, the gradients summed by a
kvstore (``'device'``; ``'dist_sync'`` across machines with MXNet's launcher) and the same SGD
update on every context. See ``d2lres.parallel`` for the split and the BatchNorm option.

Each context's loss is its shard's summed cross-entropy over the global batch size, so the summed
gradients are the global mean loss's. MXNet updates BatchNorm's running variance with the biased
batch variance; as ``d2lres.mxnet.Trainer`` does, the update is rescaled to the unbiased one, over
the images the statistics came from (the global batch when synchronized, the shard otherwise).
Unsynchronized, the contexts' running statistics are averaged after each step.

**Synchronized BatchNorm**: MXNet's ``contrib.SyncBatchNorm`` operator (the op behind
``mx.gluon.contrib.nn.SyncBatchNorm``), with ``ndev`` the number of contexts and one key per layer;
d2lres's BatchNorm layers are switched to it in place (same parameters, names and checkpoints).
On CPU contexts it is refused: the operator's cross-device barrier hangs there (MXNet 1.9.1; the
first step never returns), so on CPUs MXNet trains with per-context BatchNorm only.
"""
from __future__ import annotations

import mxnet as mx
import numpy as onp
from mxnet import autograd, np
from mxnet.gluon import nn

from .. import parallel, spec
from .train import Trainer, try_gpu
from .weights import named_parameters


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


def contexts(replicas: int) -> list:
    """``replicas`` GPUs if there are so many, else ``cpu(0)`` ... ``cpu(replicas - 1)``."""
    if mx.context.num_gpus() >= replicas:
        return [mx.gpu(i) for i in range(replicas)]
    return [mx.cpu(i) for i in range(replicas)]


class ParallelTrainer(Trainer):
    """``Trainer`` over a list of contexts with a kvstore: ``step`` takes the global batch and
    splits it (``d2lres.parallel.shard_slices``). ``sync_bn``: synchronized BatchNorm (default
    ``d2lres.parallel.SYNC_BN_DEFAULT``). ``kvstore``: ``'device'`` (default) or ``'local'``."""

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, *, replicas: int = 2,
                 compile: bool | None = None, channels_last: bool | None = None,
                 sync_bn: bool = parallel.SYNC_BN_DEFAULT, kvstore: str = "device", device=None):
        self.ctxs = contexts(replicas)
        self.replicas, self.sync_bn = replicas, sync_bn
        if sync_bn and replicas > 1 and self.ctxs[0].device_type == "cpu":
            raise parallel.ParallelError(
                "synchronized BatchNorm over CPU contexts is not available in MXNet 1.9.1: contrib.SyncBatchNorm "
                "waits at a barrier for the other contexts' operators, which the CPU engine never runs alongside "
                "(the step hangs); on CPUs pass sync_bn=False (BatchNorm per context, statistics averaged)")
        if sync_bn:
            for _, block in _blocks(net):
                if type(block) is nn.BatchNorm:
                    block.__class__ = SyncBatchNorm
                    block._ndev = replicas
        super().__init__(net, momentum, weight_decay, device=self.ctxs[0], compile=False,
                         channels_last=channels_last)
        net.collect_params().reset_ctx(self.ctxs)
        if compile is None or compile:  # without static_alloc: with it, over several contexts, the
            net.hybridize()              # running means were never updated (MXNet 1.9.1, CPU)
        self.kv = mx.kv.create(kvstore)
        for i, (_, p) in enumerate(self.params):
            self.kv.init(i, p.data(self.ctxs[0]).as_nd_ndarray())
        self.buffers = [[mx.nd.zeros(p.shape, ctx=c) for c in self.ctxs] for _, p in self.params]

    def step(self, X, y, lr: float) -> tuple[float, int]:
        n = int(X.shape[0])
        parts = parallel.shard_slices(n, self.replicas)
        Xs = [X[s].as_in_ctx(c) for s, c in zip(parts, self.ctxs)]
        ys = [y[s].as_in_ctx(c) for s, c in zip(parts, self.ctxs)]
        old_vars = [[p.data(c).copy() for _, p in self.running_vars] for c in self.ctxs]
        with autograd.record():
            logits = [self.net(x) for x in Xs]
            losses = [self.loss(out, t).sum() / n for out, t in zip(logits, ys)]
        autograd.backward(losses)
        for i, (_, p) in enumerate(self.params):
            grads = [g.as_nd_ndarray() for g in p.list_grad()]
            self.kv.pushpull(i, grads, out=grads)
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
        loss = sum(float(v) for v in losses)
        correct = sum(int((out.argmax(axis=1).astype("int32") == t).sum()) for out, t in zip(logits, ys))
        return loss, correct

    def _unbias(self, old_vars, Xs, n) -> None:
        """MXNet did ``rv = m rv_old + (1 - m) v_biased`` per context; make it unbiased over the
        images behind the statistics; unsynchronized, average the contexts' statistics."""
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
            for _, p in named_parameters(self.net):
                if p.grad_req == "null":
                    mean = sum(a * p.data(c).copyto(self.ctxs[0]) for a, c in zip(share, self.ctxs))
                    p.set_data(mean)

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


def data_parallel_step(weights: dict, X: onp.ndarray, y: onp.ndarray, lr: float, *, replicas: int = 2,
                       sync_bn: bool = parallel.SYNC_BN_DEFAULT, arch=None, momentum: float = 0.0,
                       weight_decay: float = 0.0) -> dict:
    """One data-parallel step on ``replicas`` contexts from ``weights`` on the global batch
    ``(X, y)`` (NCHW numpy): ``{"step_loss", "after_step"}``."""
    from . import resnet, set_weights
    a = parallel.get_arch(arch)
    net = resnet(a.depth, a.version, num_classes=10, in_channels=X.shape[1], flavour=a.flavour)
    set_weights(net, weights)
    trainer = ParallelTrainer(net, momentum, weight_decay, replicas=replicas, sync_bn=sync_bn)
    loss, _ = trainer.step(np.array(X), np.array(y.astype(onp.int32), dtype="int32"), lr)
    return {"step_loss": loss, "after_step": trainer.get_weights()}


__all__ = ["ParallelTrainer", "SyncBatchNorm", "contexts", "data_parallel_step", "try_gpu"]
