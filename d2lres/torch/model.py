"""ResNet-18 in PyTorch: the chapter's ``Residual``, ``resnet_block`` and network, with
PyTorch's module names equal to the canonical weight names of ``d2lres.spec``; beside them the
family of ``spec.ARCHS`` (``Bottleneck``, ``PreActResidual``, ``PreActBottleneck``, ``resnet``)."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from .. import inputs, spec
from ..core import api, book
from ..errors import UserValueError


def conv(in_channels: int | None, out_channels: int, kernel: int, stride: int = 1,
         padding: int = 0) -> nn.Module:
    """A biased convolution, lazy when ``in_channels`` is None."""
    if in_channels is None:
        return nn.LazyConv2d(out_channels, kernel, stride, padding)
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding)


def batch_norm(channels: int | None) -> nn.Module:
    """BatchNorm with d2lres's one setting (``spec.BN_EPS``, ``spec.BN_MOMENTUM``)."""
    if channels is None:
        return nn.LazyBatchNorm2d(eps=spec.BN_EPS, momentum=spec.BN_MOMENTUM)
    return nn.BatchNorm2d(channels, eps=spec.BN_EPS, momentum=spec.BN_MOMENTUM)


class Residual(nn.Module):
    """The Residual block of ResNet. ``in_channels`` builds it eagerly; without it the
    convolutions are lazy, as in d2l 1.0."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 in_channels: int | None = None):
        super().__init__()
        self.conv1 = conv(in_channels, num_channels, 3, strides, 1)
        self.conv2 = conv(num_channels, num_channels, 3, 1, 1)
        self.conv3 = conv(in_channels, num_channels, 1, strides) if use_1x1conv else None
        self.bn1, self.bn2 = batch_norm(num_channels), batch_norm(num_channels)
        self.num_channels, self.use_1x1conv, self.strides = num_channels, use_1x1conv, strides

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.conv3 is None and X.shape[1] != self.num_channels:
            spec.residual_output_shape(tuple(X.shape[1:]), self.num_channels, False, self.strides)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return F.relu(Y + X)


def resnet_block(num_channels: int, num_residuals: int, first_block: bool = False, *,
                 in_channels: int | None = None) -> nn.Sequential:
    """A stage of ``num_residuals`` blocks; all but the first stage halve height and width."""
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blocks.append(Residual(num_channels, use_1x1conv=True, strides=2, in_channels=in_channels))
        else:
            blocks.append(Residual(num_channels, in_channels=in_channels if i == 0 else num_channels))
    return nn.Sequential(*blocks)


# d2l 0.17's signatures refused (book.py); added here so that the #@save cells stay the chapter's code
Residual = book.checked_residual(Residual)
resnet_block = book.checked_resnet_block(resnet_block)


class Block(nn.Module):
    """Any block of the family, built from its ``spec.Block``: submodules named as the spec's
    canonical names (``conv1``, ``bn1``, ...); input channels 0 build those layers lazily."""

    def __init__(self, block: spec.Block):
        super().__init__()
        self.spec = block
        for p in block.layers():
            attr = p.local
            if isinstance(p, spec.Conv):
                conv = (nn.Conv2d(p.in_channels, p.out_channels, p.kernel, p.stride, p.padding, bias=p.bias)
                        if p.in_channels else nn.LazyConv2d(p.out_channels, p.kernel, p.stride, p.padding, bias=p.bias))
                setattr(self, attr, conv)
            else:
                setattr(self, attr, batch_norm(p.channels or None))
        self.main_path = block.main_path()
        self.shortcut_path = block.shortcut_path()

    def _run(self, path, X):
        for step in path:
            X = F.relu(X) if step == "relu" else getattr(self, step)(X)
        return X

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        b = self.spec
        if not b.projection and X.shape[1] != b.out_channels:
            raise UserValueError(f"{type(self).__name__}({b.out_channels}, use_1x1conv=False) cannot add an input "
                                 f"of {X.shape[1]} channel(s): it needs {b.out_channels}, or use_1x1conv=True")
        if b.version == 1:
            return F.relu(self._run(self.main_path, X) + self._run(self.shortcut_path, X))
        P = self._run(self.main_path[:2], X)  # bn1, relu: the pre-activation both paths share
        return self._run(self.main_path[2:], P) + (self._run(self.shortcut_path, P) if b.projection else X)


Bottleneck, PreActResidual, PreActBottleneck = api.block_classes(Block)


class ResNet(nn.Sequential):
    """Stages ``b1`` .. ``b5`` and ``head`` of the variant ``arch`` (``spec.get_arch``; None: the
    chapter's ResNet-18, built from its ``Residual`` and ``resnet_block``), initialised with
    d2lres's scheme (Xavier uniform, zero bias); iterate it like the chapter. Input: NCHW."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, arch=None, device=None):
        arch = spec.get_arch(arch)
        net_spec = spec.resnet_spec(arch, num_classes, in_channels)  # validates the arguments
        stages = OrderedDict(b1=nn.Sequential(OrderedDict(
            conv=nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=net_spec["b1"][0].bias),
            bn=batch_norm(64), relu=nn.ReLU(), pool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1))))
        channels = 64
        for k, (num_residuals, num_channels) in enumerate(arch.stages):
            name = f"b{k + 2}"
            if arch == spec.Arch():
                stages[name] = resnet_block(num_channels, num_residuals, first_block=(k == 0), in_channels=channels)
            else:
                stages[name] = nn.Sequential(*[Block(b) for b in net_spec[name]])
            channels = num_channels
        head = OrderedDict(bn=batch_norm(channels), relu=nn.ReLU()) if arch.version == 2 else OrderedDict()
        stages["head"] = nn.Sequential(OrderedDict(
            **head, avgpool=nn.AdaptiveAvgPool2d((1, 1)), flatten=nn.Flatten(), fc=nn.Linear(channels, num_classes)))
        super().__init__(stages)
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


resnet, resnet18, resnet34, resnet50, resnet101, resnet152 = api.factories(ResNet)


def shape_walk(net: nn.Module, input_shape=(1, 224, 224)) -> list[tuple[str, tuple[int, ...]]]:
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them; for a
    network that is not d2lres's (the reader's ``nn.Sequential``), one row per child module
    ``(class name, shape)``, as the chapter prints them."""
    inputs.check_network(net, isinstance(net, nn.Module), "torch", "shape_walk")
    if not book.is_d2lres_net(net):
        return book.walk_children(net.named_children(), torch.zeros((1, *book.walk_input(input_shape))),
                                  lambda layer, X: layer(X), lambda X: tuple(X.shape[1:]),
                                  lambda: _eval_no_grad(net))
    input_shape = inputs.check_shape(input_shape, net.in_channels)
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


class _eval_no_grad:
    """Eval mode and no gradients while a shape walk runs; the mode is put back after."""

    def __init__(self, net: nn.Module):
        self.net, self.was_training, self.no_grad = net, net.training, torch.no_grad()

    def __enter__(self):
        self.net.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.net.train(self.was_training)


def count_parameters(net: nn.Module) -> tuple[int, int]:
    """``(trainable, non-trainable)``: parameters, and BatchNorm running statistics."""
    inputs.check_network(net, isinstance(net, nn.Module), "torch", "count_parameters")
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable, stats
