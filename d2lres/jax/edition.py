"""d2l 1.0's names for JAX, the edition d2l.ai prints (``from d2lres import jax as d2l``): ``get_key``,
``Module`` and ``Classifier`` as Flax ``linen`` modules (dataclass fields, the ``training`` flag of
the chapter's networks), ``DataModule``, ``FashionMNIST``, ``cpu``, ``gpu``, ``num_gpus``, d2l's
tensor aliases, and the ``Trainer(max_epochs, ...)`` front end of d2lres's loop
(``d2lres.loop.edition``), whose step is :class:`LinenTrainer`: d2l's ``TrainState`` (parameters,
``batch_stats``, a dropout key) stepped by one ``jax.jit``-compiled function. They follow d2l
1.0.3's signatures; docs/book-code.md says where d2lres differs and why.

d2lres's own networks stay ``nnx`` (``d2lres.jax.model``); a linen model trains here, through this
``Trainer``, and its weights are its own (``params.<path>``, ``batch_stats.<path>``)."""
from __future__ import annotations

import dataclasses
import random
from dataclasses import field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state

from ..core import precision as precisions
from ..errors import UserTypeError, UserValueError
from ..loop import edition
from ..loop.edition import EditionTrainer, HyperParameters, ProgressBoard, add_to_class, show_images  # noqa: F401
from ..loop.trainer import TrainerBase, clip_value
from .train import host_arrays, to_arrays, try_all_gpus, try_gpu

#: What ``d2lres.jax`` exports from here (its ``Trainer`` is reached through the contract's
#: ``Trainer``, which builds this one when called as d2l 1.0's ``Trainer(max_epochs, ...)``).
NAMES = ("HyperParameters", "ProgressBoard", "add_to_class", "Module", "Classifier", "DataModule", "FashionMNIST",
         "get_seed", "get_key", "cpu", "gpu", "num_gpus", "show_images", "nn_Module", "to", "numpy", "transpose",
         "sigmoid", "ones_like", "ones", "zeros_like", "zeros", "arange", "meshgrid", "sin", "sinh", "cos", "cosh",
         "tanh", "linspace", "exp", "log", "tensor", "expand_dims", "matmul", "int32", "int64", "float32", "concat",
         "stack", "abs", "eye", "reshape", "reduce_sum", "argmax", "astype", "reduce_mean", "swapaxes", "repeat")

# d2l 1.0's tensor aliases for JAX, one line each (d2l/jax.py).
nn_Module = nn.Module
to = jax.device_put
numpy = np.asarray
transpose = lambda a: a.T  # noqa: E731
sigmoid = jax.nn.sigmoid
ones_like = jnp.ones_like
ones = jnp.ones
zeros_like = jnp.zeros_like
zeros = jnp.zeros
arange = jnp.arange
meshgrid = jnp.meshgrid
sin = jnp.sin
sinh = jnp.sinh
cos = jnp.cos
cosh = jnp.cosh
tanh = jnp.tanh
linspace = jnp.linspace
exp = jnp.exp
log = jnp.log
tensor = jnp.array
expand_dims = jnp.expand_dims
matmul = jnp.matmul
int32 = jnp.int32
int64 = jnp.int64
float32 = jnp.float32
concat = jnp.concatenate
stack = jnp.stack
abs = jnp.abs
eye = jnp.eye
reshape = lambda x, *args, **kwargs: x.reshape(*args, **kwargs)  # noqa: E731
reduce_sum = lambda x, *args, **kwargs: x.sum(*args, **kwargs)  # noqa: E731
argmax = lambda x, *args, **kwargs: x.argmax(*args, **kwargs)  # noqa: E731
astype = lambda x, *args, **kwargs: x.astype(*args, **kwargs)  # noqa: E731
reduce_mean = lambda x, *args, **kwargs: x.mean(*args, **kwargs)  # noqa: E731
swapaxes = lambda x, *args, **kwargs: x.swapaxes(*args, **kwargs)  # noqa: E731
repeat = lambda x, *args, **kwargs: x.repeat(*args, **kwargs)  # noqa: E731


