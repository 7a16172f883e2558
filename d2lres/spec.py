"""Framework-free description of the chapter's ResNet-18.

Every backend builds the same network; this module says what that network is without a
framework: its layers with canonical parameter names (the names of the neutral weights file,
in PyTorch's layout: convolutions OIHW, dense ``(out, in)``), the output shape of every layer
for any input size (NCHW convention), parameter counts per stage (trainable and BatchNorm
statistics apart) and forward multiply-accumulates. The tests hold each backend against it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

#: ResNet-18 stages b2..b5: (number of Residual blocks, channels).
STAGES = ((2, 64), (2, 128), (2, 256), (2, 512))
STAGE_NAMES = ("b1", "b2", "b3", "b4", "b5", "head")

#: One BatchNorm setting for all three backends: PyTorch's. ``momentum`` is the weight of the
#: new batch in the running average (Keras/MXNet call ``1 - momentum`` their momentum).
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class Conv:
    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    bias: bool = True


@dataclass(frozen=True)
class BatchNorm:
    name: str
    channels: int


@dataclass(frozen=True)
class Dense:
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class MaxPool:
    name: str
    kernel: int = 3
    stride: int = 2
    padding: int = 1


@dataclass(frozen=True)
class Residual:
    """The chapter's block: conv3x3-BN-ReLU-conv3x3-BN, plus the input (through a strided
    1x1 convolution when ``use_1x1conv``), then ReLU."""
    name: str
    in_channels: int
    num_channels: int
    use_1x1conv: bool = False
    strides: int = 1

    def layers(self) -> list:
        n, c = self.name, self.num_channels
        out = [Conv(f"{n}.conv1", self.in_channels, c, 3, self.strides, 1), BatchNorm(f"{n}.bn1", c),
               Conv(f"{n}.conv2", c, c, 3, 1, 1), BatchNorm(f"{n}.bn2", c)]
        if self.use_1x1conv:
            out.append(Conv(f"{n}.conv3", self.in_channels, c, 1, self.strides, 0))
        return out


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    trainable: bool


def resnet_block_spec(name: str, in_channels: int, num_channels: int, num_residuals: int,
                      first_block: bool = False) -> list[Residual]:
    """The chapter's ``resnet_block``: the first block halves the size and changes channels,
    unless it is the first stage (b2)."""
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blocks.append(Residual(f"{name}.{i}", in_channels, num_channels, True, 2))
        else:
            blocks.append(Residual(f"{name}.{i}", num_channels if i else in_channels, num_channels))
    return blocks


def resnet18_spec(num_classes: int = 10, in_channels: int = 1) -> dict[str, list]:
    """Stage name -> list of layers (``"relu"``, ``"flatten"`` and ``"avgpool"`` are parameter-free)."""
    _check_positive(num_classes=num_classes, in_channels=in_channels)
    net = {"b1": [Conv("b1.conv", in_channels, 64, 7, 2, 3), BatchNorm("b1.bn", 64), "relu",
                  MaxPool("b1.pool")]}
    channels = 64
    for k, (num_residuals, num_channels) in enumerate(STAGES):
        net[f"b{k + 2}"] = resnet_block_spec(f"b{k + 2}", channels, num_channels, num_residuals,
                                             first_block=(k == 0))
        channels = num_channels
    net["head"] = ["avgpool", "flatten", Dense("head.fc", channels, num_classes)]
    return net


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


def _primitives(layer) -> Iterator:
    if isinstance(layer, Residual):
        yield from layer.layers()
    else:
        yield layer


def parameters(num_classes: int = 10, in_channels: int = 1) -> dict[str, ParamSpec]:
    """Canonical parameter names and shapes, in the order the network uses them."""
    params: dict[str, ParamSpec] = {}
    for stage in resnet18_spec(num_classes, in_channels).values():
        for layer in stage:
            for p in _primitives(layer):
                if isinstance(p, Conv):
                    params[f"{p.name}.weight"] = ParamSpec(
                        (p.out_channels, p.in_channels, p.kernel, p.kernel), True)
                    if p.bias:
                        params[f"{p.name}.bias"] = ParamSpec((p.out_channels,), True)
                elif isinstance(p, BatchNorm):
                    for key, trainable in (("weight", True), ("bias", True),
                                           ("running_mean", False), ("running_var", False)):
                        params[f"{p.name}.{key}"] = ParamSpec((p.channels,), trainable)
                elif isinstance(p, Dense):
                    params[f"{p.name}.weight"] = ParamSpec((p.out_features, p.in_features), True)
                    params[f"{p.name}.bias"] = ParamSpec((p.out_features,), True)
    return params


def param_counts(num_classes: int = 10, in_channels: int = 1) -> dict[str, tuple[int, int]]:
    """Stage -> (trainable, non-trainable) parameter counts, plus ``"total"``."""
    counts = {name: [0, 0] for name in STAGE_NAMES}
    for name, p in parameters(num_classes, in_channels).items():
        size = 1
        for d in p.shape:
            size *= d
        counts[name.split(".")[0]][0 if p.trainable else 1] += size
    counts["total"] = [sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())]
    return {k: (v[0], v[1]) for k, v in counts.items()}


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def check_input(input_shape: tuple[int, int, int], in_channels: int) -> None:
    """Raise ``ValueError`` naming what was expected if ``(C, H, W)`` cannot enter the net."""
    if len(input_shape) != 3:
        raise ValueError(f"expected an input of shape (channels, height, width) = "
                         f"({in_channels}, H, W), got {tuple(input_shape)}")
    c, h, w = input_shape
    if c != in_channels:
        raise ValueError(f"the network expects {in_channels} input channel(s), got {c} "
                         f"(input shape {tuple(input_shape)}, NCHW convention)")
    if h <= 0 or w <= 0:
        raise ValueError(f"height and width must be positive, got {h}x{w}")


def _apply(layer, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """Output shape (C, H, W) or (F,) of one layer, and its forward MACs."""
    if isinstance(layer, Residual):
        main, macs = shape, 0
        for p in layer.layers():
            if isinstance(p, Conv):
                out, m = _apply(p, shape if p.name.endswith("conv3") else main)
                main = out if not p.name.endswith("conv3") else main
                macs += m
        return main, macs
    if isinstance(layer, Conv):
        _, h, w = shape
        h, w = (_out_size(s, layer.kernel, layer.stride, layer.padding) for s in (h, w))
        if h <= 0 or w <= 0:
            raise ValueError(f"input too small: {layer.name} would output {h}x{w}")
        return (layer.out_channels, h, w), layer.out_channels * h * w * layer.in_channels * layer.kernel ** 2
    if isinstance(layer, MaxPool):
        c, h, w = shape
        h, w = (_out_size(s, layer.kernel, layer.stride, layer.padding) for s in (h, w))
        if h <= 0 or w <= 0:
            raise ValueError(f"input too small: {layer.name} would output {h}x{w}")
        return (c, h, w), 0
    if isinstance(layer, Dense):
        return (layer.out_features,), layer.in_features * layer.out_features
    if layer == "avgpool":
        return (shape[0], 1, 1), 0
    if layer == "flatten":
        size = 1
        for d in shape:
            size *= d
        return (size,), 0
    return shape, 0  # BatchNorm, ReLU


def _layer_name(stage: str, layer) -> str:
    return f"{stage}.{layer}" if isinstance(layer, str) else layer.name


def walk(input_shape: tuple[int, int, int] = (1, 224, 224), num_classes: int = 10
         ) -> list[tuple[str, tuple[int, ...], int]]:
    """Rows ``(layer, output shape without batch, MACs)``: the layers of b1 and the head one by
    one, the stages b2..b5 as wholes, as the chapter's shape table shows them."""
    net = resnet18_spec(num_classes, input_shape[0] if len(input_shape) == 3 else 1)
    check_input(tuple(input_shape), input_shape[0])
    rows, shape = [], tuple(input_shape)
    for stage, layers in net.items():
        if stage in ("b1", "head"):
            for layer in layers:
                shape, macs = _apply(layer, shape)
                rows.append((_layer_name(stage, layer), shape, macs))
        else:
            macs = 0
            for block in layers:
                shape, m = _apply(block, shape)
                macs += m
            rows.append((stage, shape, macs))
    return rows


