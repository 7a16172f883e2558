"""What ``d2lres profile`` times in JAX: each stage of the ``Trainer``'s own ``nnx`` network
(``net.b1`` .. ``net.head``) split into a pure function, its forward and backward (``jax.vjp``
for the parameters and the input) compiled with ``jax.jit`` as the ``Trainer``'s step is, in
training mode; the optimizer's update (the ``Trainer``'s optax SGD, compiled); ``Trainer.step``."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from .train import sgd


def calls(trainer, feeds: dict, lr: float) -> dict:
    """Name -> callable: ``b1`` .. ``head``, ``update``, ``step`` (see ``d2lres.perf.profile``)."""
    X, y = trainer.convert(feeds["images"], feeds["labels"])
    trainer.step(X, y, lr)
    net = trainer.net
    net.train()
    out = {}
    for name, (Xs, dY) in feeds["stages"].items():
        graphdef, params, rest = nnx.split(getattr(net, name), nnx.Param, ...)
        Xs = jax.device_put(jnp.asarray(Xs.transpose(0, 2, 3, 1)), trainer.device)
        target = y if dY is None else jax.device_put(jnp.asarray(dY.transpose(0, 2, 3, 1) if dY.ndim == 4 else dY),
                                                     trainer.device)
        fn = partial(_stage_grads, graphdef, name != "b1", dY is None)
        out[name] = partial(_blocking, fn, params, rest, Xs, target)
    params = nnx.state(net, nnx.Param)
    grads = jax.tree.map(jnp.ones_like, params)
    update = partial(_update, trainer.momentum, trainer.weight_decay)
    out["update"] = partial(_blocking, update, params, grads, trainer.opt_state, jnp.asarray(lr, jnp.float32))
    out["step"] = lambda: trainer.step(X, y, lr)
    return out


def _blocking(fn, *args):
    jax.block_until_ready(fn(*args))


@partial(jax.jit, static_argnums=(0, 1, 2))
def _stage_grads(graphdef, input_grad: bool, loss: bool, params, rest, X, target):
    def forward(params, X):
        stage = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))
        Y = stage(X)
        if loss:
            Y = optax.softmax_cross_entropy_with_integer_labels(Y, target).mean()
        return Y, nnx.state(stage, nnx.BatchStat)

    if input_grad:
        Y, vjp, stats = jax.vjp(forward, params, X, has_aux=True)
    else:
        Y, vjp, stats = jax.vjp(lambda p: forward(p, X), params, has_aux=True)
    return vjp(jnp.ones_like(Y) if loss else target), stats


@partial(jax.jit, static_argnums=(0, 1))
def _update(momentum, weight_decay, params, grads, opt_state, lr):
    """The ``Trainer``'s update (``train._train_step`` after the gradients)."""
    updates, opt_state = sgd(momentum, weight_decay).update(grads, opt_state, params)
    return jax.tree.map(lambda w, v: w - lr * v, params, updates), opt_state
