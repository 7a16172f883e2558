"""The ResNet family written once, framework-free: ``d2lres.spec`` interpreted into a backend's
layers. A backend passes in its :class:`Kit` (convolution, BatchNorm, ReLU, pooling, dense,
sequential), as torchvision passes its norm layer and Flax's examples their ``conv``/``norm``/``act``;
this module decides what is built from them: the stem and the head layer by layer, the stages of
blocks (the chapter's own ``resnet_block`` for its ResNet-18), each block's paths and shortcut
(:func:`build_block`, :func:`run_block`), the family's blocks (:class:`Bottleneck`,
:class:`PreActResidual`, :class:`PreActBottleneck`, d2l 1.0's :class:`ResNeXtBlock`), the depth
factories (:class:`Factories`) and the shape walk (:func:`shape_walk`). A new block type is a new
``spec.Block`` kind and, where it needs a layer no kit has, one kit entry per backend.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import inputs, spec
from ..errors import UserTypeError, UserValueError
from . import compat


@dataclass(frozen=True)
class Kit:
    """A backend's layers, each built from the spec entry it implements. A layer whose input
    channels are 0 in the spec (a block built without ``in_channels``) infers them on its first call."""
    conv: Callable        # spec.Conv -> convolution (symmetric zero padding, PyTorch's; spec.Conv.groups)
    batch_norm: Callable  # channels (0: inferred) -> BatchNorm with spec.BN_EPS and spec.BN_MOMENTUM
    relu: Callable        # () -> a ReLU the framework's sequential container holds
    max_pool: Callable    # spec.MaxPool -> max-pool padded with -inf
    avg_pool: Callable    # () -> global average pooling to 1x1
    flatten: Callable     # () -> flatten
    dense: Callable       # spec.Dense -> dense layer
    sequential: Callable  # ([(name, layer), ...], stage name) -> the framework's sequential container
    children: Callable    # container -> its layers, in order


def layer(kit: Kit, entry):
    """The backend's layer of one entry of the stem or the head."""
    if isinstance(entry, spec.Conv):
        return kit.conv(entry)
    if isinstance(entry, spec.BatchNorm):
        return kit.batch_norm(entry.channels)
    if isinstance(entry, spec.MaxPool):
        return kit.max_pool(entry)
    if isinstance(entry, spec.Dense):
        return kit.dense(entry)
    return {"relu": kit.relu, "avgpool": kit.avg_pool, "flatten": kit.flatten}[entry]()


def stages(kit: Kit, Block, resnet_block, arch: spec.Arch, num_classes: int, in_channels: int) -> dict:
    """Stage name (``b1`` .. ``b5``, ``head``) -> the backend's container of that stage of ``arch``:
    the stem and the head layer by layer under their local names (``conv``, ``bn``, ``fc``, ...), the
    stages of ``Block``; the chapter's ResNet-18 takes its stages from the chapter's ``resnet_block``."""
    net_spec = spec.resnet_spec(arch, num_classes, in_channels)  # validates the arguments
    out = {}
    for name, entries in net_spec.items():
        if name in ("b1", "head"):
            out[name] = kit.sequential([(e if isinstance(e, str) else e.local, layer(kit, e)) for e in entries], name)
        elif arch == spec.Arch():
            first = entries[0]
            blocks = kit.children(resnet_block(first.out_channels, len(entries), name == "b2",
                                               in_channels=first.in_channels))
            out[name] = kit.sequential([(str(i), b) for i, b in enumerate(blocks)], name)
        else:
            out[name] = kit.sequential([(str(i), Block(b)) for i, b in enumerate(entries)], name)
    return out


# --------------------------------------------------------------------------- the chapter's cells

