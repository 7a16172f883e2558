"""Data-parallel training in PyTorch: ``DistributedDataParallel``, one process per replica
(gloo on CPU, NCCL on GPUs), launched by ``torchrun`` or by :func:`spawn`
(``torch.multiprocessing`` with the same ``init_process_group``). See ``d2lres.parallel`` for the
split of the global batch and the BatchNorm option.

**Synchronized BatchNorm on CPU.** ``torch.nn.SyncBatchNorm`` (torch 2.13) refuses CPU tensors
("SyncBatchNorm expected input tensor to be on GPU or XPU ..."): its kernel is CUDA's. On CPU
:class:`SyncBatchNorm` does the same with ``torch.distributed.nn.functional.all_reduce`` (an
all-reduce autograd differentiates: its backward all-reduces the gradients): the global sum and
count give the mean, the global sum of squared deviations the variance (two passes, as the
single-device kernel), and the running variance is updated with the unbiased variance over the
global count. On GPUs :func:`convert_sync_batchnorm` uses ``torch.nn.SyncBatchNorm``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from .. import spec
from ..loop import split
from .train import Trainer, try_gpu
from .weights import get_weights, set_weights

LOOPBACK = split.LOOPBACK


class SyncBatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics are those of the global batch, all-reduced
    over the default process group (CPU/gloo; the parameters and buffers are ``BatchNorm2d``'s,
    so names and checkpoints are unchanged). Without an initialized group of more than one
    process it is ``BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64)
        dist.all_reduce(count)
        n = float(count.item())
        mean = all_reduce(x.sum(dims)) / n
        centred = x - mean.view(1, -1, 1, 1)
        var = all_reduce((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * (n / max(n - 1, 1)))
            self.num_batches_tracked.add_(1)
        return y


def convert_sync_batchnorm(net: nn.Module) -> nn.Module:
    """Every ``BatchNorm2d`` of ``net`` synchronized: ``torch.nn.SyncBatchNorm`` for CUDA
    parameters, :class:`SyncBatchNorm` otherwise (in place for the latter; returns the net)."""
    if next(net.parameters()).is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    for m in net.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = SyncBatchNorm
    return net


class ParallelTrainer(Trainer):
    """The ``Trainer`` of one replica of a data-parallel run (one process of an initialized
    process group): ``step`` takes the *global* batch, trains on this replica's shard
    (``d2lres.parallel.shard_slices``) through ``DistributedDataParallel`` and returns the global
    batch's loss and correct count, so ``d2lres.training.fit`` runs unchanged on every replica.
    ``sync_bn``: synchronized BatchNorm (default ``d2lres.parallel.SYNC_BN_DEFAULT``); without it
    the replicas' running statistics are averaged after every step."""

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, *, device=None,
                 compile: bool | None = None, channels_last: bool | None = None, precision: str = "float32",
                 replicas: int | None = None, sync_bn: bool = split.SYNC_BN_DEFAULT):
        if not dist.is_initialized():
            if "WORLD_SIZE" not in os.environ:
                raise split.ParallelError(
                    "data-parallel PyTorch runs one process per device: start it with torchrun (d2lres train "
                    "--devices N does), or call d2lres.torch.parallel.init_process_group in each process")
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")  # torchrun's environment
        if replicas is not None and replicas != dist.get_world_size():
            raise split.ParallelError(f"{replicas} replicas asked, the process group has {dist.get_world_size()} "
                                         f"processes (one per replica)")
        if torch.cuda.is_available():  # one GPU per process of this machine
            device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', dist.get_rank()))}")
        elif "LOCAL_WORLD_SIZE" in os.environ:  # share this machine's cores between its processes
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
        super().__init__(net, momentum, weight_decay, device=device, compile=compile, channels_last=channels_last,
                         precision=precision)
        self.rank, self.replicas, self.sync_bn = dist.get_rank(), dist.get_world_size(), sync_bn
        if sync_bn:
            self.net = convert_sync_batchnorm(self.net)
        self._train_forward = None  # DistributedDataParallel, from the first step (_wrap)
        self._buffers = [b for name, b in self.net.named_buffers() if name.endswith(("running_mean", "running_var"))]

    def step(self, X, y, lr: float) -> tuple[float, int]:
        n = int(X.shape[0])
        part = split.shard_slices(n, self.replicas)[self.rank]
        weight = split.loss_weights(n, self.replicas)[self.rank]
        X, y = self._input(X[part]), y[part].to(self.device)
        if self._train_forward is None:
            self._wrap()
        self.net.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self._forward_mode():
            logits = self._train_forward(X)
        loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()  # DDP averages: sum_r weight_r loss_r / R = the global mean loss
        self.optimizer.step()
        if not self.sync_bn:
            self._average_buffers(part.stop - part.start, n)
        totals = torch.tensor([float(loss.detach()) * (part.stop - part.start) / n,
                               float((logits.argmax(1) == y).sum())], dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        return float(totals[0]), int(totals[1])

    def _wrap(self) -> None:
        """``DistributedDataParallel`` around the net, once its layout is chosen (the first batch:
        ``_input``): its gradient buckets take the parameters' layout. Wrapped before, a run's
        first step after a resume would be computed through mismatched buckets, unlike the
        uninterrupted run's step there, and round differently (tests/test_parallel_torch.py)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        # buffers are not broadcast from rank 0 at each forward: synchronized, they are equal on
        # every replica; unsynchronized, they are averaged after each step (_average_buffers)
        self.ddp = DistributedDataParallel(self.net, device_ids=ids, broadcast_buffers=False)
        self._train_forward = torch.compile(self.ddp) if self._compiled else self.ddp

    def agree_stop(self, signum: int | None) -> int | None:
        """The signal any process got (``d2lres.util.signals``), the same on every rank: all of them stop
        after the same step (a signal reaches them at different steps)."""
        flag = torch.tensor([signum or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag) or None

    def _average_buffers(self, size: int, n: int) -> None:
        with torch.no_grad():
            for b in self._buffers:
                b.mul_(size / n)
                dist.all_reduce(b)


def init_process_group(rank: int, world_size: int, port: int, backend: str | None = None) -> None:
    """gloo (CPU) or NCCL (CUDA) over ``tcp://127.0.0.1:port``: the init ``torchrun`` does from its
    environment (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``)."""
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend, init_method=f"tcp://{LOOPBACK}:{port}", rank=rank, world_size=world_size)


def _step_worker(rank: int, world_size: int, port: int, folder: str, lr: float, sync_bn: bool, arch: spec.Arch,
                 momentum: float, weight_decay: float) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    init_process_group(rank, world_size, port)
    try:
        from . import resnet
        data = np.load(Path(folder) / "inputs.npz")
        weights = {k[2:]: data[k] for k in data.files if k.startswith("w.")}
        a = arch
        net = resnet(a.name, a.version, num_classes=10, in_channels=data["X"].shape[1], flavour=a.flavour)
        set_weights(net, weights)
        device = try_gpu(rank) if torch.cuda.is_available() else torch.device("cpu")
        trainer = ParallelTrainer(net, momentum, weight_decay, device=device, sync_bn=sync_bn)
        loss, _ = trainer.step(*trainer.convert(data["X"], data["y"]), lr)
        if rank == 0:
            np.savez(Path(folder) / "result.npz", loss=np.array(loss),
                     **{f"w.{k}": v for k, v in get_weights(trainer.net).items()})
    finally:
        dist.destroy_process_group()


def spawn(fn, replicas: int, *args) -> None:
    """``fn(rank, replicas, port, *args)`` in ``replicas`` fresh processes (``torch.multiprocessing``)."""
    import torch.multiprocessing as mp
    mp.spawn(fn, args=(replicas, split.free_port(), *args), nprocs=replicas, join=True)


def data_parallel_step(weights: dict, X: np.ndarray, y: np.ndarray, lr: float, *, replicas: int = 2,
                       sync_bn: bool = split.SYNC_BN_DEFAULT, arch: spec.Arch, momentum: float = 0.0,
                       weight_decay: float = 0.0) -> dict:
    """One data-parallel step on ``replicas`` gloo processes from ``weights`` on the global batch
    ``(X, y)`` (NCHW numpy): ``{"step_loss", "after_step"}`` (canonical weights of replica 0)."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "inputs.npz", X=X, y=y, **{f"w.{k}": v for k, v in weights.items()})
        spawn(_step_worker, replicas, tmp, lr, sync_bn, arch, momentum, weight_decay)
        out = np.load(Path(tmp) / "result.npz")
        return {"step_loss": float(out["loss"]),
                "after_step": {k[2:]: out[k] for k in out.files if k.startswith("w.")}}
