"""Training primitives of the PyTorch backend for the shared loop in ``d2lres.training``, and
d2l's ``try_gpu`` / ``load_data_fashion_mnist`` / ``train_ch6``."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.nn import functional as F

from .. import data, training
from ..core import precision as precisions
from ..errors import UserValueError
from ..host import devices
from ..loop.trainer import TrainerBase, clip_value
from . import kernels
from .weights import get_weights, set_weights


def _mps() -> bool:
    """Whether Apple's Metal GPU (``mps``) is there."""
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def try_gpu(i: int = 0) -> torch.device:
    """CUDA GPU ``i`` if there is one; where CUDA is absent, Apple's GPU ``mps`` (for ``i`` 0,
    it is one device); else the CPU."""
    if torch.cuda.device_count() > i:
        return torch.device(f"cuda:{i}")
    if torch.cuda.device_count() == 0 and i == 0 and _mps():
        return torch.device("mps")
    return torch.device("cpu")


def try_all_gpus() -> list[torch.device]:
    """Every CUDA GPU; where CUDA is absent, ``[mps]`` on Apple silicon; else ``[cpu]``."""
    gpus = [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    return gpus or [torch.device("mps" if _mps() else "cpu")]


def load_data_fashion_mnist(batch_size: int, resize: int | None = None, *, data_dir=None, seed: int = 0,
                            limit: int | None = None, device=None):
    """``(train_iter, test_iter)`` of ``(X, y)`` tensors on ``device``, X in NCHW, values in [0, 1]."""
    return data.load_batches(batch_size, resize, lambda X, y: to_tensors(X, y, device),
                             data_dir=data_dir, seed=seed, limit=limit)


def to_tensors(X: np.ndarray, y: np.ndarray, device=None):
    X, y = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    return (X.to(device), y.to(device)) if device is not None else (X, y)


#: Images at least this wide train faster channels-last on CPU, and narrower ones no faster (timed
#: in training steps; docs/performance.md gives the figures).
CHANNELS_LAST_MIN_SIDE = 28


class Trainer(TrainerBase):
    """SGD (momentum and weight decay as ``torch.optim.SGD``) with cross-entropy on one net:
    a d2lres network or any ``nn.Module`` mapping an NCHW batch to logits (``d2lres.loop.trainer``).

    ``channels_last`` stores activations and weights NHWC (oneDNN's preferred layout); the
    default ``None`` chooses from the first batch (images >= ``CHANNELS_LAST_MIN_SIDE`` wide).
    ``compile=True`` runs the training step's forward through ``torch.compile`` (``None``: off;
    ``d2lres bench --variants`` found it no faster on CPU, after a long compilation).
    ``precision="bf16"`` runs the forward passes under ``torch.autocast`` in bfloat16 (its
    convolutions and the dense layer; BatchNorm normalises in float32 inside oneDNN/cuDNN), the
    loss in float32, the weights and momentum float32."""

    backend = "torch"
    edition = "d2lres.torch.edition"  # Trainer(max_epochs, ...): d2l 1.0's, d2lres.loop.edition

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, *, device=None,
                 compile: bool | None = None, channels_last: bool | None = None, precision: str = "float32",
                 gradient_clip_val: float = 0.0):
        self.precision = precisions.check(precision)
        self.gradient_clip_val = clip_value(gradient_clip_val)
        self.device = try_gpu() if device is None else devices.resolve(
            device, "torch", torch.cuda.device_count(),
            lambda kind, i: torch.device(kind if kind in ("cpu", "mps") else f"cuda:{i}"),
            mps=_mps())
        if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in net.parameters()):
            raise UserValueError("the network's lazy layers have no weights yet: run one batch through it first "
                                 "(net(X)); train_ch6 does that")
        self.memory_format = {True: torch.channels_last, False: torch.contiguous_format}.get(channels_last)
        self.net = net.to(self.device, memory_format=self.memory_format or torch.preserve_format)
        self._compiled = bool(compile)
        self._train_forward = torch.compile(self.net) if compile else self.net
        self.optimizer = torch.optim.SGD(net.parameters(), lr=0.0, momentum=momentum,
                                         weight_decay=weight_decay)
        self._names = {p: name for name, p in net.named_parameters()}
        if precision == "bf16":
            if self.device.type == "cuda":
                precisions.refuse_gpu("torch", self.device, torch.cuda.is_bf16_supported(including_emulation=False))
            elif self.device.type == "cpu":
                precisions.warn_if_emulated("torch", torch.ops.mkldnn._is_mkldnn_bf16_supported())

    def _forward_mode(self):
        """The context of this trainer's forward passes: autocast in bfloat16 (``precision="bf16"``);
        in float32 on the CPU, convolutions with small outputs as ``kernels.TapConv`` (not under
        ``torch.compile``)."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.device.type == "cpu" and not self._compiled:
            return kernels.SmallConvolutions()
        return contextlib.nullcontext()

    def convert(self, X: np.ndarray, y: np.ndarray):
        return to_tensors(X, y, self.device)

    def step(self, X, y, lr: float) -> tuple[float, int]:
        """One SGD step; returns the batch's mean loss and number of correct predictions. ``X``, ``y``:
        tensors or numpy arrays, as in the other backends."""
        X, y = torch.as_tensor(X), torch.as_tensor(y, dtype=torch.int64)
        self._check(X, training=True)
        X, y = self._input(X), y.to(self.device)
        self.net.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        def run():
            with self._forward_mode():
                logits = self._train_forward(X)
            loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.gradient_clip_val:
                self._clip_gradients()
            self.optimizer.step()
            return float(loss.detach()), int((logits.argmax(1) == y).sum())
        return self._keep_statistics_finite(run)

    def _clip_gradients(self) -> None:
        """d2l's clipping: the gradients scaled by ``min(1, gradient_clip_val / their joint norm)``."""
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        norm = torch.sqrt(sum(torch.sum(g.float() ** 2) for g in grads))
        scale = torch.clamp(self.gradient_clip_val / norm, max=1.0)
        for g in grads:
            g.mul_(scale.to(g.dtype))

    def predict(self, X) -> np.ndarray:
        """Eval-mode logits (``X``: a tensor or a numpy array)."""
        X = torch.as_tensor(X)
        self._check(X, training=False)
        self.net.eval()
        with torch.no_grad(), self._forward_mode():
            return self.net(self._input(X)).float().cpu().numpy()

    def forward(self, X: np.ndarray, training: bool = False) -> np.ndarray:
        """Logits for a NCHW numpy batch (train mode uses and updates batch statistics)."""
        X = torch.from_numpy(np.asarray(X))
        self._check(X, training)
        self.net.train(training)
        with torch.no_grad(), self._forward_mode():
            run = lambda: self.net(self._input(X)).float().cpu().numpy()  # noqa: E731
            return self._keep_statistics_finite(run) if training else run()

    def _check(self, X: torch.Tensor, training: bool) -> None:
        self._check_batch(X.shape, X.dtype, training, lambda: torch.isfinite(X).all())

    def _statistics(self):
        return [(n, b) for n, b in self.net.named_buffers() if n.endswith(("running_mean", "running_var"))]

    def _snapshot(self, stats):
        return [b.detach().clone() for b in stats]

    def _finite(self, stats):
        return torch.stack([torch.isfinite(b).all() for b in stats]).tolist()

    def _restore(self, stats, saved):
        with torch.no_grad():
            for b, old in zip(stats, saved):
                b.copy_(old)

    def _input(self, X: torch.Tensor) -> torch.Tensor:
        """``X`` on the device in the chosen layout (chosen now if not yet: the net follows)."""
        if self.memory_format is None:
            wide = min(X.shape[2:]) >= CHANNELS_LAST_MIN_SIDE
            self.memory_format = torch.channels_last if wide else torch.contiguous_format
            self.net.to(memory_format=self.memory_format)
        return X.to(self.device, memory_format=self.memory_format)

    _neutral = (get_weights, set_weights)

    def _native_weights(self) -> dict[str, np.ndarray]:
        return _native_weights(self.net)

    def _assign_native(self, weights) -> None:
        state = self.net.state_dict()
        with torch.no_grad():
            for name, value in weights.items():
                state[name].copy_(torch.from_numpy(np.asarray(value)))

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Momentum buffers under ``momentum.<canonical name>``."""
        out = {}
        for p, name in self._names.items():
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"momentum.{name}"] = buf.detach().cpu().numpy().copy()
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        for p, name in self._names.items():
            if f"momentum.{name}" in state:
                self.optimizer.state[p]["momentum_buffer"] = torch.from_numpy(
                    np.array(state[f"momentum.{name}"])).to(self.device)


def _native_weights(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def _d2l_init(m: torch.nn.Module) -> None:
    """d2l's ``init_weights``: Xavier uniform on the weight of every ``nn.Linear`` and ``nn.Conv2d``."""
    if type(m) in (torch.nn.Linear, torch.nn.Conv2d):
        torch.nn.init.xavier_uniform_(m.weight)