def get_seed():
    """A random seed in [0, 10^6] (d2l's; its ``random.randint(0, 1e6)`` is a TypeError on Python 3.12+)."""
    return random.randint(0, 10 ** 6)


def get_key():
    """A fresh JAX PRNG key from :func:`get_seed`."""
    return jax.random.PRNGKey(get_seed())


def cpu():
    """JAX's CPU device."""
    return jax.devices("cpu")[0]


def _gpus() -> list:
    return [d for d in try_all_gpus() if d.platform != "cpu"]


def gpu(i=0):
    """JAX's GPU ``i``."""
    return _gpus()[i]


def num_gpus():
    """How many GPUs JAX sees (0 without a GPU backend)."""
    return len(_gpus())


class Module(nn.Module, HyperParameters):
    """d2l 1.0's base of models, a linen module: ``self.net`` set in ``setup`` (or ``__call__``
    written out), its optax SGD at ``self.lr``, its board (a dataclass field, one per model)."""

    plot_train_per_epoch: int = field(default=2, init=False)
    plot_valid_per_epoch: int = field(default=1, init=False)
    board: ProgressBoard = field(default_factory=lambda: ProgressBoard(), init=False)

    def loss(self, y_hat, y):
        raise NotImplementedError

    def forward(self, X, *args, **kwargs):
        if not hasattr(self, "net"):
            raise UserTypeError(f"{type(self).__name__} has no self.net: set it in setup, or define __call__")
        return self.net(X, *args, **kwargs)

    def __call__(self, X, *args, **kwargs):
        return self.forward(X, *args, **kwargs)

    plot = edition.ModuleBase.plot

    def training_step(self, params, batch, state):
        loss, grads = jax.value_and_grad(self.loss)(params, batch[:-1], batch[-1], state)
        self.plot("loss", loss, train=True)
        return loss, grads

    def validation_step(self, params, batch, state):
        self.plot("loss", self.loss(params, batch[:-1], batch[-1], state), train=False)

    def apply_init(self, dummy_input, key):
        """The model's variables (``self.init``) for the batch ``dummy_input`` (a tuple of inputs)."""
        return self.init(key, *dummy_input)

    def configure_optimizers(self):
        return optax.sgd(self.lr)


class Classifier(Module):
    """d2l 1.0's classifier: cross-entropy with the BatchNorm statistics as auxiliary output,
    accuracy, the validation points, ``layer_summary``. ``loss`` and ``accuracy`` take d2l's
    ``(params, X, Y, state)``, ``state`` a ``TrainState`` (:class:`TrainState`)."""

    def training_step(self, params, batch, state):
        value, grads = jax.value_and_grad(self.loss, has_aux=True)(params, batch[:-1], batch[-1], state)
        self.plot("loss", value[0], train=True)
        return value, grads

    def validation_step(self, params, batch, state):
        self.plot("loss", self.loss(params, batch[:-1], batch[-1], state)[0], train=False)
        self.plot("acc", self.accuracy(params, batch[:-1], batch[-1], state), train=False)

    @partial(jax.jit, static_argnums=(0, 5))
    def accuracy(self, params, X, Y, state, averaged=True):
        Y_hat = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, *X)
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1]))
        compare = (Y_hat.argmax(axis=1).astype(Y.dtype) == Y.reshape(-1)).astype(jnp.float32)
        return compare.mean() if averaged else compare

    @partial(jax.jit, static_argnums=(0, 5))
    def loss(self, params, X, Y, state, averaged=True):
        Y_hat, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, *X,
                                        mutable=["batch_stats"], rngs={"dropout": state.dropout_rng})
        ce = optax.softmax_cross_entropy_with_integer_labels(Y_hat.reshape((-1, Y_hat.shape[-1])), Y.reshape((-1,)))
        return (ce.mean(), updates) if averaged else (ce, updates)

    def layer_summary(self, X_shape, key=None):
        """Each layer of ``self.net`` and its output's shape for a batch of ``X_shape`` (NHWC), the
        variables initialised from ``key`` (None: :func:`get_key`). Traced by ``jax.eval_shape``:
        the shapes without computing the layers."""
        rows = []

        def walk(X):
            bound = self.clone().bind(self.init(get_key() if key is None else key, X), mutable=["batch_stats"])
            bound(X)
            for layer in bound.net.layers:
                X = layer(X)
                rows.append((layer.__class__.__name__, X.shape))
            return X
        jax.eval_shape(walk, jax.ShapeDtypeStruct(tuple(X_shape), jnp.float32))
        for name, shape in rows:
            print(name, "output shape:\t", shape)


