"""The public API every backend package (``d2lres.torch``, ``.tf``, ``.mxnet``, ``.jax``) exports,
written once. Each stub below *is* the contract: its parameters (names, kinds, defaults) are
what the backend's name must have, and ``tests/test_api.py`` compares ``__all__`` and
``inspect.signature`` of every backend with it. Classes are described by their constructor and
the public methods they must have.

Conventions: a framework's own argument (where the work runs) is the keyword-only ``device``
and accepts what the backend's ``try_gpu()`` returns, or ``None`` for that default; an option a
backend cannot honour is refused with ``ValueError``, never ignored.
"""
from __future__ import annotations

import inspect
import types

# --- blocks and networks ------------------------------------------------------------------


class Residual:
    """The chapter's basic block; ``in_channels=None`` infers the input channels on first use."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, in_channels=None): ...


class Bottleneck:
    """1x1-3x3-1x1 bottleneck (version 1); ``num_channels`` is its output width."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, in_channels=None, bias=True,
                 shortcut_bn=False, stride_on_3x3=False): ...


class PreActResidual:
    """Pre-activation basic block (version 2); Bottleneck's constructor."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, in_channels=None, bias=True,
                 shortcut_bn=False, stride_on_3x3=False): ...


class PreActBottleneck:
    """Pre-activation bottleneck (version 2); Bottleneck's constructor."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, in_channels=None, bias=True,
                 shortcut_bn=False, stride_on_3x3=False): ...


class Block:
    """Any block of the family, built from its framework-free ``spec.Block``."""

    def __init__(self, block): ...


class ResNet:
    """Stages ``b1`` .. ``b5`` and ``head`` of the variant ``arch`` (``spec.get_arch``; None: the
    chapter's ResNet-18), iterable like the chapter's ``nn.Sequential``."""

    def __init__(self, num_classes=10, in_channels=1, *, arch=None, device=None): ...


def resnet_block(num_channels, num_residuals, first_block=False, *, in_channels=None):
    """A stage of ``num_residuals`` Residual blocks; all but the first stage halve the size."""


def resnet(depth=18, version=1, num_classes=10, in_channels=1, flavour="chapter", *, device=None):
    """Any variant of ``spec.ARCHS``, initialised with d2lres's scheme."""


def resnet18(num_classes=10, in_channels=1, *, version=1, flavour="chapter", device=None):
    """The chapter's ResNet-18 (or its version 2 / torchvision flavour)."""


resnet34 = resnet50 = resnet101 = resnet152 = resnet18


def shape_walk(net, input_shape=(1, 224, 224)):
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them."""


def count_parameters(net):
    """``(trainable, BatchNorm statistics)``."""


# --- weights in the neutral format (d2lres.weights) ----------------------------------------


def get_weights(net):
    """Canonical name -> numpy array in PyTorch's layout."""


def set_weights(net, weights):
    """Load canonical weights (checked against the network first)."""


def save_weights(net, path):
    """Write the neutral ``.npz`` atomically; returns its path."""


def load_weights(net, path):
    """Read a neutral ``.npz`` into the network."""


def init_weights(net, seed=0):
    """The seeded initialiser shared by all backends (bit-identical across them)."""


def load_torchvision_state_dict(net, state_dict):
    """Load a torchvision-format state dict (tensors or arrays) into a torchvision-flavour net."""


# --- data and training ----------------------------------------------------------------------


def try_gpu(i=0):
    """GPU ``i`` if there is one, else the CPU: the value ``device=`` takes in this backend (each
    backend's docstring states its rule)."""


def try_all_gpus():
    """Every GPU of the backend (the values ``device=`` takes), or ``[CPU]`` if there is none."""


def load_data_fashion_mnist(batch_size, resize=None, *, data_dir=None, seed=0, limit=None, device=None):
    """``(train_iter, test_iter)`` of framework tensors in the backend's layout, values in [0, 1]."""


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device=None, **fit_options):
    """d2l's ``train_ch6`` (``device`` positional, as d2l calls it) on a d2lres network or any
    network of the framework mapping a batch to logits, re-initialised as d2l does unless it is
    d2lres's (``d2lres.core.book``); ``train_iter`` may be d2lres's batches or the framework's own
    data loader; ``fit_options`` go to ``d2lres.training.fit``."""


class Trainer:
    """PyTorch-form SGD (momentum, weight decay) with cross-entropy on one network (a d2lres
    network or any network of the framework mapping a batch to logits).
    ``compile``: the backend's graph compilation (None: the backend's measured default);
    ``channels_last``: activations NHWC (None: the backend chooses; refused where the backend
    has one layout only)."""

    def __init__(self, net, momentum=0.0, weight_decay=0.0, *, device=None, compile=None, channels_last=None): ...

    def convert(self, X, y): ...

    def step(self, X, y, lr): ...

    def predict(self, X): ...

    def forward(self, X, training=False): ...

    def get_weights(self): ...

    def set_weights(self, weights): ...

    def optimizer_state(self): ...

    def load_optimizer_state(self, state): ...


