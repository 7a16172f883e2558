"""ResNet in PyTorch: the chapter's ``Residual`` and ``resnet_block`` as the book writes them,
and the kit from which ``d2lres.core.family`` builds the family of ``spec.ARCHS`` (``Block``,
``Bottleneck``, ``PreActResidual``, ``PreActBottleneck``, ``ResNet``, ``resnet``); module names
are the canonical weight names of ``d2lres.spec``. Tensors are NCHW."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from .. import inputs, spec
from ..core import family


class Residual(nn.Module):
    """The Residual block of ResNet models."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.LazyBatchNorm2d()
        self.bn2 = nn.LazyBatchNorm2d()

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return F.relu(Y + X)


def resnet_block(num_channels, num_residuals, first_block=False):
    """A ResNet stage: all but the first halve height and width."""
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels))
    return nn.Sequential(*blk)


# ---------------------------------------------------------------- the library around the chapter's cells

class _eval_no_grad:
    """Eval mode and no gradients (nothing learned); the mode is put back after."""

    def __init__(self, net: nn.Module):
        self.net, self.was_training, self.no_grad = net, net.training, torch.no_grad()

    def __enter__(self):
        self.net.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.net.train(self.was_training)


def build(module: nn.Module, in_channels: int) -> None:
    """Materialise ``module``'s lazy layers for ``in_channels`` input channels: one zero pixel
    through it in eval mode (its BatchNorm statistics untouched)."""
    with _eval_no_grad(module):
        module(torch.zeros(1, in_channels, 1, 1))


# the book's signatures, with d2lres's in_channels; d2l 0.17's refused (family.py, compat.py)
Residual = family.chapter_residual(Residual, method="forward", shape=lambda X: tuple(X.shape[1:]), build=build)
resnet_block = family.chapter_resnet_block(resnet_block, build)


def conv(p: spec.Conv) -> nn.Module:
    """A convolution; lazy when its input channels are 0."""
    if not p.in_channels:
        return nn.LazyConv2d(p.out_channels, p.kernel, p.stride, p.padding, groups=p.groups, bias=p.bias)
    return nn.Conv2d(p.in_channels, p.out_channels, p.kernel, p.stride, p.padding, groups=p.groups, bias=p.bias)


def batch_norm(channels: int) -> nn.Module:
    """BatchNorm with d2lres's one setting (``spec.BN_EPS``, ``spec.BN_MOMENTUM``); lazy when ``channels`` is 0."""
    if not channels:
        return nn.LazyBatchNorm2d(eps=spec.BN_EPS, momentum=spec.BN_MOMENTUM)
    return nn.BatchNorm2d(channels, eps=spec.BN_EPS, momentum=spec.BN_MOMENTUM)


KIT = family.Kit(
    conv=conv, batch_norm=batch_norm, relu=nn.ReLU,
    max_pool=lambda p: nn.MaxPool2d(p.kernel, p.stride, p.padding),
    avg_pool=lambda: nn.AdaptiveAvgPool2d((1, 1)), flatten=nn.Flatten,
    dense=lambda p: nn.Linear(p.in_features, p.out_features),
    sequential=lambda layers, name: nn.Sequential(OrderedDict(layers)),
    children=lambda stage: list(stage.children()))


class Block(nn.Module):
    """Any block of the family, built from its ``spec.Block`` (``family.build_block``)."""

    def __init__(self, block: spec.Block):
        super().__init__()
        family.build_block(self, block, KIT)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        family.check_block_input(self, X.shape[1])
        return family.run_block(self, X, F.relu)


class Bottleneck(family.Bottleneck, Block):
    """``family.Bottleneck`` in PyTorch."""


class PreActResidual(family.PreActResidual, Block):
    """``family.PreActResidual`` in PyTorch."""


class PreActBottleneck(family.PreActBottleneck, Block):
    """``family.PreActBottleneck`` in PyTorch."""


class ResNeXtBlock(family.ResNeXtBlock, Block):
    """``family.ResNeXtBlock`` (d2l 1.0's; ``groups`` is the width of a group) in PyTorch."""


class ResNet(nn.Sequential):
    """Stages ``b1`` .. ``b5`` and ``head`` of the variant ``arch`` (``spec.get_arch``; None: the
    chapter's ResNet-18, built from its ``Residual`` and ``resnet_block``), initialised with
    d2lres's scheme (Xavier uniform, zero bias); iterate it like the chapter. Input: NCHW."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, arch=None, device=None):
        arch = spec.get_arch(arch)
        super().__init__(OrderedDict(family.stages(KIT, Block, resnet_block, arch, num_classes, in_channels)))
        self.in_channels, self.num_classes, self.arch = in_channels, num_classes, arch
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if device is not None:
            self.to(device)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        inputs.check_batch(tuple(X.shape), X.dtype, self.in_channels, training=self.training, arch=self.arch,
                           num_classes=self.num_classes)
        dtype = self.head.fc.weight.dtype  # float32 (float64 after .double()): floating inputs are cast
        return super().forward(X if X.dtype == dtype else X.to(dtype))


resnet, resnet18, resnet34, resnet50, resnet101, resnet152 = family.Factories(ResNet).all()


def shape_walk(net: nn.Module, input_shape=(1, 224, 224)) -> list[tuple[str, tuple[int, ...]]]:
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them; for a
    network that is not d2lres's (the reader's ``nn.Sequential``), one row per child module
    ``(class name, shape)``, as the chapter prints them."""
    inputs.check_network(net, isinstance(net, nn.Module), "torch", "shape_walk")
    return family.shape_walk(net, input_shape, family.Walker(
        zeros=lambda shape: torch.zeros((1, *shape)), call=lambda layer, X: layer(X),
        shape=lambda X: tuple(X.shape[1:]), mode=lambda: _eval_no_grad(net), children=KIT.children))


def count_parameters(net: nn.Module) -> tuple[int, int]:
    """``(trainable, non-trainable)``: parameters, and BatchNorm running statistics."""
    inputs.check_network(net, isinstance(net, nn.Module), "torch", "count_parameters")
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable, stats
