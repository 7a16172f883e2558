"""The chapter's ResNet in TensorFlow with Keras 3: the d2lres API (channels-last tensors; shapes
reported NCHW like the other backends)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no INFO lines at import

from ..backends import require

require("tf")  # a missing framework: an error that names the extra

import tensorflow as tf

from .model import (Block, Bottleneck, PreActBottleneck, PreActResidual, Residual, ResNet,
                    count_parameters, resnet, resnet18, resnet34, resnet50, resnet101, resnet152, resnet_block,
                    shape_walk)
from .train import Trainer, load_data_fashion_mnist, train_ch6, try_gpu
from .weights import (get_weights, init_weights, load_torchvision_state_dict, load_weights,
                      save_weights, set_weights)
# Before TensorFlow's runtime starts: TF_CONFIG's MultiWorkerMirroredStrategy (which waits for
# every worker), or D2LRES_REPLICAS logical CPUs (d2lres.tf.parallel.prepare).
from . import parallel  # noqa: E402,F401

__all__ = ["Residual", "Bottleneck", "PreActResidual", "PreActBottleneck", "Block", "ResNet",
           "resnet_block", "resnet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "shape_walk", "count_parameters",
           "get_weights", "set_weights", "save_weights", "load_weights", "init_weights",
           "load_torchvision_state_dict",
           "try_gpu", "load_data_fashion_mnist", "train_ch6", "Trainer"]
