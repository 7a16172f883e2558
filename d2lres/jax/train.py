"""Training primitives of the JAX backend for the shared loop in ``d2lres.training`` (the step
compiled with ``jax.jit``), and d2l's ``try_gpu`` / ``load_data_fashion_mnist`` / ``train_ch6``.

The network stays the stateful ``nnx`` object the user holds; each step splits its state
(``nnx.Param``, ``nnx.BatchStat``), runs one pure, jit-compiled function of that state and writes
the result back (``nnx.update``), so ``get_weights(net)`` / ``set_weights(net, w)`` between steps
see and change what the next step uses. The optimizer is optax's ``add_decayed_weights`` then
``trace`` (PyTorch's SGD: ``v = m v + g + wd w``), and ``w -= lr v`` with the learning rate passed
to the compiled step as a value (a schedule does not recompile it).

``precision="bf16"`` is a dtype policy on the compiled functions (:func:`dtype_policy`): they are
compiled from graph definitions whose convolutions and dense layers compute in bfloat16 and whose
BatchNorms compute in float32; the state they take and return (parameters, statistics, the
optimizer's) is the network's, float32, and the logits are cast to float32 before the loss.
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.nnx.nn import dtypes

from .. import data, training
from ..core import compat
from ..core import precision as precisions
from ..errors import UserValueError
from ..host import devices
from ..loop.trainer import TrainerBase, clip_value
from .model import batch_norms, to_device
from .weights import from_canonical, get_weights, set_weights, to_canonical, variables


def _gpus() -> list:
    try:
        return jax.local_devices(backend="gpu")
    except RuntimeError:  # no GPU backend in this jaxlib
        return []


def try_gpu(i: int = 0):
    """This process's GPU ``i`` if JAX has one (CUDA or ROCm; jax-metal on a Mac is not
    looked for), else its CPU (a ``jax.Device``)."""
    gpus = _gpus()
    return gpus[i] if len(gpus) > i else jax.local_devices(backend="cpu")[0]


def try_all_gpus() -> list:
    """Every GPU of this process, or ``[its CPU]`` if there is none."""
    return _gpus() or [jax.local_devices(backend="cpu")[0]]


def _variables(net):
    """``(name, variable, kind)``: canonical for a d2lres network; for any other each
    ``nnx.Param`` and ``nnx.BatchStat`` by its path (``kind`` "native": no layout change)."""
    if compat.is_d2lres_net(net):
        return list(variables(net))
    return [(".".join(map(str, path)), v, "native") for path, v in nnx.iter_graph(net)
            if isinstance(v, (nnx.Param, nnx.BatchStat))]


def host_arrays(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A NCHW numpy batch as numpy X NHWC float32, y int32."""
    X = np.asarray(X)  # floating -> float32; integer images stay as they are (d2lres.inputs refuses them)
    X = np.ascontiguousarray((X.astype(np.float32) if X.dtype.kind == "f" else X).transpose(0, 2, 3, 1))
    return X, np.asarray(y).astype(np.int32)


def to_arrays(X: np.ndarray, y: np.ndarray, device=None):
    """A NCHW numpy batch as JAX arrays: X NHWC float32, y int32."""
    X, y = host_arrays(X, y)
    return jax.device_put(X, device), jax.device_put(y, device)


def load_data_fashion_mnist(batch_size: int, resize: int | None = None, *, data_dir=None, seed: int = 0,
                            limit: int | None = None, device=None):
    """``(train_iter, test_iter)`` of ``(X, y)`` JAX arrays on ``device``, X in NHWC, values in [0, 1]."""
    return data.load_batches(batch_size, resize, lambda X, y: to_arrays(X, y, device),
                             data_dir=data_dir, seed=seed, limit=limit)


# --- precision -----------------------------------------------------------------------------------

#: The layers that compute in bfloat16 under ``precision="bf16"`` (their ``dtype``: Flax casts the
#: input and kernel to it, with their ``promote_dtype``; ``param_dtype`` stays float32).
BF16_LAYERS = (nnx.Conv, nnx.ConvTranspose, nnx.Linear, nnx.LinearGeneral, nnx.Einsum)
#: The layers that compute in float32 there (normalisation: statistics and output).
FLOAT32_LAYERS = (nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm)


