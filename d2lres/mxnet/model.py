"""ResNet in MXNet Gluon (NumPy mode, as the chapter), the same function as the PyTorch network:
the chapter's ``Residual`` and ``resnet_block`` as the book writes them, and the kit from which
``d2lres.core.family`` builds the family of ``spec.ARCHS``. Gluon's BatchNorm defaults are
PyTorch's epsilon and momentum (``spec.BN_EPS``, ``spec.BN_MOMENTUM``). Tensors are NCHW."""
from __future__ import annotations

import mxnet as mx
from mxnet import init, np, npx
from mxnet.gluon import nn

from .. import inputs, spec
from ..core import family
from . import kernels

npx.set_np()


class Residual(nn.HybridBlock):
    """The Residual block of ResNet models."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides)
        self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm()
        self.bn2 = nn.BatchNorm()

    def hybrid_forward(self, F, X):
        Y = F.npx.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return F.npx.relu(Y + X)


def resnet_block(num_channels, num_residuals, first_block=False):
    """A ResNet stage: all but the first halve height and width."""
    blk = nn.HybridSequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.add(Residual(num_channels))
    return blk


# ---------------------------------------------------------------- the library around the chapter's cells

def build(block: nn.HybridBlock, in_channels: int) -> None:
    """Give ``block``'s parameters their shapes for ``in_channels`` input channels now (Gluon's
    shape inference; nothing runs)."""
    block.infer_shape(np.zeros((1, in_channels, 1, 1)))


def _shape(X):
    """``(C, H, W)`` of an eager input; None for a symbol (a hybridized graph being traced)."""
    return tuple(X.shape[1:]) if isinstance(X, mx.np.ndarray) else None


# the book's signatures, with d2lres's in_channels; d2l 0.17's refused (family.py, compat.py)
Residual = family.chapter_residual(Residual, method="forward", shape=_shape, build=build)
resnet_block = family.chapter_resnet_block(resnet_block, build)


def batch_norm(channels: int) -> nn.BatchNorm:
    """BatchNorm with d2lres's one setting; ``channels`` 0 are inferred on the first call."""
    return nn.BatchNorm(momentum=1 - spec.BN_MOMENTUM, epsilon=spec.BN_EPS, in_channels=channels)


def _sequential(layers, name: str) -> nn.HybridSequential:
    stage = nn.HybridSequential()
    stage.add(*[layer for _, layer in layers])
    return stage


KIT = family.Kit(
    conv=lambda p: nn.Conv2D(p.out_channels, p.kernel, p.stride, p.padding, groups=p.groups, use_bias=p.bias,
                             in_channels=p.in_channels),
    batch_norm=batch_norm, relu=lambda: nn.Activation("relu"),
    max_pool=lambda p: nn.MaxPool2D(pool_size=p.kernel, strides=p.stride, padding=p.padding),
    avg_pool=nn.GlobalAvgPool2D, flatten=nn.Flatten,
    dense=lambda p: nn.Dense(p.out_features, in_units=p.in_features),
    sequential=_sequential, children=lambda stage: list(stage._children.values()))


class Block(nn.HybridBlock):
    """Any block of the family, built from its ``spec.Block`` (``family.build_block``)."""

    def __init__(self, block: spec.Block):
        super().__init__()
        family.build_block(self, block, KIT)

    def forward(self, X):
        if isinstance(X, mx.np.ndarray):
            family.check_block_input(self, X.shape[1])
        return super().forward(X)

    def hybrid_forward(self, F, X):
        return family.run_block(self, X, F.npx.relu)


class Bottleneck(family.Bottleneck, Block):
    """``family.Bottleneck`` in MXNet."""


class PreActResidual(family.PreActResidual, Block):
    """``family.PreActResidual`` in MXNet."""


class PreActBottleneck(family.PreActBottleneck, Block):
    """``family.PreActBottleneck`` in MXNet."""


class ResNeXtBlock(family.ResNeXtBlock, Block):
    """``family.ResNeXtBlock`` (d2l 1.0's; ``groups`` is the width of a group) in MXNet."""


class ResNet(nn.HybridSequential):
    """Stages ``b1`` .. ``b5`` and ``head`` of the variant ``arch`` (``spec.get_arch``; None: the
    chapter's ResNet-18, built from its ``Residual`` and ``resnet_block``), initialised on
    ``device`` (an MXNet context) with d2lres's scheme (Xavier uniform, zero bias); iterate it
    like the chapter. Input: NCHW."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, arch=None, device=None):
        super().__init__()
        self.arch = arch = spec.get_arch(arch)
        self.add(*family.stages(KIT, Block, resnet_block, arch, num_classes, in_channels).values())
        self.in_channels, self.num_classes = in_channels, num_classes
        kernels.adopt(self)  # small convolutions as one matmul where that is the same function
        self.initialize(init.Xavier(), ctx=device)

    def __iter__(self):
        return iter(self._children.values())

    def forward(self, X):
        inputs.check_batch(tuple(X.shape), X.dtype, self.in_channels, training=mx.autograd.is_training(),
                           arch=self.arch, num_classes=self.num_classes)
        X = X if X.dtype == "float32" else X.astype("float32")  # floating inputs: cast
        return kernels.call(self, super().forward, X)


resnet, resnet18, resnet34, resnet50, resnet101, resnet152 = family.Factories(ResNet).all()


def shape_walk(net: nn.Block, input_shape=(1, 224, 224)) -> list[tuple[str, tuple[int, ...]]]:
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them; for a
    network that is not d2lres's (the reader's ``nn.Sequential``, initialised), one row per
    child block ``(class name, shape)``, as the chapter prints them."""
    inputs.check_network(net, isinstance(net, nn.Block), "mxnet", "shape_walk")
    return family.shape_walk(net, input_shape, family.Walker(
        zeros=lambda shape: np.zeros((1, *shape)), call=lambda layer, X: layer(X),
        shape=lambda X: tuple(X.shape[1:]), mode=mx.autograd.predict_mode, children=KIT.children))


def count_parameters(net: nn.Block) -> tuple[int, int]:
    """``(trainable, non-trainable)``: weights, and BatchNorm running statistics."""
    inputs.check_network(net, isinstance(net, nn.Block), "mxnet", "count_parameters")
    trainable = stats = 0
    for p in net.collect_params().values():
        size = int(p.data().size)
        if p.grad_req == "null":
            stats += size
        else:
            trainable += size
    return trainable, stats