def stage_shapes(input_shape: tuple[int, int, int] = (1, 224, 224), num_classes: int = 10
                 ) -> list[tuple[str, tuple[int, ...]]]:
    """Output shape after each top-level stage (what ``for layer in net`` shows)."""
    rows = walk(input_shape, num_classes)
    ends = {"b1.pool": "b1", "b2": "b2", "b3": "b3", "b4": "b4", "b5": "b5", "head.fc": "head"}
    return [(ends[name], shape) for name, shape, _ in rows if name in ends]


def forward_macs(input_shape: tuple[int, int, int] = (1, 96, 96), num_classes: int = 10) -> int:
    """Multiply-accumulates of one forward pass of one image (convolutions and dense)."""
    return sum(macs for _, _, macs in walk(input_shape, num_classes))


def training_flops(input_shape: tuple[int, int, int] = (1, 96, 96), num_classes: int = 10) -> int:
    """FLOPs of one training step per image: forward + backward ~ 3 x forward, 2 FLOPs per MAC."""
    return 6 * forward_macs(input_shape, num_classes)


def residual_output_shape(input_shape: tuple[int, int, int], num_channels: int,
                          use_1x1conv: bool = False, strides: int = 1) -> tuple[int, int, int]:
    """Output (C, H, W) of ``Residual(num_channels, use_1x1conv, strides)``; raises
    ``ValueError`` when the block cannot add its input to its output."""
    c, h, w = input_shape
    if not use_1x1conv and (c != num_channels or strides != 1):
        raise ValueError(f"Residual({num_channels}, use_1x1conv=False, strides={strides}) cannot "
                         f"add an input of {c} channel(s) at stride {strides}: it needs "
                         f"{num_channels} input channels and strides=1, or use_1x1conv=True")
    out, _ = _apply(Residual("r", c, num_channels, use_1x1conv, strides), tuple(input_shape))
    return out


def batchnorm_sizes(input_hw: tuple[int, int], num_classes: int = 10, in_channels: int = 1
                    ) -> dict[str, int]:
    """BatchNorm name -> number of positions per channel (H*W of its input) for one image;
    times the batch size this is the ``n`` of the running-variance update ``n / (n - 1)``."""
    sizes, shape = {}, (in_channels, *input_hw)
    for stage in resnet18_spec(num_classes, in_channels).values():
        for layer in stage:
            if isinstance(layer, Residual):
                shape, _ = _apply(layer, shape)
                for p in layer.layers():
                    if isinstance(p, BatchNorm):
                        sizes[p.name] = shape[1] * shape[2]
            elif isinstance(layer, BatchNorm):
                sizes[layer.name] = shape[1] * shape[2]
            elif layer != "flatten" and not isinstance(layer, Dense):
                shape, _ = _apply(layer, shape)
    return sizes