def promote_bf16(args, /, *, dtype=None, inexact=True):
    """The bf16 policy's ``promote_dtype`` of a :data:`BF16_LAYERS` layer (Flax calls it with
    ``(inputs, kernel, bias)``): input and kernel cast to ``dtype`` (bfloat16), so that the
    convolution or matmul computes in bfloat16, the bias left float32, so that it is added to that
    bfloat16 result in float32 and its gradient -- a sum over the batch and the pixels -- is summed in
    float32. (A bfloat16 bias would be summed in bfloat16: JAX transposes the broadcast of the bias to
    a ``reduce_sum`` of bfloat16, which XLA:CPU accumulates rounding each addition to bfloat16; for a
    convolution before a BatchNorm, whose bias gradient is 0, that sum came out far beyond the rounding
    of its terms; docs/same-function.md gives the sizes.)"""
    if len(args) != 3 or args[2] is None:
        return dtypes.promote_dtype(args, dtype=dtype, inexact=inexact)
    inputs, kernel = dtypes.promote_dtype(args[:2], dtype=dtype, inexact=inexact)
    return inputs, kernel, jnp.asarray(args[2], jnp.promote_types(args[2].dtype, jnp.float32))


@contextlib.contextmanager
def dtype_policy(net: nnx.Module, precision: str = "float32"):
    """While the block runs, ``net``'s layers have the computation dtypes of ``precision``: for
    ``"bf16"``, ``dtype=bfloat16`` and ``promote_dtype=``:func:`promote_bf16` on every :data:`BF16_LAYERS`
    layer and ``dtype=float32`` on every :data:`FLOAT32_LAYERS` one (``float32``: nothing changes);
    each layer's own attributes are put back after. Take ``nnx.graphdef(net)`` inside it: the graph
    definition keeps them, and every function merged from it computes with them, its variables
    unchanged (float32)."""
    precisions.check(precision)
    saved = []
    if precision == "bf16":
        for _, module in nnx.iter_graph(net):
            if isinstance(module, BF16_LAYERS):
                policy = {"dtype": jnp.bfloat16, "promote_dtype": promote_bf16}
            elif isinstance(module, FLOAT32_LAYERS):
                policy = {"dtype": jnp.float32}
            else:
                continue
            for attr, value in policy.items():
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, value)
    try:
        yield net
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)


def _float32(logits: jax.Array) -> jax.Array:
    """The logits in float32 (in the bf16 graph a network may end in bfloat16, e.g. a dense layer
    without bias): the loss, the argmax and what ``predict`` / ``forward`` return are float32."""
    return logits if logits.dtype == jnp.float32 else logits.astype(jnp.float32)


def check_bf16_devices(device) -> None:
    """bf16 on ``device`` (a ``jax.Device`` or a sharding's devices): refused on a GPU below
    compute capability 8.0; on a CPU (XLA:CPU has no bfloat16 check of its own) warned once that
    it is emulated where the CPU has no bfloat16 units."""
    found = [device] if isinstance(device, jax.Device) else sorted(device.device_set, key=lambda d: d.id)
    for d in found:
        if d.platform == "cpu":
            continue
        capability = getattr(d, "compute_capability", None)  # CUDA: "9.0"; ROCm's names are not numbers
        try:
            supported = tuple(int(part) for part in str(capability).split(".")[:2]) >= (8, 0)
        except ValueError:
            supported = True
        precisions.refuse_gpu("jax", d, supported)
    if any(d.platform == "cpu" for d in found):
        precisions.warn_if_emulated("jax", None)


# --- the pure functions that get compiled ------------------------------------------------------

def logits_and_stats(graphdef, params, stats, X):
    # fresh Variables at this trace level (under jax.grad the statistics were created outside)
    model = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, stats))
    return _float32(model(X)), nnx.state(model, nnx.BatchStat)


def eval_logits(graphdef, params, stats, X):
    return _float32(nnx.merge(graphdef, params, stats)(X))


def sgd(momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """PyTorch's SGD direction ``v = m v + g + wd w`` (the step is ``w -= lr v``)."""
    return optax.chain(optax.identity(), *([optax.add_decayed_weights(weight_decay)] if weight_decay else []),
                       *([optax.trace(decay=momentum)] if momentum else []))


def _train_step(momentum, weight_decay, clip, graphdef, params, stats, opt_state, X, y, lr):
    tx = sgd(momentum, weight_decay)

    def loss_fn(params):
        logits, new_stats = logits_and_stats(graphdef, params, stats, X)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, new_stats)

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if clip:  # d2l's clipping: min(1, clip / the gradients' joint norm)
        scale = jnp.minimum(1.0, clip / optax.global_norm(grads))
        grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda w, v: w - lr * v, params, updates)
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == y)
    return params, stats, opt_state, loss, correct


