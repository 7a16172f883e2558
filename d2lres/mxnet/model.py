"""ResNet-18 in MXNet Gluon (NumPy mode, as the chapter), the same function as the PyTorch
network. BatchNorm uses PyTorch's epsilon and momentum (``spec.BN_EPS``, ``spec.BN_MOMENTUM``).
Beside the chapter's blocks, the family of ``spec.ARCHS`` (``Bottleneck``, ``PreActResidual``,
``PreActBottleneck``, ``resnet``)."""
from __future__ import annotations

import mxnet as mx
from mxnet import init, np, npx
from mxnet.gluon import nn

from .. import inputs, spec
from ..core import api, book
from ..errors import UserValueError

npx.set_np()


def batch_norm(channels: int = 0) -> nn.BatchNorm:
    """BatchNorm with d2lres's one setting; ``channels`` 0 are inferred on the first call."""
    return nn.BatchNorm(momentum=1 - spec.BN_MOMENTUM, epsilon=spec.BN_EPS, in_channels=channels)


class Residual(nn.HybridBlock):
    """The Residual block of ResNet. ``in_channels`` fixes the input channels up front;
    without it Gluon infers them on the first call, as in the chapter."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 in_channels: int | None = None):
        super().__init__()
        in_channels = in_channels or 0
        self.conv1 = nn.Conv2D(num_channels, 3, strides, 1, in_channels=in_channels)
        self.conv2 = nn.Conv2D(num_channels, 3, 1, 1, in_channels=num_channels)
        self.conv3 = nn.Conv2D(num_channels, 1, strides, in_channels=in_channels) if use_1x1conv else None
        self.bn1, self.bn2 = batch_norm(num_channels), batch_norm(num_channels)
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


def resnet_block(num_channels: int, num_residuals: int, first_block: bool = False, *,
                 in_channels: int | None = None) -> nn.HybridSequential:
    """A stage of ``num_residuals`` blocks; all but the first stage halve height and width."""
    blk = nn.HybridSequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2, in_channels=in_channels))
        else:
            blk.add(Residual(num_channels, in_channels=in_channels if i == 0 else num_channels))
    return blk


# d2l 0.17's signatures refused (book.py); added here so that the #@save cells stay the chapter's code
Residual = book.checked_residual(Residual)
resnet_block = book.checked_resnet_block(resnet_block)


class Block(nn.HybridBlock):
    """Any block of the family, built from its ``spec.Block``: children named as the spec's
    canonical names (``conv1``, ``bn1``, ...); input channels 0 are inferred on the first call."""

    def __init__(self, block: spec.Block):
        super().__init__()
        self.spec = block
        for p in block.layers():
            attr = p.local
            setattr(self, attr, nn.Conv2D(p.out_channels, p.kernel, p.stride, p.padding, use_bias=p.bias,
                                          in_channels=p.in_channels) if isinstance(p, spec.Conv)
                    else batch_norm(p.channels))
        self.main_path = block.main_path()
        self.shortcut_path = block.shortcut_path()

    def forward(self, X):
        b = self.spec
        if not b.projection and isinstance(X, mx.np.ndarray) and X.shape[1] != b.out_channels:
            raise UserValueError(f"{type(self).__name__}({b.out_channels}, use_1x1conv=False) cannot add an input "
                                 f"of {X.shape[1]} channel(s): it needs {b.out_channels}, or use_1x1conv=True")
        return super().forward(X)

    def _run(self, F, path, X):
        for step in path:
            X = F.npx.relu(X) if step == "relu" else getattr(self, step)(X)
        return X

    def hybrid_forward(self, F, X):
        if self.spec.version == 1:
            return F.npx.relu(self._run(F, self.main_path, X) + self._run(F, self.shortcut_path, X))
        P = self._run(F, self.main_path[:2], X)  # bn1, relu: the shared pre-activation
        return self._run(F, self.main_path[2:], P) + (self._run(F, self.shortcut_path, P)
                                                       if self.spec.projection else X)


Bottleneck, PreActResidual, PreActBottleneck = api.block_classes(Block)


class ResNet(nn.HybridSequential):
    """Stages ``b1`` .. ``b5`` and ``head`` of the variant ``arch`` (``spec.get_arch``; None: the
    chapter's ResNet-18, built from its ``Residual`` and ``resnet_block``), initialised on
    ``device`` (an MXNet context) with d2lres's scheme (Xavier uniform, zero bias); iterate it
    like the chapter. Input: NCHW."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, arch=None, device=None):
        super().__init__()
        self.arch = arch = spec.get_arch(arch)
        net_spec = spec.resnet_spec(arch, num_classes, in_channels)  # validates the arguments
        self.in_channels, self.num_classes = in_channels, num_classes
        b1 = nn.HybridSequential()
        b1.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3, in_channels=in_channels,
                         use_bias=net_spec["b1"][0].bias), batch_norm(64),
               nn.Activation("relu"), nn.MaxPool2D(pool_size=3, strides=2, padding=1))
        self.add(b1)
        channels = 64
        for k, (num_residuals, num_channels) in enumerate(arch.stages):
            if arch == spec.Arch():
                self.add(resnet_block(num_channels, num_residuals, first_block=(k == 0), in_channels=channels))
            else:
                stage = nn.HybridSequential()
                stage.add(*[Block(b) for b in net_spec[f"b{k + 2}"]])
                self.add(stage)
            channels = num_channels
        head = nn.HybridSequential()
        if arch.version == 2:
            head.add(batch_norm(channels), nn.Activation("relu"))
        head.add(nn.GlobalAvgPool2D(), nn.Flatten(), nn.Dense(num_classes, in_units=channels))
        self.add(head)
        self.initialize(init.Xavier(), ctx=device)

    def __iter__(self):
        return iter(self._children.values())

    def forward(self, X):
        inputs.check_batch(tuple(X.shape), X.dtype, self.in_channels, training=mx.autograd.is_training(),
                           arch=self.arch, num_classes=self.num_classes)
        return super().forward(X if X.dtype == "float32" else X.astype("float32"))  # floating inputs: cast


resnet, resnet18, resnet34, resnet50, resnet101, resnet152 = api.factories(ResNet)


def shape_walk(net: nn.Block, input_shape=(1, 224, 224)) -> list[tuple[str, tuple[int, ...]]]:
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them; for a
    network that is not d2lres's (the reader's ``nn.Sequential``, initialised), one row per
    child block ``(class name, shape)``, as the chapter prints them."""
    inputs.check_network(net, isinstance(net, nn.Block), "mxnet", "shape_walk")
    if not book.is_d2lres_net(net):
        return book.walk_children(net._children.items(), np.zeros((1, *book.walk_input(input_shape))),
                                  lambda layer, X: layer(X), lambda X: tuple(X.shape[1:]), mx.autograd.predict_mode)
    input_shape = inputs.check_shape(input_shape, net.in_channels)
    X, rows = np.zeros((1, *input_shape)), []
    net_spec = spec.resnet_spec(net.arch, net.num_classes, net.in_channels)
    for stage_name, stage in zip(spec.STAGE_NAMES, net):
        if stage_name in ("b1", "head"):
            for layer_spec, layer in zip(net_spec[stage_name], stage):
                X = layer(X)
                rows.append((spec.layer_name(stage_name, layer_spec), tuple(X.shape[1:])))
        else:
            X = stage(X)
            rows.append((stage_name, tuple(X.shape[1:])))
    return rows


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
