"""Training primitives of the MXNet backend for the shared loop in ``d2lres.training``, and
d2l's ``try_gpu`` / ``load_data_fashion_mnist`` / ``train_ch6``.

MXNet updates BatchNorm running statistics in the backward pass with the *biased* batch
variance; PyTorch and Keras use the unbiased one. ``Trainer.step`` rescales the update to the
unbiased form (``spec.BN_MOMENTUM`` convention), so the three backends keep equal statistics.
"""
from __future__ import annotations

import warnings

import mxnet as mx
import numpy as onp
from mxnet import autograd, np

from .. import data, inputs, spec, training
from ..core import compat
from ..core import precision as precisions
from ..errors import UserValueError
from ..host import devices
from ..loop.trainer import TrainerBase, clip_value
from .weights import get_weights, named_parameters, set_weights


def try_gpu(i: int = 0):
    """CUDA GPU ``i`` if there is one, else the CPU (an MXNet context; MXNet has no Mac GPU)."""
    return mx.gpu(i) if mx.context.num_gpus() > i else mx.cpu()


def try_all_gpus() -> list:
    """Every CUDA GPU's context, or ``[mx.cpu()]`` if there is none."""
    return [mx.gpu(i) for i in range(mx.context.num_gpus())] or [mx.cpu()]


def _parameters(net):
    """``(name, Parameter)``: canonical for a d2lres network; for any other Gluon's structural
    names (``0.weight``, ``4.0.conv1.weight``, as ``save_parameters`` writes them)."""
    if compat.is_d2lres_net(net):
        return list(named_parameters(net))
    return list(net._collect_params_with_prefix().items())


def to_arrays(X: onp.ndarray, y: onp.ndarray, ctx=None):
    return np.array(X, ctx=ctx), np.array(y.astype(onp.int32), dtype="int32", ctx=ctx)


def _as_np(X):
    """An ``mxnet.np`` array of a numpy array or a legacy ``mx.nd.NDArray`` (as the other backends
    take numpy batches); an ``mxnet.np`` array as it is."""
    if isinstance(X, onp.ndarray):
        return np.array(X, dtype=X.dtype)
    if isinstance(X, mx.nd.NDArray) and not isinstance(X, np.ndarray):  # mxnet.np's arrays are NDArrays too
        return X.as_np_ndarray()
    return X


def load_data_fashion_mnist(batch_size: int, resize: int | None = None, *, data_dir=None, seed: int = 0,
                            limit: int | None = None, device=None):
    """``(train_iter, test_iter)`` of ``(X, y)`` arrays on ``device`` (a context), X in NCHW,
    values in [0, 1]."""
    return data.load_batches(batch_size, resize, lambda X, y: to_arrays(X, y, device),
                             data_dir=data_dir, seed=seed, limit=limit)


#: Why the MXNet backend trains in float32 only.
BF16_REFUSED = ("the MXNet backend trains in float32 only: MXNet 1.9's AMP (mxnet.contrib.amp.init("
                "target_dtype='bfloat16')) casts the operators of the legacy mx.nd and mx.sym interfaces, not those "
                "of the NumPy interface (mx.np, npx) that d2lres's MXNet blocks use, as the book's MXNet code does; "
                "use precision='float32' here, or bf16 in the torch, tf or jax backend")


