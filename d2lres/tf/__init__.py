"""The chapter's ResNet in TensorFlow with Keras 3: the d2lres API (channels-last tensors; shapes
reported NCHW like the other backends). ``d2lres.tensorflow`` is this module under d2l's name
(``from d2lres import tensorflow as d2l``). It also has d2l 1.0's names for the edition d2l.ai
prints (``d2lres.tf.edition``: ``Classifier``, ``FashionMNIST``, ``Trainer(max_epochs)``, ...)."""
from ..host import process

process.prepare("d2lres.tf")  # before TensorFlow and Keras load (d2lres.host.process says why)

from ..host.backends import require

require("tf")  # a missing framework: an error that names the extra

import tensorflow as tf

from ..core.api import NAMES

from .model import (Block, Bottleneck, PreActBottleneck, PreActResidual, Residual, ResNet, ResNeXtBlock,
                    count_parameters, resnet,
                    resnet18, resnet34, resnet50, resnet101, resnet152, resnet_block, shape_walk)
from .train import Trainer, load_data_fashion_mnist, train_ch6, try_all_gpus, try_gpu
from .weights import get_weights, init_weights, load_torchvision_state_dict, load_weights, save_weights, set_weights
from . import edition

# d2l 1.0's names (the book's compatibility surface, beside the contract): d2lres.tf.edition's
globals().update({name: getattr(edition, name) for name in edition.NAMES})

__all__ = list(NAMES)
