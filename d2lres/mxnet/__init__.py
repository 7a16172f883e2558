"""The chapter's ResNet in MXNet Gluon (NumPy mode): the d2lres API."""
import warnings

from ..host.backends import require

require("mxnet")  # a missing framework: an error that names the extra

from ..host.threads import prepare_mxnet_threads, restore_torch_threads
from ..host.mxnet_compat import prepare_numpy

prepare_numpy()
prepare_mxnet_threads()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet

from ..core.api import NAMES
from .model import (Block, Bottleneck, PreActBottleneck, PreActResidual, Residual, ResNet, ResNeXtBlock,
                    count_parameters, resnet,
                    resnet18, resnet34, resnet50, resnet101, resnet152, resnet_block, shape_walk)
from .train import Trainer, load_data_fashion_mnist, train_ch6, try_all_gpus, try_gpu
from .weights import get_weights, init_weights, load_torchvision_state_dict, load_weights, save_weights, set_weights
from . import edition

# d2l 1.0's names (the book's compatibility surface, beside the contract): d2lres.mxnet.edition's
globals().update({name: getattr(edition, name) for name in edition.NAMES})
restore_torch_threads()

__all__ = list(NAMES)
