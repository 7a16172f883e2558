"""The chapter's ResNet in PyTorch: the d2lres API (``d2lres.core.api``; see ``d2lres.spec`` for what it
builds). Tensors are NCHW."""
from ..host.backends import require

require("torch")  # a missing framework: an error that names the extra

import torch

from ..core.api import NAMES
from ..host.threads import restore_torch_threads
from .model import (Block, Bottleneck, PreActBottleneck, PreActResidual, Residual, ResNet, ResNeXtBlock,
                    count_parameters, resnet,
                    resnet18, resnet34, resnet50, resnet101, resnet152, resnet_block, shape_walk)
from .train import Trainer, load_data_fashion_mnist, train_ch6, try_all_gpus, try_gpu
from .weights import get_weights, init_weights, load_torchvision_state_dict, load_weights, save_weights, set_weights
from . import edition

# d2l 1.0's names (the book's compatibility surface, beside the contract): d2lres.torch.edition's
globals().update({name: getattr(edition, name) for name in edition.NAMES})

restore_torch_threads()

__all__ = list(NAMES)
