"""Training primitives of the MXNet backend for the shared loop in ``d2lres.training``, and
d2l's ``try_gpu`` / ``load_data_fashion_mnist`` / ``train_ch6``.

MXNet updates BatchNorm running statistics in the backward pass with the *biased* batch
variance; PyTorch and Keras use the unbiased one. ``Trainer.step`` rescales the update to the
unbiased form (``spec.BN_MOMENTUM`` convention), so the three backends keep equal statistics.
"""
from __future__ import annotations

import mxnet as mx
import numpy as onp
from mxnet import autograd, np

from .. import data, devices, inputs, spec, training
from .weights import get_weights, named_parameters, set_weights


def try_gpu(i: int = 0):
    """GPU ``i`` if there is one, else the CPU (an MXNet context)."""
    return mx.gpu(i) if mx.context.num_gpus() > i else mx.cpu()


def _to_arrays(X: onp.ndarray, y: onp.ndarray, ctx=None):
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
    return data.load_batches(batch_size, resize, lambda X, y: _to_arrays(X, y, device),
                             data_dir=data_dir, seed=seed, limit=limit)


class Trainer:
    """SGD with momentum and weight decay in PyTorch's form (``v = m v + g + wd w``,
    ``w -= lr v``) and cross-entropy. ``compile`` hybridizes the network (Gluon CachedOp with
    static memory; ``None``: on). MXNet's convolutions are NCHW only: ``channels_last=True`` is
    refused."""

    backend = "mxnet"

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, *, device=None,
                 compile: bool | None = None, channels_last: bool | None = None):
        if channels_last:
            raise ValueError("the MXNet backend trains NCHW only; channels_last=True is not available")
        self.net = net
        self.device = try_gpu() if device is None else devices.resolve(
            device, "mxnet", mx.context.num_gpus(), lambda kind, i: mx.cpu() if kind == "cpu" else mx.gpu(i))
        self.momentum, self.weight_decay = momentum, weight_decay
        net.collect_params().reset_ctx(self.device)
        if compile is None or compile:
            net.hybridize(static_alloc=True, static_shape=True)
        self.params = [(name, p) for name, p in named_parameters(net) if p.grad_req != "null"]
        self.running_vars = [(name[:-len(".running_var")], p) for name, p in named_parameters(net)
                             if name.endswith("running_var")]
        # MXNet's fused update keeps mom = -lr * v; rescaling it by lr_new / lr_old before each
        # step makes it exactly PyTorch's form even when the learning rate changes.
        self.buffers = [mx.nd.zeros(p.shape, ctx=self.device) for _, p in self.params]
        self.last_lr = 0.0
        self._bn_sizes: dict[tuple, dict[str, int]] = {}
        self.loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()

    def convert(self, X: onp.ndarray, y: onp.ndarray):
        return _to_arrays(X, y, self.device)

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
        self._update(lr)
        self._unbias_running_vars(old_vars, X.shape)
        correct = (logits.argmax(axis=1).astype("int32") == y).sum()
        return float(loss), int(correct)

    def _update(self, lr: float) -> None:
        """The SGD update of every weight from the gradient the backward pass left."""
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
        """``d2lres.inputs``' rules (shape, dtype, finite pixels), before anything runs."""
        net = self.net
        inputs.check_batch(tuple(X.shape), X.dtype, net.in_channels, training=training, arch=net.arch,
                           num_classes=net.num_classes)
        if not values:
            return
        finite = onp.isfinite(X if isinstance(X, onp.ndarray) else X.asnumpy()).all()
        inputs.check_finite(bool(finite))

    def _keep_statistics_finite(self, run):
        """``run()``; non-finite BatchNorm running statistics after it are put back (``TrainingError``)."""
        stats = [(n, p) for n, p in named_parameters(self.net) if n.endswith(("running_mean", "running_var"))]

        def restore(saved):
            for (_, p), old in zip(stats, saved):
                p.data()[:] = old
        return inputs.keep_statistics_finite(
            [n for n, _ in stats], lambda: [p.data().copy() for _, p in stats],
            lambda: np.stack([np.isfinite(p.data()).all() for _, p in stats]).asnumpy().tolist(), restore, run)

    def get_weights(self) -> dict[str, onp.ndarray]:
        return get_weights(self.net)

    def set_weights(self, weights) -> None:
        set_weights(self.net, weights)

    def optimizer_state(self) -> dict[str, onp.ndarray]:
        """Momentum buffers (PyTorch's form) under ``momentum.<canonical name>``."""
        if not (self.momentum and self.last_lr):
            return {}
        return {f"momentum.{name}": -mom.asnumpy() / self.last_lr for (name, _), mom in zip(self.params, self.buffers)}

    def load_optimizer_state(self, state: dict[str, onp.ndarray]) -> None:
        """Momentum buffers as :meth:`optimizer_state` gives them; they take effect at the next
        step's learning rate."""
        self.last_lr = 1.0
        for (name, _), mom in zip(self.params, self.buffers):
            if f"momentum.{name}" in state:
                mom[:] = -mx.nd.array(state[f"momentum.{name}"], ctx=self.device)


def train_ch6(net, train_iter, test_iter, num_epochs: int, lr: float, device=None, **fit_options):
    """d2l's ``train_ch6``: SGD at constant ``lr``, cross-entropy; prints the d2l summary line,
    plots the curves and returns the history. ``train_iter`` / ``test_iter``: d2lres's batches or
    a Gluon ``DataLoader``; ``fit_options`` go to ``d2lres.training.fit``."""
    trainer = Trainer(net, device=device)
    return training.fit(trainer, train_iter, test_iter, num_epochs, lr, **fit_options)
