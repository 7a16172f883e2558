"""Weights I/O for the JAX backend: ``nnx`` variables <-> neutral weights file (kernels HWIO <->
OIHW, dense ``(in, out)`` <-> ``(out, in)``; BatchNorm ``scale/bias/mean/var`` <->
``weight/bias/running_mean/running_var``)."""
from __future__ import annotations

from typing import Iterator

import jax
import numpy as np
from flax import nnx

from .. import spec
from .. import weights as neutral
from ..errors import UserValueError
from .model import Lazy, ResNet

_BN = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))


def _built(layer, name: str):
    if isinstance(layer, Lazy):
        raise UserValueError(f"{name} has no weights yet: it is built on its first call (or pass in_channels)")
    return layer


def named_layers(net: ResNet) -> Iterator[tuple[str, nnx.Module]]:
    """``(canonical name, layer)`` for every layer with weights, in the spec's order."""
    layers = spec.named_layers(net, lambda stage: stage.layers,
                               "d2lres.jax's neutral weights (get_weights, set_weights, save_weights, ...)",
                               "the framework's own: nnx.state(net) with a checkpointer such as orbax")
    return ((name, _built(layer, name)) for name, layer in layers)


def variables(net: ResNet) -> Iterator[tuple[str, nnx.Variable, str]]:
    """``(canonical name, variable, kind)``; kind says how to convert the layout."""
    for name, layer in named_layers(net):
        if isinstance(layer, nnx.BatchNorm):
            for key, attr in _BN:
                yield f"{name}.{key}", getattr(layer, attr), "vector"
        else:
            yield f"{name}.weight", layer.kernel, "dense" if isinstance(layer, nnx.Linear) else "conv"
            if layer.bias is not None:
                yield f"{name}.bias", layer.bias, "vector"


#: The canonical layout and this backend's (channels last), said once in ``d2lres.weights``.
to_canonical, from_canonical = neutral.from_channels_last, neutral.to_channels_last


def get_weights(net: ResNet) -> dict[str, np.ndarray]:
    """The network's parameters and BatchNorm statistics under canonical names."""
    return {name: to_canonical(var.value, kind) for name, var, kind in variables(net)}


def set_weights(net: ResNet, weights: dict[str, np.ndarray]) -> None:
    """Copy canonical weights into ``net`` (checked against the spec first), each onto the
    device its variable is on."""
    neutral.check_weights(weights, net.num_classes, net.in_channels, net.arch)
    for name, var, kind in variables(net):
        var.value = jax.device_put(from_canonical(weights[name], kind), var.value.sharding)


save_weights, load_weights, init_weights = neutral.backend_functions(get_weights, set_weights)
load_torchvision_state_dict = neutral.torchvision_loader(set_weights)