class DataModule(edition.DataModule):
    """d2l 1.0's base of data (JAX's has no ``num_workers``); batches are numpy arrays, as d2l's."""

    def __init__(self, root="../data"):
        self.save_hyperparameters()

    def get_tensorloader(self, tensors, train, indices=slice(0, None)):
        """Batches of ``self.batch_size`` over ``tensors[indices]`` (numpy), reshuffled on each pass for training."""
        return _TensorLoader(tuple(np.asarray(a)[indices] for a in tensors), self.batch_size, train)


class _TensorLoader:
    def __init__(self, tensors, batch_size, shuffle):
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.rng = np.random.default_rng()

    def __len__(self):
        return -(-len(self.tensors[0]) // self.batch_size)

    def __iter__(self):
        n = len(self.tensors[0])
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for i in range(0, n, self.batch_size):
            yield tuple(a[order[i:i + self.batch_size]] for a in self.tensors)


class FashionMNIST(edition.FashionMNIST, DataModule):
    """d2l 1.0's Fashion-MNIST (``d2lres.loop.edition.FashionMNIST``; d2l reads it through
    TensorFlow): numpy batches, ``X`` ``(batch, side, side, 1)`` float32 (NHWC), ``y`` int32."""

    convert = staticmethod(host_arrays)


class TrainState(train_state.TrainState):
    """d2l 1.0's ``TrainState``: parameters, optimizer, BatchNorm statistics, a dropout key."""
    batch_stats: Any
    dropout_rng: jax.Array


def clip_gradients(grads, grad_clip_val):
    """d2l's clipping: ``grads`` scaled so that their joint norm is at most ``grad_clip_val``."""
    norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))
    return jax.tree.map(lambda g: jnp.where(norm < grad_clip_val, g, g * (grad_clip_val / norm)), grads)


def _logits(apply, state, X, train):
    """``(logits float32 (batch, classes), the new batch_stats)`` in training mode, or eval-mode logits."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if not train:
        logits, stats = apply(variables, X), state.batch_stats
    else:
        logits, updates = apply(variables, X, mutable=["batch_stats"], rngs={"dropout": state.dropout_rng})
        stats = updates.get("batch_stats", state.batch_stats)
    return logits.reshape((-1, logits.shape[-1])).astype(jnp.float32), stats


def _train_step(apply, clip, state, X, y):
    """One step as d2l's ``fit_epoch``: cross-entropy in training mode (its ``batch_stats`` kept),
    the gradients clipped if ``clip``, ``state.apply_gradients``, the dropout key split."""
    def loss_fn(params):
        logits, stats = _logits(apply, state.replace(params=params), X, True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, stats)

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if clip:
        grads = clip_gradients(grads, clip)
    state = state.apply_gradients(grads=grads)
    state = state.replace(batch_stats=stats, dropout_rng=jax.random.split(state.dropout_rng)[0])
    return state, loss, jnp.sum(jnp.argmax(logits, axis=-1) == y)


def _flat(tree, prefix: str) -> dict[str, jax.Array]:
    """``{prefix.path: leaf}`` of a pytree of arrays, paths joined with dots."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join([prefix, *(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)]): v
            for path, v in leaves}