class Trainer(TrainerBase):
    """On a d2lres network or any Gluon block mapping an NCHW batch to logits (``d2lres.loop.trainer``; its parameters
    initialised and their shapes known): SGD with momentum and weight decay in PyTorch's form (``v = m v + g + wd w``,
    ``w -= lr v``) and cross-entropy. ``compile`` hybridizes the network (Gluon CachedOp with static memory;
    ``None``: on). MXNet's convolutions are NCHW only: ``channels_last=True`` is refused. The running-variance
    rescaling below is d2lres's BatchNorm setting, for d2lres's networks; any other network keeps its layers' own
    (Gluon's: the biased variance)."""

    backend = "mxnet"
    edition = "d2lres.mxnet.edition"  # Trainer(max_epochs, ...): d2l 1.0's, d2lres.loop.edition

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, *, device=None,
                 compile: bool | None = None, channels_last: bool | None = None, precision: str = "float32",
                 gradient_clip_val: float = 0.0):
        if precisions.check(precision) != "float32":
            raise UserValueError(BF16_REFUSED)
        self.precision = precision
        self.gradient_clip_val = clip_value(gradient_clip_val)
        if channels_last:
            raise UserValueError("the MXNet backend trains NCHW only; channels_last=True is not available")
        self.net = net
        self.device = try_gpu() if device is None else devices.resolve(
            device, "mxnet", mx.context.num_gpus(), lambda kind, i: mx.cpu() if kind == "cpu" else mx.gpu(i))
        self.momentum, self.weight_decay = momentum, weight_decay
        unknown = [name for name, p in _parameters(net) if p._deferred_init or 0 in p.shape]
        if unknown:
            raise UserValueError(f"the network's parameters have no shapes yet ({unknown[0]} and {len(unknown) - 1} "
                                 f"more): call net.initialize() and run one batch through it (net(X)) first; "
                                 f"train_ch6 does both")
        net.collect_params().reset_ctx(self.device)
        if compile is None or compile:
            with warnings.catch_warnings():  # a reader's Sequential of HybridBlocks: advice, not a fault
                warnings.filterwarnings("ignore", message="All children of this Sequential layer")
                net.hybridize(static_alloc=True, static_shape=True)
        self.params = [(name, p) for name, p in _parameters(net) if p.grad_req != "null"]
        self.running_vars = [(name[:-len(".running_var")], p) for name, p in named_parameters(net)
                             if name.endswith("running_var")] if compat.is_d2lres_net(net) else []
        # MXNet's fused update keeps mom = -lr * v; rescaling it by lr_new / lr_old before each
        # step makes it exactly PyTorch's form even when the learning rate changes.
        self.buffers = [mx.nd.zeros(p.shape, ctx=self.device) for _, p in self.params]
        self.last_lr = 0.0
        #: Momentum read from a checkpoint (float64, PyTorch's form), made MXNet's at the next step.
        self._restored: list | None = None
        self._bn_sizes: dict[tuple, dict[str, int]] = {}
        self.loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()

    def convert(self, X: onp.ndarray, y: onp.ndarray):
        return to_arrays(X, y, self.device)

    def step(self, X, y, lr: float) -> tuple[float, int]:
        """One SGD step; returns the batch's mean loss and number of correct predictions. ``X``, ``y``:
        ``mxnet.np`` or numpy arrays, as in the other backends."""
        X, y = _as_np(X), _as_np(y)
        y = y if y.dtype == onp.int32 else y.astype("int32")
        self._check(X, training=True)
        X, y = X.as_in_ctx(self.device), y.as_in_ctx(self.device)
        return self._keep_statistics_finite(lambda: self._step(X, y, lr))

    def _step(self, X, y, lr: float) -> tuple[float, int]:
        old_vars = [p.data().copy() for _, p in self.running_vars]
        with autograd.record():
            logits = self.net(X)
            loss = self.loss(logits, y).mean()
        loss.backward()
        # Every write of the graph done before the running variances are read back and rescaled:
        # the stem BatchNorm's running variance could otherwise be read before the cached graph
        # wrote it (the result then depended on the engine's timing).
        mx.nd.waitall()
        if self.gradient_clip_val:  # d2l's clipping: min(1, gradient_clip_val / the gradients' joint norm)
            grads = [p.grad() for _, p in self.params]
            norm = float(sum((g ** 2).sum() for g in grads)) ** 0.5
            if norm > self.gradient_clip_val:
                for g in grads:
                    g[:] *= self.gradient_clip_val / norm
        self._update(lr)
        self._unbias_running_vars(old_vars, X.shape)
        correct = (logits.argmax(axis=1).astype("int32") == y).sum()
        return float(loss), int(correct)

    def _update(self, lr: float) -> None:
        """The SGD update of every weight from the gradient the backward pass left."""
        if self._restored is not None:  # -lr * v in float64, rounded once: the buffer as it was saved
            for mom, v in zip(self.buffers, self._restored):
                if v is not None:
                    mom[:] = mx.nd.array((-lr * v).astype(onp.float32), ctx=self.device)
            self._restored, self.last_lr = None, lr
        if self.momentum and self.last_lr and lr != self.last_lr:
            for mom in self.buffers:
                mom *= lr / self.last_lr
        for (_, p), mom in zip(self.params, self.buffers):
            w = p.data().as_nd_ndarray()
            mx.nd.sgd_mom_update(w, p.grad().as_nd_ndarray(), mom, lr=lr, momentum=self.momentum,
                                 wd=self.weight_decay, out=w)
        self.last_lr = lr

    def _unbias_running_vars(self, old_vars, shape) -> None:
        """MXNet did ``rv = m rv_old + (1 - m) v_biased``; make it ``... v_biased n / (n - 1)``."""
        if not self.running_vars:  # not a d2lres network: Gluon's own BatchNorm, as it is
            return
        if shape[2:] not in self._bn_sizes:
            self._bn_sizes[shape[2:]] = spec.batchnorm_sizes(shape[2:], self.net.num_classes, self.net.in_channels,
                                                              getattr(self.net, "arch", None))
        sizes = self._bn_sizes[shape[2:]]
        keep = 1 - spec.BN_MOMENTUM
        for (name, p), old in zip(self.running_vars, old_vars):
            n = sizes[name] * shape[0]
            if n > 1:
                rv = p.data()
                rv[:] = rv + (rv - keep * old) / (n - 1)

    def predict(self, X) -> onp.ndarray:
        X = _as_np(X)
        self._check(X, training=False, values=False)
        logits = self.net(X.as_in_ctx(self.device)).asnumpy()
        self._check(X, training=False)  # after: a wait on X before the forward changed MXNet's result
        return logits

    def forward(self, X: onp.ndarray, training: bool = False) -> onp.ndarray:
        """Logits for a NCHW numpy batch (train mode uses batch statistics)."""
        self._check(X, training)

        def run():
            with autograd.train_mode() if training else autograd.predict_mode():
                return self.net(np.array(X, dtype=X.dtype, ctx=self.device)).asnumpy()
        if not training:
            return run()
        logits = self._keep_statistics_finite(run)
        if not onp.isfinite(logits).all():  # MXNet updates the running statistics in backward only: none
            inputs.check_statistics(["the batch statistics"])  # changed, but the same answer as elsewhere
        return logits

    def _check(self, X, training: bool, values: bool = True) -> None:
        """``d2lres.inputs``' rules; ``values=False``: the shape and dtype only."""
        finite = lambda: onp.isfinite(X if isinstance(X, onp.ndarray) else X.asnumpy()).all()  # noqa: E731
        self._check_batch(X.shape, X.dtype, training, finite if values else None)

    def _statistics(self):
        return [(n, p) for n, p in _parameters(self.net) if n.endswith(("running_mean", "running_var"))]

    def _snapshot(self, stats):
        return [p.data().copy() for p in stats]

    def _finite(self, stats):
        return np.stack([np.isfinite(p.data()).all() for p in stats]).asnumpy().tolist()

    def _restore(self, stats, saved):
        for p, old in zip(stats, saved):
            p.data()[:] = old

    _neutral = (get_weights, set_weights)

    def _native_weights(self) -> dict[str, onp.ndarray]:
        """Any network's parameters by structural name."""
        return {name: p.data().asnumpy().copy() for name, p in _parameters(self.net)}

    def _assign_native(self, weights) -> None:
        for name, p in _parameters(self.net):
            p.set_data(np.array(onp.asarray(weights[name], dtype=onp.float32), ctx=p.list_ctx()[0]))

    def optimizer_state(self) -> dict[str, onp.ndarray]:
        """Momentum buffers (PyTorch's form) under ``momentum.<canonical name>``, in float64: MXNet
        keeps ``-lr * v``, and ``v`` in float64 gives that float32 buffer back exactly on resume."""
        if self._restored is not None:  # read from a checkpoint, no step since: as it was read
            return {f"momentum.{name}": v for (name, _), v in zip(self.params, self._restored) if v is not None}
        if not (self.momentum and self.last_lr):
            return {}
        return {f"momentum.{name}": -mom.asnumpy().astype(onp.float64) / self.last_lr
                for (name, _), mom in zip(self.params, self.buffers)}

    def load_optimizer_state(self, state: dict[str, onp.ndarray]) -> None:
        """Momentum buffers as :meth:`optimizer_state` gives them; they take effect at the next
        step's learning rate."""
        self._restored = [None if f"momentum.{name}" not in state else
                          onp.asarray(state[f"momentum.{name}"], dtype=onp.float64) for name, _ in self.params]


