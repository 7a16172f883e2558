"""The chapter's ResNet in MXNet Gluon (NumPy mode): the d2lres API."""
import warnings

from ..threads import prepare_mxnet_threads, restore_torch_threads

prepare_mxnet_threads()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet  # noqa: F401,E402

from .model import (Block, Bottleneck, PreActBottleneck, PreActResidual, Residual, ResNet,  # noqa: E402
                    count_parameters, resnet, resnet18, resnet34, resnet50, resnet101, resnet152, resnet_block,
                    shape_walk)
from .train import Trainer, load_data_fashion_mnist, train_ch6, try_gpu  # noqa: E402
from .weights import get_weights, init_weights, load_weights, save_weights, set_weights  # noqa: E402

restore_torch_threads()

__all__ = ["Residual", "ResNet", "resnet_block", "resnet18", "shape_walk", "count_parameters",
           "Block", "Bottleneck", "PreActResidual", "PreActBottleneck",
           "resnet", "resnet34", "resnet50", "resnet101", "resnet152",
           "get_weights", "set_weights", "save_weights", "load_weights", "init_weights",
           "Trainer", "load_data_fashion_mnist", "train_ch6", "try_gpu"]
