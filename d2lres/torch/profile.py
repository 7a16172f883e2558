"""What ``d2lres profile`` times in PyTorch: each stage of the ``Trainer``'s own network
(``net.b1`` .. ``net.head``, in the layout the ``Trainer`` chose) forward and backward in
training mode (in the ``Trainer``'s forward mode: its kernels), the optimizer's update, and ``Trainer.step``."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def calls(trainer, feeds: dict, lr: float) -> dict:
    """Name -> callable: ``b1`` .. ``head``, ``update``, ``step`` (see ``d2lres.perf.profile``)."""
    X, y = trainer.convert(feeds["images"], feeds["labels"])
    trainer.step(X, y, lr)  # chooses the memory format; leaves every gradient for the update
    fmt = trainer.memory_format
    net = trainer.net
    net.train()
    out = {}
    for name, (Xs, dY) in feeds["stages"].items():
        stage = getattr(net, name)
        Xs = torch.from_numpy(Xs).contiguous(memory_format=fmt)
        dY = torch.from_numpy(dY).contiguous(memory_format=fmt) if dY is not None and dY.ndim == 4 \
            else (torch.from_numpy(dY) if dY is not None else None)
        out[name] = _stage_call(stage, Xs, dY, y, input_grad=name != "b1", mode=trainer._forward_mode)
    out["update"] = trainer.optimizer.step  # the gradients of the last stage calls (all set, see _stage_call)
    out["step"] = lambda: trainer.step(X, y, lr)
    return out


def _stage_call(stage, X, dY, y, input_grad: bool, mode):
    params = list(stage.parameters())

    def run():
        for p in params:  # this stage's gradients only: the others stay for the update
            p.grad = None
        X_ = X.detach().requires_grad_(input_grad)
        with mode():
            Y = stage(X_)
        if dY is None:
            F.cross_entropy(Y, y).backward()
        else:
            Y.backward(dY)
    return run
