"""The chapter's ResNet in PyTorch: the d2lres API (see ``d2lres.spec`` for what it builds)."""
import torch  # noqa: F401  (a missing framework fails here, with the backends' hint upstream)

from ..threads import restore_torch_threads
from .model import (Block, Bottleneck, PreActBottleneck, PreActResidual, Residual, ResNet, count_parameters,
                    resnet, resnet18, resnet34, resnet50, resnet101, resnet152, resnet_block, shape_walk)
from .train import Trainer, load_data_fashion_mnist, train_ch6, try_gpu  # noqa: E402
from .weights import get_weights, init_weights, load_torchvision_state_dict, load_weights, save_weights, set_weights

restore_torch_threads()

__all__ = ["Residual", "ResNet", "resnet_block", "resnet18", "shape_walk", "count_parameters",
           "Block", "Bottleneck", "PreActResidual", "PreActBottleneck",
           "resnet", "resnet34", "resnet50", "resnet101", "resnet152", "load_torchvision_state_dict",
           "get_weights", "set_weights", "save_weights", "load_weights", "init_weights",
           "Trainer", "load_data_fashion_mnist", "train_ch6", "try_gpu"]