# --- more than one device: ``d2lres.<backend>.parallel`` ---------------------------------------

class ParallelTrainer(Trainer):
    """The ``Trainer`` of a data-parallel run on the framework's own engine: ``step`` takes the
    global batch and splits it over ``replicas`` (None: every device the run's launcher set up);
    ``sync_bn``: synchronized BatchNorm (default ``d2lres.parallel.SYNC_BN_DEFAULT``). Its
    attributes ``replicas``, ``rank`` (this process's index; 0 writes) and ``sync_bn`` say how it runs."""

    def __init__(self, net, momentum=0.0, weight_decay=0.0, *, device=None, compile=None, channels_last=None,
                 replicas=None, sync_bn=True): ...


#: The public names every backend's ``parallel`` module shares.
PARALLEL_NAMES = ["ParallelTrainer"]

#: Every public name of a backend package, in the order of its ``__all__``.
NAMES = ["Residual", "Bottleneck", "PreActResidual", "PreActBottleneck", "Block", "ResNet",
         "resnet_block", "resnet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
         "shape_walk", "count_parameters",
         "get_weights", "set_weights", "save_weights", "load_weights", "init_weights",
         "load_torchvision_state_dict",
         "try_gpu", "try_all_gpus", "load_data_fashion_mnist", "train_ch6", "Trainer"]


def factories(ResNet) -> tuple:
    """A backend's ``resnet`` and ``resnet18`` ... ``resnet152``, with the contract's signatures,
    built on its ``ResNet`` class (which builds and initialises the network)."""
    from . import spec

    def resnet(depth=18, version=1, num_classes=10, in_channels=1, flavour="chapter", *, device=None):
        """Any variant of ``spec.ARCHS`` (``depth`` may also be a name such as ``"resnet50"``),
        initialised with d2lres's scheme. ``resnet(18)`` is the chapter's network."""
        return ResNet(num_classes, in_channels, arch=spec.get_arch(depth, version, flavour), device=device)

    def of_depth(depth: int):
        def factory(num_classes=10, in_channels=1, *, version=1, flavour="chapter", device=None):
            return resnet(depth, version, num_classes, in_channels, flavour, device=device)
        factory.__name__ = factory.__qualname__ = f"resnet{depth}"
        factory.__doc__ = f"ResNet-{depth} (version 1 or 2, flavour chapter or torchvision)" + (
            "; ResNet-18 is the chapter's network." if depth == 18 else ".")
        return factory
    return (resnet, *(of_depth(d) for d in (18, 34, 50, 101, 152)))


#: The family's other blocks: class name, ``spec.Block`` kind and version, docstring.
BLOCK_FAMILY = (
    ("Bottleneck", "bottleneck", 1, "conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN plus the shortcut, then ReLU "
                                    "(version 1). ``num_channels`` is the output (the inner width is "
                                    "``num_channels // 4``)."),
    ("PreActResidual", "basic", 2, "Pre-activation basic block (version 2): BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus "
                                   "the shortcut (projected from the pre-activated input when ``use_1x1conv``); "
                                   "no ReLU after the sum."),
    ("PreActBottleneck", "bottleneck", 2, "Pre-activation bottleneck (version 2): (BN-ReLU-conv) x 3 with 1x1, "
                                          "3x3, 1x1 kernels."),
)


def block_classes(Block) -> tuple:
    """A backend's ``Bottleneck``, ``PreActResidual`` and ``PreActBottleneck``: subclasses of its
    ``Block`` (each built from its ``spec.Block``) with one constructor, the contract's. None is a
    subclass of another."""
    from . import book, spec

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 in_channels: int | None = None, bias: bool = True, shortcut_bn: bool = False,
                 stride_on_3x3: bool = False):
        book.check_residual(type(self).__name__, num_channels, use_1x1conv, strides)
        Block.__init__(self, spec.Block("", self.kind, self.version, in_channels or 0, num_channels, strides,
                                        use_1x1conv, bias, shortcut_bn and self.version == 1, stride_on_3x3))

    def make(name, kind, version, doc):
        def body(ns):
            ns.update(kind=kind, version=version, __init__=__init__, __doc__=doc, __module__=Block.__module__,
                      __qualname__=name)
        return types.new_class(name, (Block,), exec_body=body)
    return tuple(make(*member) for member in BLOCK_FAMILY)


def signature(obj) -> list[tuple[str, str, object]]:
    """``(name, kind, default)`` per parameter of a function or a class's constructor (``self``
    left out); annotations are not part of the contract."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = list(inspect.signature(target).parameters.values())
    if inspect.isclass(obj):
        params = params[1:]
    return [(p.name, p.kind.name, p.default) for p in params]


def methods(cls) -> set[str]:
    """The public methods a class of the contract must have."""
    return {name for name, value in vars(cls).items() if callable(value) and not name.startswith("_")}


def contract(name: str):
    """The stub that describes ``name``."""
    if name not in NAMES + PARALLEL_NAMES:
        raise KeyError(f"{name!r} is not part of the d2lres API")
    return globals()[name]
