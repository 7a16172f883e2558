"""Weights I/O for the TensorFlow backend: Keras variables <-> neutral weights file
(kernels HWIO <-> OIHW, dense ``(in, out)`` <-> ``(out, in)``), and torchvision's state dicts."""
from __future__ import annotations

from typing import Iterator

import keras
import numpy as np

from .. import spec
from .. import weights as neutral
from .model import BatchNorm, ResNet

_BN = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
       ("running_var", "moving_variance"))


def named_layers(net: ResNet) -> Iterator[tuple[str, keras.layers.Layer]]:
    """``(canonical name, layer)`` for every layer with weights, in the spec's order."""
    return spec.named_layers(net, lambda stage: stage.layers,
                             "d2lres.tf's neutral weights (get_weights, set_weights, save_weights, ...)",
                             "the framework's own: net.save_weights(path) / net.load_weights(path)")


def variables(net: ResNet) -> Iterator[tuple[str, keras.Variable, str]]:
    """``(canonical name, Keras variable, kind)``; kind says how to convert the layout."""
    for name, layer in named_layers(net):
        if isinstance(layer, BatchNorm):
            for key, attr in _BN:
                yield f"{name}.{key}", getattr(layer, attr), "vector"
        else:
            kind = "dense" if isinstance(layer, keras.layers.Dense) else "conv"
            yield f"{name}.weight", layer.kernel, kind
            if layer.use_bias:
                yield f"{name}.bias", layer.bias, "vector"


#: The canonical layout and this backend's (channels last), said once in ``d2lres.weights``.
to_canonical, from_canonical = neutral.from_channels_last, neutral.to_channels_last


def get_weights(net: ResNet) -> dict[str, np.ndarray]:
    """The network's weights and BatchNorm statistics under canonical names, PyTorch's layout."""
    return {name: to_canonical(var.numpy(), kind) for name, var, kind in variables(net)}


def set_weights(net: ResNet, weights: dict[str, np.ndarray]) -> None:
    """Copy canonical weights into ``net`` (checked against the spec first)."""
    neutral.check_weights(weights, net.num_classes, net.in_channels, net.arch)
    for name, var, kind in variables(net):
        var.assign(from_canonical(weights[name], kind))


save_weights, load_weights, init_weights = neutral.backend_functions(get_weights, set_weights)
load_torchvision_state_dict = neutral.torchvision_loader(set_weights)