def chapter_residual(cls, *, method: str, shape, build):
    """``cls`` (a backend's ``Residual``, the chapter's ``#@save`` cell as the book writes it) with
    the library's duties around it: d2l 0.17's signature refused (``compat.check_residual``),
    ``in_channels`` (``build(block, in_channels)`` builds the layers now), and an input the block
    cannot add to its output refused before it runs (``method`` is its forward method,
    ``shape(X)`` an input's ``(C, H, W)``, or None where it is unknown). Changed in place: the
    class's source stays the cell's."""
    init, run = cls.__init__, getattr(cls, method)

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 in_channels: int | None = None):
        compat.check_residual(cls.__name__, num_channels, use_1x1conv, strides)
        init(self, num_channels, use_1x1conv, strides)
        self.num_channels, self.use_1x1conv, self.strides = num_channels, use_1x1conv, strides
        if in_channels:
            build(self, in_channels)

    def forward(self, X, *args, **kwargs):
        input_shape = shape(X)
        if not self.use_1x1conv and input_shape is not None and input_shape[0] != self.num_channels:
            spec.residual_output_shape(input_shape, self.num_channels, False, self.strides)
        return run(self, X, *args, **kwargs)
    __init__.__qualname__, __init__.__doc__ = f"{cls.__qualname__}.__init__", init.__doc__
    forward.__name__, forward.__qualname__ = method, f"{cls.__qualname__}.{method}"
    forward.__signature__ = inspect.signature(run)  # what a framework reads of it (Keras: has it `training`?)
    cls.__init__ = __init__
    setattr(cls, method, forward)
    return cls


def chapter_resnet_block(function, build):
    """``function`` (a backend's ``resnet_block``, the chapter's cell) with d2l 0.17's form
    refused (``compat.checked_resnet_block``) and ``in_channels``: ``build(stage, in_channels)``
    builds the stage's layers now. ``inspect.getsource`` of the result is the cell's."""
    def resnet_block(num_channels: int, num_residuals: int, first_block: bool = False, *,
                     in_channels: int | None = None):
        stage = function(num_channels, num_residuals, first_block)
        if in_channels:
            build(stage, in_channels)
        return stage
    resnet_block.__module__, resnet_block.__doc__ = function.__module__, function.__doc__
    checked = compat.checked_resnet_block(resnet_block)
    checked.__signature__, checked.__wrapped__ = inspect.signature(resnet_block), function
    return checked


# --------------------------------------------------------------------------- blocks

def build_block(module, block: spec.Block, kit: Kit) -> None:
    """Give ``module`` (a backend's ``Block``) the layers of ``block`` under their canonical local
    names (``conv1``, ``bn1``, ...) and the paths :func:`run_block` takes."""
    module.spec = block
    module.main_path, module.shortcut_path = tuple(block.main_path()), tuple(block.shortcut_path())
    for p in block.layers():
        setattr(module, p.local, kit.conv(p) if isinstance(p, spec.Conv) else kit.batch_norm(p.channels))


def check_block_input(module, channels: int) -> None:
    """Refuse an input that a block without a projection cannot add to its output."""
    b = module.spec
    if not b.projection and channels != b.out_channels:
        raise UserValueError(f"{type(module).__name__}({b.out_channels}, use_1x1conv=False) cannot add an input "
                             f"of {channels} channel(s): it needs {b.out_channels}, or use_1x1conv=True")


def run_block(module, X, relu, call=None):
    """The forward pass of a block :func:`build_block` built: version 1 ``relu(main(X) +
    shortcut(X))``; version 2 both paths from the shared pre-activation ``relu(bn1(X))``, no ReLU
    after the sum. ``call(layer, X)`` runs one layer (default ``layer(X)``)."""
    call = call or (lambda f, X: f(X))

    def run(path, X):
        for step in path:
            X = relu(X) if step == "relu" else call(getattr(module, step), X)
        return X
    main, shortcut = module.main_path, module.shortcut_path
    if module.spec.version == 1:
        return relu(run(main, X) + run(shortcut, X))
    P = run(main[:2], X)  # bn1, relu: the pre-activation both paths share
    return run(main[2:], P) + (run(shortcut, P) if module.spec.projection else X)