# Compiled once per process for each network structure, optimizer setting and input shape (the
# graph definitions of two networks of the same variant are equal): a second Trainer reuses them.
jit_train_step = jax.jit(_train_step, static_argnums=(0, 1, 2, 3))
_jit_logits_and_stats = jax.jit(logits_and_stats, static_argnums=0)
_jit_eval_logits = jax.jit(eval_logits, static_argnums=0)


class Trainer(TrainerBase):
    """On a d2lres network or any ``nnx`` module mapping an NHWC batch to logits
    (``d2lres.loop.trainer``): SGD with momentum and weight decay in PyTorch's form (``v = m v + g + wd w``,
    ``w -= lr v``) and cross-entropy. ``compile`` (None: on) runs the step and the forward passes
    through ``jax.jit`` (one compilation per input shape). JAX convolutions here are NHWC only:
    ``channels_last`` may be None or True; False is refused.

    ``precision="bf16"`` is a dtype policy on the compiled step (and on the uncompiled one): the step
    and forward passes run the network's graph with ``dtype=bfloat16`` on every ``nnx.Conv`` /
    ``nnx.Linear`` (Flax casts input and kernel to bfloat16, the bias is added in float32,
    :func:`promote_bf16`; ``param_dtype`` stays float32) and float32 on every BatchNorm
    (:func:`dtype_policy`); the parameters, the BatchNorm statistics and the optimizer state stay
    float32 arrays, the logits are cast to float32 for the loss and for ``predict`` / ``forward``,
    and the network object itself is left as it was."""

    backend = "jax"
    edition = "d2lres.jax.edition"  # Trainer(max_epochs, ...): d2l 1.0's, d2lres.loop.edition

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, *, device=None,
                 compile: bool | None = None, channels_last: bool | None = None, precision: str = "float32",
                 gradient_clip_val: float = 0.0):
        self.precision = precisions.check(precision)
        self.gradient_clip_val = clip_value(gradient_clip_val)
        if channels_last is False:
            raise UserValueError("the JAX backend is NHWC (channels last) only; channels_last=False is not available")
        self.net = net
        if isinstance(device, (jax.Device, jax.sharding.Sharding)):  # JAX's own device exists (in process 1
            self.device = device  # of a multi-process run, CpuDevice(id=2048)); a sharding: ParallelTrainer's mesh
        else:
            self.device = try_gpu() if device is None else devices.resolve(
                device, "jax", len(_gpus()),
                lambda kind, i: _gpus()[i] if kind == "gpu" else jax.local_devices(backend="cpu")[0])
        if self.precision == "bf16":
            check_bf16_devices(self.device)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        to_device(net, self.device)
        modes = [(bn, bn.use_running_average) for bn in batch_norms(net)]
        try:
            with dtype_policy(net, self.precision):  # the graphs keep the policy's dtypes; net gets its own back
                net.train()
                self._graph_train = nnx.graphdef(net)
                net.eval()
                self._graph_eval = nnx.graphdef(net)
        finally:
            for bn, mode in modes:
                bn.use_running_average = mode
        paths = {id(v): path for path, v in nnx.iter_graph(net) if isinstance(v, nnx.Variable)}
        self._slots = [(name, paths[id(var)], kind) for name, var, kind in _variables(net)
                       if isinstance(var, nnx.Param)]
        self.opt_state = sgd(momentum, weight_decay).init(nnx.state(net, nnx.Param))
        compiled = compile is None or compile
        self._step, self._train_forward, self._eval_forward = (
            (jit_train_step, _jit_logits_and_stats, _jit_eval_logits) if compiled
            else (_train_step, logits_and_stats, eval_logits))

    def convert(self, X: np.ndarray, y: np.ndarray):
        return to_arrays(X, y, self.device)

    def _state(self):
        return nnx.state(self.net, nnx.Param, nnx.BatchStat)

    def step(self, X, y, lr: float) -> tuple[float, int]:
        """One SGD step; returns the batch's mean loss and number of correct predictions."""
        self._check(X, training=True)
        X, y = self._input(X), jax.device_put(jnp.asarray(y, jnp.int32), self.device)

        def run():
            params, stats = self._state()
            params, stats, self.opt_state, loss, correct = self._step(
                self.momentum, self.weight_decay, self.gradient_clip_val, self._graph_train, params, stats,
                self.opt_state, X, y,
                jnp.asarray(lr, jnp.float32))
            nnx.update(self.net, params, stats)
            return float(loss), int(correct)
        return self._keep_statistics_finite(run)

    def _check(self, X, training: bool, channels_last: bool = True) -> None:
        self._check_batch(X.shape, X.dtype, training, lambda: jnp.all(jnp.isfinite(jnp.asarray(X))),
                          channels_last=channels_last)

    def _statistics(self):
        return [(n, v) for n, v, _ in _variables(self.net) if isinstance(v, nnx.BatchStat)]

    def _snapshot(self, stats):
        return [v.value for v in stats]

    def _finite(self, stats):
        return np.asarray(jnp.stack([jnp.all(jnp.isfinite(v.value)) for v in stats])).tolist()

    def _restore(self, stats, saved):
        for v, old in zip(stats, saved):
            v.value = old

    def predict(self, X) -> np.ndarray:
        """Eval-mode logits of a NHWC batch."""
        self._check(X, training=False)
        return np.asarray(self._eval_forward(self._graph_eval, *self._state(), self._input(X)))

    def _input(self, X) -> jax.Array:
        """A NHWC batch (JAX or numpy) on the device, float32."""
        X = jax.device_put(X, self.device)
        return X if X.dtype == jnp.float32 else X.astype(jnp.float32)

    def forward(self, X: np.ndarray, training: bool = False) -> np.ndarray:
        """Logits for a NCHW numpy batch (train mode uses and updates batch statistics)."""
        self._check(np.asarray(X), training, channels_last=False)
        X = jax.device_put(np.ascontiguousarray(np.asarray(X, np.float32).transpose(0, 2, 3, 1)), self.device)
        if not training:
            return np.asarray(self._eval_forward(self._graph_eval, *self._state(), X))

        def run():
            logits, stats = self._train_forward(self._graph_train, *self._state(), X)
            nnx.update(self.net, stats)
            return np.asarray(logits)
        return self._keep_statistics_finite(run)

    _neutral = (get_weights, set_weights)

    def _native_weights(self) -> dict[str, np.ndarray]:
        """Any network's variables by path."""
        return {name: np.array(v.value) for name, v, _ in _variables(self.net)}

    def _assign_native(self, weights) -> None:
        for name, v, _ in _variables(self.net):
            v.value = jax.device_put(np.asarray(weights[name], v.value.dtype), v.value.sharding)

    def _trace(self):
        return optax.tree_utils.tree_get(self.opt_state, "trace") if self.momentum else None

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Momentum buffers under ``momentum.<canonical name>``, in the canonical layout."""
        trace = self._trace()
        if trace is None:
            return {}
        flat = dict(nnx.to_flat_state(trace))
        return {f"momentum.{name}": to_canonical(_value(flat[path]), kind) for name, path, kind in self._slots}

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        trace = self._trace()
        if trace is None:
            return
        given = {path: from_canonical(state[f"momentum.{name}"], kind) for name, path, kind in self._slots
                 if f"momentum.{name}" in state}

        def load(path, v):
            if path not in given:
                return v
            new = jax.device_put(given[path], self.device)
            return v.replace(value=new) if isinstance(v, nnx.Variable) else new

        self.opt_state = optax.tree_utils.tree_set(self.opt_state, trace=nnx.map_state(load, trace))


def _value(v):
    return v.value if isinstance(v, nnx.Variable) else v


def train_ch6(net, train_iter, test_iter, num_epochs: int, lr: float, device=None, *, precision: str = "float32",
              **fit_options):
    """d2l's ``train_ch6``: SGD at constant ``lr``, cross-entropy; prints d2l's lines
    (``training on``, loss and accuracies, examples/sec), draws the curves and returns the
    history. ``net``: a d2lres network or any ``nnx`` module mapping an NHWC batch to logits.
    ``train_iter`` / ``test_iter``: d2lres's batches or any re-iterable of NHWC ``(X, y)``
    arrays with a length; ``precision``: the ``Trainer``'s (``"bf16"``: mixed precision);
    ``fit_options`` go to ``d2lres.training.fit``.

    Initialisation: an ``nnx`` module is initialised when it is built (its layers' own
    initialisers and ``rngs``), so every network is trained from its weights as they are (the
    book's JAX tab, d2l 1.0's linen ``Trainer``, has no ``train_ch6``); a d2lres network's are
    d2lres's seeded scheme (``init_weights``)."""
    device = device if device is not None else try_gpu()
    return training.train_ch6(net, lambda: Trainer(net, device=device, precision=precision), lambda: None,
                          train_iter, test_iter, num_epochs, lr, **fit_options)
