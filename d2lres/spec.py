"""Framework-free description of the chapter's ResNet-18 and of the ResNet family around it.

Every backend builds the same network; this module says what that network is without a
framework: its layers with canonical parameter names (the names of the neutral weights file,
in PyTorch's layout: convolutions OIHW, dense ``(out, in)``), the output shape of every layer
for any input size (NCHW convention), parameter counts per stage (trainable and BatchNorm
statistics apart) and forward multiply-accumulates. The tests hold each backend against it.

The family (the chapter's exercises): :data:`ARCHS` is the table of the ResNet paper (He et al.
2015, Table 1) -- depths 18 and 34 of basic blocks, 50, 101 and 152 of bottleneck blocks
(expansion 4) -- each in version 1 (post-activation, as the chapter) and version 2
(pre-activation, "BN, ReLU, convolution", He et al. 2016), and in two flavours:

- ``"chapter"``: convolutions with biases, a bare 1x1 convolution on the projection shortcut, the
  bottleneck's stride on its first 1x1 convolution (the original paper);
- ``"torchvision"``: bias-free convolutions, BatchNorm after the projection shortcut (version 1),
  the bottleneck's stride on its 3x3 convolution (torchvision's ``resnet*``, "ResNet v1.5").

Every function that describes the network takes ``arch`` (an :class:`Arch`, a name such as
``"resnet50"`` or a depth); left out, it is the chapter's ResNet-18. Canonical names inside a
block: version 1 ``conv1, bn1, conv2, bn2[, conv3, bn3]`` on the main path, then the shortcut
(``conv3[, bn3]`` in a basic block, ``conv4[, bn4]`` in a bottleneck); version 2 ``bn1, conv1,
bn2, conv2[, bn3, conv3]`` then the shortcut convolution; version 2 adds ``head.bn`` (the final
BN-ReLU) before the pooling.

ResNeXt (Xie et al. 2017; the 1.0 edition's last section), version 1 only: :data:`RESNEXT`. Its
block (kind ``"resnext"``) is d2l 1.0's ``ResNeXtBlock``: 1x1, a grouped 3x3 (the stride on it), 1x1,
BatchNorm after each, the projection shortcut a 1x1 convolution with BatchNorm; names as the
bottleneck's. The flavours differ only in the biases (``chapter``: every convolution biased, as d2l's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .errors import UserTypeError, UserValueError

STAGE_NAMES = ("b1", "b2", "b3", "b4", "b5", "head")

#: One BatchNorm setting for every backend: PyTorch's. ``momentum`` is the weight of the
#: new batch in the running average (Keras/MXNet call ``1 - momentum`` their momentum).
BN_EPS = 1e-5
BN_MOMENTUM = 0.1

#: The ResNet paper's Table 1: depth -> (block kind, blocks per stage b2..b5).
ARCHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
         101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}
#: Width of each stage (a basic block's channels, a bottleneck's inner channels).
WIDTHS = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}
VERSIONS = (1, 2)
FLAVOURS = ("chapter", "torchvision")
#: ResNeXt: name -> (depth, cardinality, group width, default flavour); the depth's stage plan of
#: :data:`ARCHS` (ResNet-18's stages of 64..512 channels, ResNet-50's and -101's of 256..2048).
#: Cardinality > 0: torchvision's ``resnext<depth>_<C>x<d>d`` (C groups in every 3x3, each ``d``
#: channels wide in b2 and twice as wide per stage). Cardinality 0: d2lres's ``resnext18``, not a
#: published network: the chapter's ResNet-18 stem and stages with d2l 1.0's ``ResNeXtBlock(c,
#: groups=16, bot_mul=1)``, groups 16 channels wide (4, 8, 16, 32 of them in b2..b5).
RESNEXT = {"resnext18": (18, 0, 16, "chapter"), "resnext50_32x4d": (50, 32, 4, "torchvision"),
           "resnext101_32x8d": (101, 32, 8, "torchvision"), "resnext101_64x4d": (101, 64, 4, "torchvision")}
ARCH_NAMES = tuple(f"resnet{d}" for d in ARCHS) + tuple(RESNEXT)


@dataclass(frozen=True)
class Arch:
    """One entry of the family: depth (a key of :data:`ARCHS`), version 1 or 2, flavour; a ResNeXt
    (``group_width`` > 0) has ``cardinality`` and ``group_width`` as :data:`RESNEXT` gives them."""
    depth: int = 18
    version: int = 1
    flavour: str = "chapter"
    cardinality: int = 0
    group_width: int = 0

    @property
    def resnext(self) -> bool:
        return self.group_width > 0

    @property
    def block(self) -> str:
        return "resnext" if self.resnext else ARCHS[self.depth][0]

    @property
    def stages(self) -> tuple[tuple[int, int], ...]:
        """``(number of blocks, output channels)`` of b2..b5."""
        e = EXPANSION[ARCHS[self.depth][0]]
        return tuple((n, w * e) for n, w in zip(ARCHS[self.depth][1], WIDTHS))

    def groups(self, stage: int, out_channels: int) -> tuple[int, int]:
        """A ResNeXt block's ``(bottleneck channels, groups of its 3x3)`` in stage ``stage`` (0: b2)."""
        if self.cardinality:
            return self.cardinality * self.group_width * 2 ** stage, self.cardinality
        return out_channels, out_channels // self.group_width

    @property
    def name(self) -> str:
        if not self.resnext:
            return f"resnet{self.depth}"
        return f"resnext{self.depth}" + (f"_{self.cardinality}x{self.group_width}d" if self.cardinality else "")

    def __str__(self) -> str:
        if self.resnext:
            return (f"ResNeXt-{self.depth}" + (f" {self.cardinality}x{self.group_width}d" if self.cardinality else "")
                    + ("" if self.flavour == "chapter" else f" ({self.flavour})"))
        return (f"ResNet-{self.depth}" + (" v2" if self.version == 2 else "")
                + ("" if self.flavour == "chapter" else f" ({self.flavour})"))


