"""Weights I/O for the PyTorch backend: module state <-> neutral weights file."""
from __future__ import annotations

import numpy as np
import torch

from .. import weights as neutral
from ..core import compat

INSTEAD = "the framework's own: torch.save(net.state_dict(), path) / net.load_state_dict(torch.load(path))"


def get_weights(net: torch.nn.Module) -> dict[str, np.ndarray]:
    """The network's parameters and BatchNorm statistics under canonical names."""
    compat.require_d2lres_net(net, "d2lres.torch.get_weights", INSTEAD)
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def set_weights(net: torch.nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Copy canonical weights into ``net`` (checked against the spec first)."""
    compat.require_d2lres_net(net, "d2lres.torch.set_weights", INSTEAD)
    neutral.check_weights(weights, net.num_classes, net.in_channels, net.arch)
    state = net.state_dict()
    with torch.no_grad():
        for name, value in weights.items():
            state[name].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))


save_weights, load_weights, init_weights = neutral.backend_functions(get_weights, set_weights)
load_torchvision_state_dict = neutral.torchvision_loader(set_weights)
