"""The chapter's ResNet in JAX + Flax ``nnx`` + optax: the d2lres API (``d2lres.core.api``; see
``d2lres.spec`` for what it builds). Tensors are NHWC (channels last, XLA's CPU layout and the
book's JAX layout); shapes are reported NCHW like the other backends.

Why ``nnx`` and not ``linen`` (the book's JAX tab): the API is stateful -- ``get_weights(net)``,
``set_weights(net, w)``, ``count_parameters(net)``, ``shape_walk(net)``, ``train_ch6(net, ...)``
take one network object and change it in place, as in PyTorch, TensorFlow and MXNet. An ``nnx``
module *is* such an object (its parameters and BatchNorm statistics live in it, it is called as
``net(X)``, iterated stage by stage like the chapter's ``nn.Sequential``, switched with
``net.train()`` / ``net.eval()``), and ``nnx.split`` / ``nnx.merge`` turn it into the pure
functions that ``jax.jit`` compiles for training. A linen module is a stateless description; the
API would have to carry a separate ``variables`` dict beside every net. The book's own linen code
trains through d2l 1.0's names (``d2lres.jax.edition``), and ``d2lres.jax.bench`` keeps it as the
speed baseline.

``XLA_PYTHON_CLIENT_PREALLOCATE`` is set to ``false`` (unless already set) before JAX is
imported, so that a GPU is not 75% reserved by JAX while another framework shares it. A run
with ``JAX_COORDINATOR_ADDRESS`` set joins its other processes first
(``d2lres.host.process.configure``, ``d2lres.jax.distributed``).
"""
from ..host import process

process.prepare("d2lres.jax")  # before JAX loads (d2lres.host.process says why)

from ..host.backends import require

require("jax")  # a missing framework: an error that names the extra

import jax  # noqa: F401  (after the settings above)

from ..core.api import NAMES
from .model import (Block, Bottleneck, PreActBottleneck, PreActResidual, Residual, ResNet, ResNeXtBlock,
                    count_parameters, resnet,
                    resnet18, resnet34, resnet50, resnet101, resnet152, resnet_block, shape_walk)
from .train import Trainer, load_data_fashion_mnist, train_ch6, try_all_gpus, try_gpu
from .weights import get_weights, init_weights, load_torchvision_state_dict, load_weights, save_weights, set_weights

from . import edition

# d2l 1.0's names (the book's compatibility surface, beside the contract): d2lres.jax.edition's
globals().update({name: getattr(edition, name) for name in edition.NAMES})

__all__ = list(NAMES)