class SpecBlock:
    """The constructor of the family's blocks (the contract's), before a backend's ``Block`` in
    their bases: the arguments are checked, then the ``spec.Block`` of the subclass's ``kind``
    and ``version`` is built."""
    kind: str
    version: int

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 in_channels: int | None = None, bias: bool = True, shortcut_bn: bool = False,
                 stride_on_3x3: bool = False):
        compat.check_residual(type(self).__name__, num_channels, use_1x1conv, strides)
        super().__init__(spec.Block("", self.kind, self.version, in_channels or 0, num_channels, strides,
                                    use_1x1conv, bias, shortcut_bn and self.version == 1, stride_on_3x3))


class Bottleneck(SpecBlock):
    """conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN plus the shortcut, then ReLU (version 1).
    ``num_channels`` is the output (the inner width is ``num_channels // 4``)."""
    kind, version = "bottleneck", 1


class PreActResidual(SpecBlock):
    """Pre-activation basic block (version 2): BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut
    (projected from the pre-activated input when ``use_1x1conv``); no ReLU after the sum."""
    kind, version = "basic", 2


class PreActBottleneck(SpecBlock):
    """Pre-activation bottleneck (version 2): (BN-ReLU-conv) x 3 with 1x1, 3x3, 1x1 kernels."""
    kind, version = "bottleneck", 2