def _d2l_initialize(net, train_iter, device) -> None:
    """d2l's ``net.initialize(force_reinit=True, ctx=device, init=init.Xavier())``, then one
    inference-mode pass of the first training batch if Gluon deferred the shapes."""
    net.initialize(force_reinit=True, ctx=device, init=mx.init.Xavier())
    if any(p._deferred_init for p in net.collect_params().values()):
        X, _ = next(iter(train_iter))
        with autograd.predict_mode():
            net(X.as_in_ctx(device))


def train_ch6(net, train_iter, test_iter, num_epochs: int, lr: float, device=None, *, precision: str = "float32",
              **fit_options):
    """d2l's ``train_ch6``: SGD at constant ``lr``, cross-entropy; prints d2l's lines
    (``training on``, loss and accuracies, examples/sec), draws the curves and returns the
    history. ``net``: a d2lres network or any Gluon block mapping an NCHW batch to logits.
    ``train_iter`` / ``test_iter``: d2lres's batches or a Gluon ``DataLoader``;
    ``fit_options`` go to ``d2lres.training.fit``.

    Initialisation, as d2l: a network that is not d2lres's is re-initialised with
    ``net.initialize(force_reinit=True, ctx=device, init=init.Xavier())`` (MXNet's Xavier:
    uniform, scale 3, fan average; biases and BatchNorm to Gluon's defaults); a d2lres network
    keeps its weights (d2lres's seeded scheme, ``init_weights``)."""
    device = device if device is not None else try_gpu()
    return training.train_ch6(net, lambda: Trainer(net, device=device, precision=precision),
                          lambda: _d2l_initialize(net, train_iter, device), train_iter, test_iter, num_epochs, lr,
                          **fit_options)