def get_arch(arch=None, version: int | None = None, flavour: str | None = None) -> Arch:
    """An :class:`Arch` from an ``Arch``, a name (``"resnet50"``, ``"ResNet-50"``, ``"50"``,
    ``"resnext50_32x4d"``) or a depth; ``version`` / ``flavour`` override (a ResNeXt name's default
    flavour is :data:`RESNEXT`'s). Unknown names raise ``ValueError`` listing the known ones."""
    if isinstance(arch, Arch):
        base = arch
    elif isinstance(arch, str) and arch.lower().replace("-", "_") in RESNEXT:
        depth, cardinality, width, default = RESNEXT[arch.lower().replace("-", "_")]
        base = Arch(depth, 1, default, cardinality, width)
    else:
        depth = 18 if arch is None else arch
        if isinstance(depth, str):
            key = depth.lower().replace("-", "").replace("_", "")
            key = key[len("resnet"):] if key.startswith("resnet") else key
            depth = int(key) if key.isdigit() else None
        if isinstance(depth, bool) or depth not in ARCHS:
            raise UserValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCH_NAMES)}")
        base = Arch(depth)
    version = base.version if version is None else version
    flavour = base.flavour if flavour is None else flavour
    if version not in VERSIONS:
        raise UserValueError(f"unknown version {version!r}; known: 1 (post-activation, the chapter's), "
                             f"2 (pre-activation)")
    if flavour not in FLAVOURS:
        raise UserValueError(f"unknown flavour {flavour!r}; known: {', '.join(FLAVOURS)}")
    if base.resnext and version != 1:
        raise UserValueError(f"{base.name} has version 1 only (post-activation blocks, as d2l's ResNeXtBlock)")
    return Arch(base.depth, version, flavour, base.cardinality, base.group_width)