class ResNeXtBlock:
    """d2l 1.0's ResNeXt block: conv1x1-BN-ReLU, a grouped conv3x3 (the stride on it)-BN-ReLU,
    conv1x1-BN, plus the shortcut (a 1x1 convolution with BatchNorm when ``use_1x1conv``), then ReLU.

    ``groups`` is d2l's: the *width of each group* (channels per group), not their number. The
    3x3 convolution has ``bot_channels // groups`` groups, where ``bot_channels =
    round(num_channels * bot_mul)``: ``ResNeXtBlock(32, 16, 1)`` has 2 groups of 16 channels. The
    paper's and torchvision's cardinality C with d channels per group (``32x4d``) is
    ``ResNeXtBlock(num_channels, groups=d, bot_mul=C * d / num_channels)``. A ``bot_channels``
    that ``groups`` does not divide is refused."""
    kind, version = "resnext", 1

    def __init__(self, num_channels: int, groups: int, bot_mul: float, use_1x1conv: bool = False,
                 strides: int = 1, *, in_channels: int | None = None, bias: bool = True):
        name = type(self).__name__
        for key, value in (("num_channels", num_channels), ("groups", groups), ("strides", strides)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise UserTypeError(f"{name}: {key} must be a positive integer, got {value!r}")
        if isinstance(bot_mul, bool) or not isinstance(bot_mul, (int, float, np.integer, np.floating)) \
                or not bot_mul > 0:
            raise UserTypeError(f"{name}: bot_mul must be a positive number, got {bot_mul!r}")
        if not isinstance(use_1x1conv, (bool, np.bool_)):
            raise UserTypeError(f"{name}: use_1x1conv must be True or False, got {use_1x1conv!r}")
        bot = int(round(num_channels * bot_mul))
        if bot < groups or bot % groups:
            raise UserValueError(f"{name}({num_channels}, groups={groups}, bot_mul={bot_mul}): its {bot} bottleneck "
                                 f"channels (round(num_channels * bot_mul)) are not a positive multiple of "
                                 f"groups={groups}, the "
                                 f"width of each group (d2l's groups: the 3x3 convolution has bot_channels // groups "
                                 f"groups); choose groups that divide {bot}")
        super().__init__(spec.Block("", self.kind, self.version, in_channels or 0, num_channels, strides,
                                    bool(use_1x1conv), bias, True, True, bot, bot // groups))


# --------------------------------------------------------------------------- factories

class Factories:
    """A backend's ``resnet`` and ``resnet18`` .. ``resnet152`` (its public functions are these
    bound methods), each building the backend's ``ResNet``, which initialises the network."""

    def __init__(self, ResNet):
        self.ResNet = ResNet

    def resnet(self, depth=18, version=1, num_classes=10, in_channels=1, flavour=None, *, device=None):
        """Any variant of ``spec.ARCHS`` (``depth`` may also be a name such as ``"resnet50"``),
        initialised with d2lres's scheme; ``flavour=None``: the name's own (``spec.get_arch``).
        ``resnet(18)`` is the chapter's network."""
        return self.ResNet(num_classes, in_channels, arch=spec.get_arch(depth, version, flavour), device=device)

    def resnet18(self, num_classes=10, in_channels=1, *, version=1, flavour="chapter", device=None):
        """ResNet-18 (version 1 or 2, flavour chapter or torchvision); version 1, chapter: the chapter's network."""
        return self.resnet(18, version, num_classes, in_channels, flavour, device=device)

    def resnet34(self, num_classes=10, in_channels=1, *, version=1, flavour="chapter", device=None):
        """ResNet-34 (version 1 or 2, flavour chapter or torchvision)."""
        return self.resnet(34, version, num_classes, in_channels, flavour, device=device)

    def resnet50(self, num_classes=10, in_channels=1, *, version=1, flavour="chapter", device=None):
        """ResNet-50 (version 1 or 2, flavour chapter or torchvision)."""
        return self.resnet(50, version, num_classes, in_channels, flavour, device=device)

    def resnet101(self, num_classes=10, in_channels=1, *, version=1, flavour="chapter", device=None):
        """ResNet-101 (version 1 or 2, flavour chapter or torchvision)."""
        return self.resnet(101, version, num_classes, in_channels, flavour, device=device)

    def resnet152(self, num_classes=10, in_channels=1, *, version=1, flavour="chapter", device=None):
        """ResNet-152 (version 1 or 2, flavour chapter or torchvision)."""
        return self.resnet(152, version, num_classes, in_channels, flavour, device=device)

    def all(self) -> tuple:
        """``(resnet, resnet18, resnet34, resnet50, resnet101, resnet152)``."""
        return self.resnet, self.resnet18, self.resnet34, self.resnet50, self.resnet101, self.resnet152


# --------------------------------------------------------------------------- the shape walk

@dataclass(frozen=True)
class Walker:
    """How a backend runs a shape walk: ``zeros((C, H, W))`` an input of one image in its layout,
    ``call(layer, X)`` one layer or stage, ``shape(X)`` the output's shape without batch (NCHW),
    ``mode()`` a context in which nothing is learned (eval mode, no gradients), ``children(stage)``
    a stage's layers in order."""
    zeros: Callable
    call: Callable
    shape: Callable
    mode: Callable
    children: Callable


def shape_walk(net, input_shape, walker: Walker) -> list[tuple[str, tuple[int, ...]]]:
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them: b1's and
    the head's layers one by one, the stages b2..b5 as wholes. A network without a spec (the
    reader's own) gets one row per child ``(class or function name, shape)``, as the chapter prints."""
    if not spec.is_d2lres_net(net):
        shape = tuple(input_shape)
        if len(shape) != 3 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape):
            raise UserValueError(f"expected an input shape (channels, height, width) of positive integers, "
                                 f"got {shape}")
        X, rows = walker.zeros(shape), []
        with walker.mode():
            for child in walker.children(net):
                X = walker.call(child, X)
                rows.append((getattr(child, "__name__", None) or type(child).__name__, walker.shape(X)))
        return rows
    X, rows = walker.zeros(inputs.check_shape(input_shape, net.in_channels)), []
    net_spec = spec.resnet_spec(net.arch, net.num_classes, net.in_channels)
    with walker.mode():
        for stage_name, stage in zip(spec.STAGE_NAMES, net):
            if stage_name in ("b1", "head"):
                for entry, child in zip(net_spec[stage_name], walker.children(stage)):
                    X = walker.call(child, X)
                    rows.append((spec.layer_name(stage_name, entry), walker.shape(X)))
            else:
                X = walker.call(stage, X)
                rows.append((stage_name, walker.shape(X)))
    return rows