class LinenTrainer(TrainerBase):
    """d2lres's step on a linen model (what d2l 1.0's ``Trainer.fit`` builds for it): its
    variables and the optax transformation ``tx`` in a :class:`TrainState`, on ``device``. A
    model with a ``training`` field steps as ``model.clone(training=True)`` and predicts as
    ``model.clone(training=False)`` (the chapter's BatchNorm modes); both are ``jax.jit``-compiled.
    The step's learning rate is ``tx``'s own (``configure_optimizers``): the loop's ``lr`` is the
    model's, for its messages. Weights: ``params.<path>`` and ``batch_stats.<path>``; the
    optimizer's arrays and the dropout key go into a checkpoint as ``momentum.<path>``."""

    backend = "jax"

    def __init__(self, model, variables, tx, dropout_key, *, device=None, precision="float32", gradient_clip_val=0.0):
        if precisions.check(precision) != "float32":
            raise UserValueError(f"precision={precision!r} is not available for a linen model: d2lres's bf16 policy "
                                 f"sets its nnx layers' dtypes; give the linen layers dtype=jnp.bfloat16 instead")
        self.precision, self.gradient_clip_val = precision, clip_value(gradient_clip_val)
        self.net, self.device = model, try_gpu() if device is None else device
        flagged = "training" in {f.name for f in dataclasses.fields(model)}
        train, evaluate = (model.clone(training=True), model.clone(training=False)) if flagged else (model, model)
        self.state = jax.device_put(TrainState.create(
            apply_fn=model.apply, params=variables["params"], batch_stats=variables.get("batch_stats", {}),
            dropout_rng=dropout_key, tx=tx), self.device)
        self._step = jax.jit(partial(_train_step, train.apply, self.gradient_clip_val))
        self._train_forward = jax.jit(partial(_logits, train.apply, train=True))
        self._eval_forward = jax.jit(partial(_logits, evaluate.apply, train=False))

    def convert(self, X: np.ndarray, y: np.ndarray):
        return to_arrays(X, y, self.device)

    def _input(self, X, training: bool, channels_last: bool = True) -> jax.Array:
        X = np.asarray(X) if not isinstance(X, jax.Array) else X
        self._check_batch(X.shape, X.dtype, training, lambda: jnp.all(jnp.isfinite(jnp.asarray(X))),
                          channels_last=channels_last)
        X = jax.device_put(X, self.device)
        return X if X.dtype == jnp.float32 else X.astype(jnp.float32)

    def step(self, X, y, lr: float) -> tuple[float, int]:
        """One step of ``tx`` on the batch (NHWC); the batch's mean loss and number of correct predictions."""
        X, y = self._input(X, True), jax.device_put(jnp.asarray(y, jnp.int32).reshape(-1), self.device)

        def run():
            self.state, loss, correct = self._step(self.state, X, y)
            return float(loss), int(correct)
        return self._keep_statistics_finite(run)

    def predict(self, X) -> np.ndarray:
        """Eval-mode logits of a NHWC batch."""
        return np.asarray(self._eval_forward(self.state, self._input(X, False))[0])

    def forward(self, X: np.ndarray, training: bool = False) -> np.ndarray:
        """Logits for a NCHW numpy batch (train mode uses and updates the batch statistics)."""
        X = self._input(np.ascontiguousarray(np.asarray(X, np.float32).transpose(0, 2, 3, 1)), training,
                        channels_last=True)
        if not training:
            return np.asarray(self._eval_forward(self.state, X)[0])

        def run():
            logits, stats = self._train_forward(self.state, X)
            self.state = self.state.replace(batch_stats=stats)
            return np.asarray(logits)
        return self._keep_statistics_finite(run)

    # a linen model is never a d2lres network (which are nnx): its weights are always its own
    _neutral = (None, None)

    def _native_weights(self) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in {**_flat(self.state.params, "params"),
                                            **_flat(self.state.batch_stats, "batch_stats")}.items()}

    def _assign_native(self, weights) -> None:
        def load(prefix, tree):
            names = list(_flat(tree, prefix))
            leaves, treedef = jax.tree_util.tree_flatten(tree)
            return jax.tree_util.tree_unflatten(treedef, [
                jax.device_put(np.asarray(weights[n], v.dtype), self.device) for n, v in zip(names, leaves)])
        self.state = self.state.replace(params=load("params", self.state.params),
                                        batch_stats=load("batch_stats", self.state.batch_stats))

    def _statistics(self):
        return [(name, name) for name in _flat(self.state.batch_stats, "batch_stats")]

    def _snapshot(self, handles):
        return [self.state.batch_stats]

    def _finite(self, handles):
        flat = _flat(self.state.batch_stats, "batch_stats")
        return [bool(jnp.all(jnp.isfinite(flat[name]))) for name in handles]

    def _restore(self, handles, saved):
        self.state = self.state.replace(batch_stats=saved[0])

    def _optimizer_tree(self):
        return {"opt": self.state.opt_state, "dropout_rng": self.state.dropout_rng}

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimizer's arrays and the dropout key as float64 (exact for the key's uint32 words)."""
        return {k: np.asarray(v, np.float64) for k, v in _flat(self._optimizer_tree(), "momentum").items()}

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        tree = self._optimizer_tree()
        names = list(_flat(tree, "momentum"))
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        loaded = jax.tree_util.tree_unflatten(treedef, [
            jax.device_put(np.asarray(state[n]).astype(v.dtype), self.device) if n in state else v
            for n, v in zip(names, leaves)])
        self.state = self.state.replace(opt_state=loaded["opt"], dropout_rng=loaded["dropout_rng"])


class Trainer(EditionTrainer):
    """d2l 1.0's ``Trainer(max_epochs, num_gpus=0, gradient_clip_val=0)`` on d2lres's loop: ``fit``
    initialises the model on the first training batch from ``key`` (None: :func:`get_key`), as d2l
    does, and steps it with :class:`LinenTrainer`; ``num_gpus`` > 0 trains on the first GPU there
    is (the CPU where there is none)."""

    classifier = Classifier

    def fit(self, model, data, key=None):
        self.key = key
        super().fit(model, data)
        if "training" in {f.name for f in dataclasses.fields(model)}:
            model.training = False  # where d2l's last validation leaves it: model.loss(..., trainer.state) in eval mode

    @property
    def state(self):
        """d2l's ``TrainState`` of the last ``fit``: parameters, optimizer state, ``batch_stats``, dropout key."""
        return self.step_trainer.state

    def clip_gradients(self, grad_clip_val, grads):
        """d2l's clipping: ``grads`` scaled so that their joint norm is at most ``grad_clip_val``."""
        return clip_gradients(grads, grad_clip_val)

    def _step_trainer(self, model, optimizer):
        if not isinstance(model, nn.Module):
            raise UserTypeError(f"Trainer.fit: the model must be a d2l Module (a linen module), got a "
                                f"{type(model).__name__}")
        if not isinstance(optimizer, optax.GradientTransformation):
            raise UserTypeError(f"Trainer.fit: configure_optimizers must give an optax transformation, got a "
                                f"{type(optimizer).__name__}")
        params_key, dropout_key = jax.random.split(get_key() if self.key is None else self.key)
        dummy_input = tuple(next(iter(self.train_dataloader))[:-1])
        variables = jax.jit(model.apply_init)(dummy_input, key={"params": params_key, "dropout": dropout_key})
        device = try_gpu() if self.num_gpus else cpu()
        trainer = LinenTrainer(model, variables, optimizer, dropout_key, device=device, precision=self.precision,
                               gradient_clip_val=self.gradient_clip_val)
        return trainer, float(getattr(model, "lr", float("nan")))

