"""ResNet-18 in PyTorch: the chapter's ``Residual``, ``resnet_block`` and network, with
PyTorch's module names equal to the canonical weight names of ``d2lres.spec``."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from .. import spec


def _conv(in_channels: int | None, out_channels: int, kernel: int, stride: int = 1,
          padding: int = 0) -> nn.Module:
    if in_channels is None:
        return nn.LazyConv2d(out_channels, kernel, stride, padding)
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding)


def _bn(channels: int | None) -> nn.Module:
    if channels is None:
        return nn.LazyBatchNorm2d(eps=spec.BN_EPS, momentum=spec.BN_MOMENTUM)
    return nn.BatchNorm2d(channels, eps=spec.BN_EPS, momentum=spec.BN_MOMENTUM)


class Residual(nn.Module):
    """The Residual block of ResNet. ``input_channels`` builds it eagerly; without it the
    convolutions are lazy, as in d2l 1.0."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1,
                 input_channels: int | None = None):
        super().__init__()
        self.conv1 = _conv(input_channels, num_channels, 3, strides, 1)
        self.conv2 = _conv(num_channels, num_channels, 3, 1, 1)
        self.conv3 = _conv(input_channels, num_channels, 1, strides) if use_1x1conv else None
        self.bn1, self.bn2 = _bn(num_channels), _bn(num_channels)
        self.num_channels, self.use_1x1conv, self.strides = num_channels, use_1x1conv, strides

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.conv3 is None and X.shape[1] != self.num_channels:
            spec.residual_output_shape(tuple(X.shape[1:]), self.num_channels, False, self.strides)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return F.relu(Y + X)


def resnet_block(num_channels: int, num_residuals: int, first_block: bool = False,
                 input_channels: int | None = None) -> nn.Sequential:
    """A stage of ``num_residuals`` blocks; all but the first stage halve height and width."""
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blocks.append(Residual(num_channels, use_1x1conv=True, strides=2,
                                   input_channels=input_channels))
        else:
            blocks.append(Residual(num_channels, input_channels=input_channels if i == 0 else num_channels))
    return nn.Sequential(*blocks)


class ResNet(nn.Sequential):
    """Stages ``b1`` .. ``b5`` and ``head``; iterate it like the chapter (``for layer in net``).
    Input: NCHW."""

    def __init__(self, stages: OrderedDict, in_channels: int, num_classes: int):
        super().__init__(stages)
        self.in_channels, self.num_classes = in_channels, num_classes

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.ndim != 4:
            raise ValueError(f"expected a batch of shape (N, {self.in_channels}, H, W), got {tuple(X.shape)}")
        spec.check_input(tuple(X.shape[1:]), self.in_channels)
        return super().forward(X)


def resnet18(num_classes: int = 10, in_channels: int = 1) -> ResNet:
    """The chapter's ResNet-18, initialised with d2lres's scheme (Xavier uniform, zero bias)."""
    spec.resnet18_spec(num_classes, in_channels)  # validates the arguments
    b1 = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), bn=_bn(64),
        relu=nn.ReLU(), pool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
    stages, channels = OrderedDict(b1=b1), 64
    for k, (num_residuals, num_channels) in enumerate(spec.STAGES):
        stages[f"b{k + 2}"] = resnet_block(num_channels, num_residuals, first_block=(k == 0),
                                           input_channels=channels)
        channels = num_channels
    stages["head"] = nn.Sequential(OrderedDict(
        avgpool=nn.AdaptiveAvgPool2d((1, 1)), flatten=nn.Flatten(), fc=nn.Linear(channels, num_classes)))
    net = ResNet(stages, in_channels, num_classes)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def shape_walk(net: ResNet, input_shape=(1, 224, 224)) -> list[tuple[str, tuple[int, ...]]]:
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them."""
    spec.check_input(tuple(input_shape), net.in_channels)
    X, rows, was_training = torch.zeros((1, *input_shape)), [], net.training
    net.eval()  # a shape walk must not touch the BatchNorm running statistics
    with torch.no_grad():
        for stage_name, stage in net.named_children():
            if stage_name in ("b1", "head"):
                for name, layer in stage.named_children():
                    X = layer(X)
                    rows.append((f"{stage_name}.{name}", tuple(X.shape[1:])))
            else:
                X = stage(X)
                rows.append((stage_name, tuple(X.shape[1:])))
    net.train(was_training)
    return rows


def count_parameters(net: nn.Module) -> tuple[int, int]:
    """``(trainable, non-trainable)``: parameters, and BatchNorm running statistics."""
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable, stats