def _build_lazy(net: torch.nn.Module, train_iter, device) -> None:
    """Give lazy layers (``nn.LazyConv2d`` ...) their weights with one eval-mode pass of the
    first training batch, so that they can be initialised and trained."""
    if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in net.parameters()):
        X, _ = next(iter(train_iter))
        was_training = net.training
        net.eval()
        with torch.no_grad():
            net.to(device)(X.to(device))
        net.train(was_training)


def train_ch6(net, train_iter, test_iter, num_epochs: int, lr: float, device=None, *, precision: str = "float32",
              **fit_options):
    """d2l's ``train_ch6``: SGD at constant ``lr``, cross-entropy; prints d2l's lines
    (``training on``, loss and accuracies, examples/sec), draws the curves and returns the
    history. ``net``: a d2lres network or any ``nn.Module`` mapping an NCHW batch to logits.
    ``train_iter`` / ``test_iter``: d2lres's batches or a ``torch.utils.data.DataLoader``;
    ``fit_options`` go to ``d2lres.training.fit``.

    Initialisation, as d2l: a network that is not d2lres's is re-initialised with
    ``net.apply(init_weights)``, Xavier uniform on the weight of every ``nn.Linear`` and
    ``nn.Conv2d`` (biases and BatchNorm as they are; lazy layers are built first from the first
    batch); a d2lres network keeps its weights (d2lres's seeded scheme, ``init_weights``)."""
    device = torch.device(device) if device is not None else try_gpu()

    def reinitialize():
        _build_lazy(net, train_iter, device)
        net.apply(_d2l_init)
    return training.train_ch6(net, lambda: Trainer(net, device=device, precision=precision), reinitialize, train_iter,
                          test_iter, num_epochs, lr, **fit_options)