def all_archs(flavours=FLAVOURS) -> list[Arch]:
    """Every entry of the table: each depth, version, flavour."""
    return [Arch(d, v, f) for f in flavours for v in VERSIONS for d in ARCHS]


def resnext_archs() -> list[Arch]:
    """The ResNeXt entries of :data:`RESNEXT`, each in its default flavour."""
    return [get_arch(name) for name in RESNEXT]


class _Named:
    """A layer's ``name`` is canonical (``b2.0.conv1``); ``local`` is its name inside its block
    (``conv1``), the attribute every backend's block gives it."""

    @property
    def local(self) -> str:
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Conv(_Named):
    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    bias: bool = True
    groups: int = 1  # the weights are (out, in // groups, kernel, kernel)


@dataclass(frozen=True)
class BatchNorm(_Named):
    name: str
    channels: int


@dataclass(frozen=True)
class Dense(_Named):
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class MaxPool(_Named):
    name: str
    kernel: int = 3
    stride: int = 2
    padding: int = 1


@dataclass(frozen=True)
class Block:
    """Any block of the family. ``out_channels`` is what the block outputs (a bottleneck's
    inner width is ``out_channels // 4``, a ResNeXt block's ``bottleneck``); ``projection``: a
    strided 1x1 convolution on the shortcut (needed when the stride or the channel count changes);
    ``groups``: a ResNeXt block's groups in its 3x3 convolution."""
    name: str
    kind: str  # "basic" | "bottleneck" | "resnext"
    version: int
    in_channels: int
    out_channels: int
    strides: int = 1
    projection: bool = False
    bias: bool = True
    shortcut_bn: bool = False
    stride_on_3x3: bool = False
    bottleneck: int = 0
    groups: int = 1

    @property
    def width(self) -> int:
        return self.bottleneck if self.kind == "resnext" else self.out_channels // EXPANSION[self.kind]

    @property
    def shortcut_name(self) -> str:
        return "conv3" if self.kind == "basic" else "conv4"

    def main(self) -> list:
        """The main path, in order (``"relu"`` between layers; the final ReLU/sum not listed)."""
        n, w, b, s = self.name, self.width, self.bias, self.strides
        if self.kind == "basic":
            convs = [Conv(f"{n}.conv1", self.in_channels, w, 3, s, 1, b), Conv(f"{n}.conv2", w, w, 3, 1, 1, b)]
        else:
            s1, s3 = (1, s) if self.stride_on_3x3 or self.kind == "resnext" else (s, 1)
            convs = [Conv(f"{n}.conv1", self.in_channels, w, 1, s1, 0, b),
                     Conv(f"{n}.conv2", w, w, 3, s3, 1, b, self.groups),
                     Conv(f"{n}.conv3", w, self.out_channels, 1, 1, 0, b)]
        out = []
        for i, conv in enumerate(convs, 1):
            bn = BatchNorm(f"{n}.bn{i}", conv.in_channels if self.version == 2 else conv.out_channels)
            out += [bn, "relu", conv] if self.version == 2 else [conv, bn] + (["relu"] if i < len(convs) else [])
        return out

    def shortcut(self) -> list:
        """The projection shortcut (empty: identity). Version 2 takes it from ``relu(bn1(X))``."""
        if not self.projection:
            return []
        n, k = self.name, self.shortcut_name
        out = [Conv(f"{n}.{k}", self.in_channels, self.out_channels, 1, self.strides, 0, self.bias)]
        if self.shortcut_bn or self.kind == "resnext":
            out.append(BatchNorm(f"{n}.bn{k[-1]}", self.out_channels))
        return out

    def layers(self) -> list:
        """Layers with parameters, in canonical order."""
        return [p for p in self.main() + self.shortcut() if not isinstance(p, str)]

    def main_path(self) -> list[str]:
        """:meth:`main` as the block runs it: ``"relu"`` or a layer's ``local`` name."""
        return [p if isinstance(p, str) else p.local for p in self.main()]

    def shortcut_path(self) -> list[str]:
        """:meth:`shortcut` as local names."""
        return [p.local for p in self.shortcut()]


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    trainable: bool


