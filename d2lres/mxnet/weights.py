"""Weights I/O for the MXNet backend: Gluon parameters <-> neutral weights file (same layouts)."""
from __future__ import annotations

from typing import Iterator

import numpy as onp
from mxnet import np
from mxnet.gluon import nn

from .. import spec
from .. import weights as neutral
from .model import ResNet

_BN = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "running_mean"),
       ("running_var", "running_var"))


def named_layers(net: ResNet) -> Iterator[tuple[str, nn.Block]]:
    """``(canonical name, block)`` for every block with parameters, in the spec's order."""
    return spec.named_layers(net, lambda stage: stage,
                             "d2lres.mxnet's neutral weights (get_weights, set_weights, save_weights, ...)",
                             "the framework's own: net.save_parameters(path) / net.load_parameters(path)")


def named_parameters(net: ResNet):
    """``(canonical name, gluon Parameter)`` in canonical order."""
    for name, layer in named_layers(net):
        pairs = _BN if isinstance(layer, nn.BatchNorm) else (("weight", "weight"), ("bias", "bias"))
        for key, attr in pairs:
            if getattr(layer, attr) is None:  # a bias-free convolution
                continue
            yield f"{name}.{key}", getattr(layer, attr)


def get_weights(net: ResNet) -> dict[str, onp.ndarray]:
    return {name: p.data().asnumpy().copy() for name, p in named_parameters(net)}


def set_weights(net: ResNet, weights: dict[str, onp.ndarray]) -> None:
    neutral.check_weights(weights, net.num_classes, net.in_channels, net.arch)
    for name, p in named_parameters(net):
        p.set_data(np.array(onp.asarray(weights[name], dtype=onp.float32), ctx=p.list_ctx()[0]))


save_weights, load_weights, init_weights = neutral.backend_functions(get_weights, set_weights)
load_torchvision_state_dict = neutral.torchvision_loader(set_weights)
