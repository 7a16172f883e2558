"""ResNet-18 in MXNet Gluon (NumPy mode, as the chapter), the same function as the PyTorch
network. BatchNorm uses PyTorch's epsilon and momentum (``spec.BN_EPS``, ``spec.BN_MOMENTUM``)."""
from __future__ import annotations

import mxnet as mx
from mxnet import init, np, npx
from mxnet.gluon import nn

from .. import spec

npx.set_np()


def _bn(channels: int = 0) -> nn.BatchNorm:
    return nn.BatchNorm(momentum=1 - spec.BN_MOMENTUM, epsilon=spec.BN_EPS, in_channels=channels)


class Residual(nn.HybridBlock):
    """The Residual block of ResNet. ``in_channels`` fixes the input channels up front;
    without it Gluon infers them on the first call, as in the chapter."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1,
                 in_channels: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = nn.Conv2D(num_channels, 3, strides, 1, in_channels=in_channels)
        self.conv2 = nn.Conv2D(num_channels, 3, 1, 1, in_channels=num_channels)
        self.conv3 = nn.Conv2D(num_channels, 1, strides, in_channels=in_channels) if use_1x1conv else None
        self.bn1, self.bn2 = _bn(num_channels), _bn(num_channels)
        self.num_channels, self.use_1x1conv, self.strides = num_channels, use_1x1conv, strides

    def forward(self, X):
        if self.conv3 is None and isinstance(X, mx.np.ndarray) and X.shape[1] != self.num_channels:
            spec.residual_output_shape(tuple(X.shape[1:]), self.num_channels, False, self.strides)
        return super().forward(X)

    def hybrid_forward(self, F, X):
        Y = F.npx.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return F.npx.relu(Y + X)


def resnet_block(num_channels: int, num_residuals: int, first_block: bool = False,
                 in_channels: int = 0) -> nn.HybridSequential:
    """A stage of ``num_residuals`` blocks; all but the first stage halve height and width."""
    blk = nn.HybridSequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2, in_channels=in_channels))
        else:
            blk.add(Residual(num_channels, in_channels=in_channels if i == 0 else num_channels))
    return blk


class ResNet(nn.HybridSequential):
    """Stages ``b1`` .. ``b5`` and ``head``; iterate it like the chapter. Input: NCHW."""

    def __init__(self, in_channels: int, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.num_classes = in_channels, num_classes

    def __iter__(self):
        return iter(self._children.values())

    def forward(self, X):
        if X.ndim != 4:
            raise ValueError(f"expected a batch of shape (N, {self.in_channels}, H, W), got {tuple(X.shape)}")
        spec.check_input(tuple(X.shape[1:]), self.in_channels)
        return super().forward(X)


def resnet18(num_classes: int = 10, in_channels: int = 1, ctx=None) -> ResNet:
    """The chapter's ResNet-18, initialised with d2lres's scheme (Xavier uniform, zero bias)."""
    spec.resnet18_spec(num_classes, in_channels)  # validates the arguments
    net = ResNet(in_channels, num_classes)
    b1 = nn.HybridSequential()
    b1.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3, in_channels=in_channels), _bn(64),
           nn.Activation("relu"), nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    net.add(b1)
    channels = 64
    for k, (num_residuals, num_channels) in enumerate(spec.STAGES):
        net.add(resnet_block(num_channels, num_residuals, first_block=(k == 0), in_channels=channels))
        channels = num_channels
    head = nn.HybridSequential()
    head.add(nn.GlobalAvgPool2D(), nn.Flatten(), nn.Dense(num_classes, in_units=channels))
    net.add(head)
    net.initialize(init.Xavier(), ctx=ctx)
    return net


def shape_walk(net: ResNet, input_shape=(1, 224, 224)) -> list[tuple[str, tuple[int, ...]]]:
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them."""
    spec.check_input(tuple(input_shape), net.in_channels)
    X, rows = np.zeros((1, *input_shape)), []
    for stage_name, stage in zip(spec.STAGE_NAMES, net):
        if stage_name in ("b1", "head"):
            names = ["conv", "bn", "relu", "pool"] if stage_name == "b1" else ["avgpool", "flatten", "fc"]
            for name, layer in zip(names, stage):
                X = layer(X)
                rows.append((f"{stage_name}.{name}", tuple(X.shape[1:])))
        else:
            X = stage(X)
            rows.append((stage_name, tuple(X.shape[1:])))
    return rows


def count_parameters(net: nn.Block) -> tuple[int, int]:
    """``(trainable, non-trainable)``: weights, and BatchNorm running statistics."""
    trainable = stats = 0
    for p in net.collect_params().values():
        size = int(p.data().size)
        if p.grad_req == "null":
            stats += size
        else:
            trainable += size
    return trainable, stats