def resnet_spec(arch=None, num_classes: int = 10, in_channels: int = 1) -> dict[str, list]:
    """Stage name -> list of layers of any variant (``"relu"``, ``"flatten"`` and ``"avgpool"``
    are parameter-free). The first block of each stage but b2 halves the size; a stage's first
    block projects its shortcut when the stride or the channel count changes."""
    arch = get_arch(arch)
    _check_positive(num_classes=num_classes, in_channels=in_channels)
    tv = arch.flavour == "torchvision"
    net = {"b1": [Conv("b1.conv", in_channels, 64, 7, 2, 3, not tv), BatchNorm("b1.bn", 64), "relu",
                  MaxPool("b1.pool")]}
    channels = 64
    for k, (num_blocks, out_channels) in enumerate(arch.stages):
        name, blocks = f"b{k + 2}", []
        for i in range(num_blocks):
            strides = 2 if i == 0 and k > 0 else 1
            projection = i == 0 and (strides != 1 or channels != out_channels)
            bottleneck, groups = arch.groups(k, out_channels) if arch.resnext else (0, 1)
            blocks.append(Block(f"{name}.{i}", arch.block, arch.version, channels, out_channels, strides,
                                projection, bias=not tv, shortcut_bn=tv and arch.version == 1,
                                stride_on_3x3=tv, bottleneck=bottleneck, groups=groups))
            channels = out_channels
        net[name] = blocks
    head = [BatchNorm("head.bn", channels), "relu"] if arch.version == 2 else []
    net["head"] = head + ["avgpool", "flatten", Dense("head.fc", channels, num_classes)]
    return net


def resnet18_spec(num_classes: int = 10, in_channels: int = 1) -> dict[str, list]:
    """The chapter's ResNet-18: stage name -> list of layers."""
    return resnet_spec(None, num_classes, in_channels)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise UserValueError(f"{key} must be a positive integer, got {value!r}")


def primitives(layer) -> Iterator:
    """The layers with parameters of one entry of :func:`resnet_spec` (a block's, in canonical
    order; any other layer is itself)."""
    if isinstance(layer, Block):
        yield from layer.layers()
    else:
        yield layer


