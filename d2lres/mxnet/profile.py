"""What ``d2lres profile`` times in MXNet: each stage of the ``Trainer``'s own Gluon network (its
children ``b1`` .. ``head``, hybridized as the ``Trainer`` hybridized them, each traced as the
network traces it: ``kernels.call``) forward and backward
in training mode (``autograd.record``), the ``Trainer``'s SGD update alone (``Trainer._update``),
and ``Trainer.step``; each call waits for MXNet's engine (``waitall``)."""
from __future__ import annotations

import mxnet as mx
from mxnet import autograd, np

from . import kernels


def calls(trainer, feeds: dict, lr: float) -> dict:
    """Name -> callable: ``b1`` .. ``head``, ``update``, ``step`` (see ``d2lres.perf.profile``)."""
    X, y = trainer.convert(feeds["images"], feeds["labels"])
    trainer.step(X, y, lr)  # hybridizes; leaves every gradient for the update
    ctx, out = trainer.device, {}
    for stage, (name, (Xs, dY)) in zip(trainer.net, feeds["stages"].items()):
        Xs = np.array(Xs, ctx=ctx)
        if name != "b1":
            Xs.attach_grad()
        target = y if dY is None else np.array(dY, ctx=ctx)
        out[name] = _stage_call(trainer, stage, Xs, target, loss=dY is None)
    out["update"] = lambda: (trainer._update(lr), mx.nd.waitall())
    out["step"] = lambda: trainer.step(X, y, lr)
    return out


def _stage_call(trainer, stage, X, target, loss: bool):
    def run():
        with autograd.record():
            Y = kernels.call(stage, stage, X)  # as inside the network: its small convolutions as matmuls
            if loss:
                Y = trainer.loss(Y, target).mean()
        Y.backward() if loss else Y.backward(target)
        mx.nd.waitall()
    return run