def parameters(num_classes: int = 10, in_channels: int = 1, arch=None) -> dict[str, ParamSpec]:
    """Canonical parameter names and shapes, in the order the network uses them."""
    params: dict[str, ParamSpec] = {}
    for stage in resnet_spec(arch, num_classes, in_channels).values():
        for layer in stage:
            for p in primitives(layer):
                if isinstance(p, Conv):
                    params[f"{p.name}.weight"] = ParamSpec(
                        (p.out_channels, p.in_channels // p.groups, p.kernel, p.kernel), True)
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


def param_counts(num_classes: int = 10, in_channels: int = 1, arch=None) -> dict[str, tuple[int, int]]:
    """Stage -> (trainable, non-trainable) parameter counts, plus ``"total"``."""
    counts = {name: [0, 0] for name in STAGE_NAMES}
    for name, p in parameters(num_classes, in_channels, arch).items():
        size = 1
        for d in p.shape:
            size *= d
        counts[name.split(".")[0]][0 if p.trainable else 1] += size
    counts["total"] = [sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())]
    return {k: (v[0], v[1]) for k, v in counts.items()}


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Outputs along one axis of a zero-padded convolution or pooling."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_taps(size: int, kernel: int, stride: int, padding: int) -> tuple[tuple[int, int, int, int], ...]:
    """Along one axis of a zero-padded convolution, the kernel taps that meet the input: for each,
    ``(tap, first output, number of outputs, first input)``; output ``first output + i`` reads input
    ``first input + i * stride``. Taps that meet only padding are left out, so a backend can compute
    the convolution as one matmul per pair of taps without multiplying the padding's zeros."""
    out, taps = conv_out_size(size, kernel, stride, padding), []
    for tap in range(kernel):
        inside = [i for i in range(out) if 0 <= i * stride - padding + tap < size]
        if inside:
            taps.append((tap, inside[0], len(inside), inside[0] * stride - padding + tap))
    return tuple(taps)


def conv_is_dense(size: int, kernel: int, stride: int, padding: int) -> bool:
    """Whether, along one axis, every output of a zero-padded convolution reads every input
    position through some kernel tap: the convolution unrolled into a matrix (input positions by
    output positions) then has no entry that is always zero, so one matmul with that matrix
    multiplies no padding."""
    out = conv_out_size(size, kernel, stride, padding)
    return out > 0 and sum(n for _, _, n, _ in conv_taps(size, kernel, stride, padding)) == size * out


def check_input(input_shape: tuple[int, int, int], in_channels: int) -> None:
    """Raise ``ValueError`` naming what was expected if ``(C, H, W)`` cannot enter the net."""
    if len(input_shape) != 3:
        raise UserValueError(f"expected an input of shape (channels, height, width) = "
                             f"({in_channels}, H, W), got {tuple(input_shape)}")
    c, h, w = input_shape
    if c != in_channels:
        raise UserValueError(f"the network expects {in_channels} input channel(s), got {c} "
                             f"(input shape {tuple(input_shape)}, NCHW convention)")
    if h <= 0 or w <= 0:
        raise UserValueError(f"height and width must be positive, got {h}x{w}")


def _apply(layer, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """Output shape (C, H, W) or (F,) of one layer, and its forward MACs."""
    if isinstance(layer, Block):
        main, macs = shape, 0
        for p in layer.main():
            main, m = _apply(p, main)
            macs += m
        for p in layer.shortcut():
            _, m = _apply(p, shape)
            macs += m
        return main, macs
    if isinstance(layer, Conv):
        _, h, w = shape
        h, w = (conv_out_size(s, layer.kernel, layer.stride, layer.padding) for s in (h, w))
        if h <= 0 or w <= 0:
            raise UserValueError(f"input too small: {layer.name} would output {h}x{w}")
        macs = layer.out_channels * h * w * layer.in_channels // layer.groups * layer.kernel ** 2
        return (layer.out_channels, h, w), macs
    if isinstance(layer, MaxPool):
        c, h, w = shape
        h, w = (conv_out_size(s, layer.kernel, layer.stride, layer.padding) for s in (h, w))
        if h <= 0 or w <= 0:
            raise UserValueError(f"input too small: {layer.name} would output {h}x{w}")
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


def layer_name(stage: str, layer) -> str:
    """The name a shape walk gives ``layer`` of ``stage``: its own, or ``"<stage>.<layer>"`` for
    a parameter-free one (``"head.flatten"``)."""
    return f"{stage}.{layer}" if isinstance(layer, str) else layer.name


def walk(input_shape: tuple[int, int, int] = (1, 224, 224), num_classes: int = 10, arch=None
         ) -> list[tuple[str, tuple[int, ...], int]]:
    """Rows ``(layer, output shape without batch, MACs)``: the layers of b1 and the head one by
    one, the stages b2..b5 as wholes, as the chapter's shape table shows them."""
    net = resnet_spec(arch, num_classes, input_shape[0] if len(input_shape) == 3 else 1)
    check_input(tuple(input_shape), input_shape[0])
    rows, shape = [], tuple(input_shape)
    for stage, layers in net.items():
        if stage in ("b1", "head"):
            for layer in layers:
                shape, macs = _apply(layer, shape)
                rows.append((layer_name(stage, layer), shape, macs))
        else:
            macs = 0
            for block in layers:
                shape, m = _apply(block, shape)
                macs += m
            rows.append((stage, shape, macs))
    return rows


def forward_macs(input_shape: tuple[int, int, int] = (1, 96, 96), num_classes: int = 10, arch=None) -> int:
    """Multiply-accumulates of one forward pass of one image (convolutions and dense)."""
    return sum(macs for _, _, macs in walk(input_shape, num_classes, arch))


def training_flops(input_shape: tuple[int, int, int] = (1, 96, 96), num_classes: int = 10, arch=None) -> int:
    """FLOPs of one training step per image: forward + backward ~ 3 x forward, 2 FLOPs per MAC."""
    return 6 * forward_macs(input_shape, num_classes, arch)


def residual_output_shape(input_shape: tuple[int, int, int], num_channels: int,
                          use_1x1conv: bool = False, strides: int = 1) -> tuple[int, int, int]:
    """Output (C, H, W) of ``Residual(num_channels, use_1x1conv, strides)``; raises
    ``ValueError`` when the block cannot add its input to its output."""
    c, h, w = input_shape
    if not use_1x1conv and (c != num_channels or strides != 1):
        raise UserValueError(f"Residual({num_channels}, use_1x1conv=False, strides={strides}) cannot "
                             f"add an input of {c} channel(s) at stride {strides}: it needs "
                             f"{num_channels} input channels and strides=1, or use_1x1conv=True")
    out, _ = _apply(Block("r", "basic", 1, c, num_channels, strides, projection=use_1x1conv), tuple(input_shape))
    return out


def batchnorm_sizes(input_hw: tuple[int, int], num_classes: int = 10, in_channels: int = 1, arch=None
                    ) -> dict[str, int]:
    """BatchNorm name -> number of positions per channel (H*W of its input) for one image;
    times the batch size this is the ``n`` of the running-variance update ``n / (n - 1)``."""
    sizes, shape = {}, (in_channels, *input_hw)

    def run(layers, shape):
        for p in layers:
            if isinstance(p, BatchNorm):
                sizes[p.name] = shape[1] * shape[2]
            elif p != "flatten" and not isinstance(p, Dense):
                shape, _ = _apply(p, shape)
        return shape

    for stage in resnet_spec(arch, num_classes, in_channels).values():
        for layer in stage:
            if isinstance(layer, Block):
                run(layer.shortcut(), shape)
                shape = run(layer.main(), shape)
            else:
                shape = run([layer], shape)
    return sizes


def table_rows(archs=None, sizes=(224, 96), num_classes: int = 1000, in_channels: int = 3) -> list[dict]:
    """One row per variant: parameters (trainable, BN statistics) and forward MACs at each size."""
    rows = []
    for arch in archs if archs is not None else all_archs():
        t, s = param_counts(num_classes, in_channels, arch)["total"]
        rows.append({"arch": arch, "trainable": t, "bn_stats": s,
                     "macs": {n: forward_macs((in_channels, n, n), num_classes, arch) for n in sizes}})
    return rows


def variants_markdown(sizes=(224, 96)) -> str:
    """The variants table of ``docs/variants.md`` (generated; a test checks the file is current)."""
    lines = ["# The ResNet variants", "",
             "Generated by `python -m d2lres.spec > docs/variants.md` from `d2lres/spec.py` (a test keeps it "
             "current). Every entry builds in `d2lres.torch`, `d2lres.tf`, `d2lres.mxnet` and `d2lres.jax` with "
             "`resnet(depth, version, num_classes, in_channels, flavour)` (a ResNeXt: `depth` is its name, "
             "`resnet(\"resnext50_32x4d\")`, flavour the name's own).", ""]
    for num_classes, in_channels, note in ((1000, 3, "3 input channels, 1000 classes (ImageNet)"),
                                           (10, 1, "1 input channel, 10 classes (Fashion-MNIST, the chapter)")):
        lines += [f"## {note}", "",
                  "| variant | version | flavour | trainable | BN statistics | "
                  + " | ".join(f"GMAC at {n}x{n}" for n in sizes) + " |",
                  "|---|---|---|--:|--:|" + "--:|" * len(sizes)]
        for r in table_rows(all_archs() + resnext_archs(), sizes, num_classes, in_channels):
            a = r["arch"]
            lines.append(f"| {a.name} | {a.version} | {a.flavour} | {r['trainable']:,} | {r['bn_stats']:,} | "
                         + " | ".join(f"{r['macs'][n] / 1e9:.3f}" for n in sizes) + " |")
        lines.append("")
    lines += ["MACs: multiply-accumulates of one forward pass of one image, convolutions and the dense "
              "layer (BatchNorm, ReLU, pooling and additions not counted).",
              "Flavours: `chapter` = convolutions with biases, bare 1x1 projection shortcut, bottleneck "
              "stride on its first 1x1; `torchvision` = bias-free convolutions, BatchNorm on the projection "
              "shortcut (version 1), bottleneck stride on its 3x3. Version 2 = pre-activation blocks and a "
              "final BN-ReLU before the pooling (`head.bn`).", "",
              "ResNeXt (version 1 only): d2l 1.0's `ResNeXtBlock` (1x1, grouped 3x3 with the stride, 1x1, BatchNorm "
              "after each; the 1x1 shortcut with BatchNorm); its flavours differ only in the biases. "
              "`resnext50_32x4d`, `resnext101_32x8d`, `resnext101_64x4d`: torchvision's (C groups of d channels in "
              "b2, twice as wide per stage). `resnext18` is d2lres's own, not a published network: the chapter's "
              "ResNet-18 stem and stages with `ResNeXtBlock(c, groups=16, bot_mul=1)` (groups of 16 channels). "
              "Grouped convolutions count `in // groups` input channels per output in their weights and MACs."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(variants_markdown(), end="")


# --------------------------------------------------------------------------- networks d2lres built

def is_d2lres_net(net) -> bool:
    """Whether ``net`` is a network d2lres built (it carries its spec)."""
    return isinstance(getattr(net, "arch", None), Arch) and all(
        isinstance(getattr(net, a, None), int) for a in ("in_channels", "num_classes"))


def spec_of(net) -> tuple[int | None, int | None, Arch | None]:
    """``(in_channels, num_classes, arch)`` of a d2lres network; ``(None, None, None)`` for any
    other (the input rules then check what needs no spec: see ``inputs.check_batch``)."""
    return (net.in_channels, net.num_classes, net.arch) if is_d2lres_net(net) else (None, None, None)


def require_d2lres_net(net, what: str, instead: str) -> None:
    """Raise ``TypeError`` unless ``net`` is a d2lres network: ``what`` needs its spec;
    ``instead`` is the framework's own way for any network."""
    if not is_d2lres_net(net):
        raise UserTypeError(f"{what} needs a network d2lres built (resnet18(), ResNet(...), resnet(depth, ...)): "
                            f"the neutral weights file names each weight after d2lres.spec's layers, and this "
                            f"{type(net).__name__} has no spec; for any network use {instead}")


def named_layers(net, children, what: str, instead: str):
    """``(canonical name, layer)`` for every layer with weights of the d2lres network ``net``, in
    the spec's order: its stages are iterated, ``children(stage)`` lists a stage's layers as the
    framework holds them, a block's layers are its attributes of their ``local`` names. ``what``
    and ``instead``: :func:`require_d2lres_net`'s message for any other network."""
    require_d2lres_net(net, what, instead)
    net_spec = resnet_spec(net.arch, net.num_classes, net.in_channels)
    for stage_name, stage in zip(STAGE_NAMES, net):
        for layer_spec, layer in zip(net_spec[stage_name], children(stage)):
            if isinstance(layer_spec, Block):
                for p in layer_spec.layers():
                    yield p.name, getattr(layer, p.local)
            elif isinstance(layer_spec, (Conv, BatchNorm, Dense)):
                yield layer_spec.name, layer
