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

from . import family

# --- blocks and networks ------------------------------------------------------------------


class Residual:
    """The chapter's basic block; ``in_channels=None`` infers the input channels on first use.

    Two 3x3 convolutions, each followed by BatchNorm (ReLU after the first), plus the shortcut, then ReLU.

    Args:
        num_channels: output channels of both 3x3 convolutions (and of the block).
        use_1x1conv: a 1x1 convolution on the shortcut, needed when channels or stride change; False: identity.
        strides: stride of the first 3x3 convolution and of the shortcut's 1x1; the default 1 keeps the size.
        in_channels: input channels, which build the layers now; None: inferred on the first call, as in d2l 1.0.
    """

    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, in_channels=None): ...


class Bottleneck:
    """1x1-3x3-1x1 bottleneck (version 1); ``num_channels`` is its output width.

    Args:
        num_channels: output channels of the block; the inner width is ``num_channels // 4``.
        use_1x1conv: a strided 1x1 convolution on the shortcut, needed when channels or stride change; False: identity.
        strides: stride of the block (and of its shortcut); the default 1 keeps the size.
        in_channels: input channels, which build the layers now; None: inferred on the first call.
        bias: convolutions with biases, as the chapter's flavour; False: bias-free, as torchvision's.
        shortcut_bn: BatchNorm after the shortcut's 1x1 convolution, as torchvision's; False: a bare convolution.
        stride_on_3x3: the stride on the 3x3 convolution (torchvision's "v1.5"); False: on the first 1x1 (the paper).
    """

    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, in_channels=None, bias=True,
                 shortcut_bn=False, stride_on_3x3=False): ...


class PreActResidual:
    """Pre-activation basic block (version 2); Bottleneck's constructor.

    Args:
        num_channels: output channels of both 3x3 convolutions (and of the block).
        use_1x1conv: a 1x1 convolution on the shortcut, taken from the pre-activated input; False: identity.
        strides: stride of the first 3x3 convolution and of the shortcut; the default 1 keeps the size.
        in_channels: input channels, which build the layers now; None: inferred on the first call.
        bias: convolutions with biases, as the chapter's flavour; False: bias-free, as torchvision's.
        shortcut_bn: accepted for Bottleneck's signature; version 2 puts no BatchNorm on the shortcut.
        stride_on_3x3: accepted for Bottleneck's signature; a basic block's stride is on its first 3x3 anyway.
    """

    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, in_channels=None, bias=True,
                 shortcut_bn=False, stride_on_3x3=False): ...


class PreActBottleneck:
    """Pre-activation bottleneck (version 2); Bottleneck's constructor.

    Args:
        num_channels: output channels of the block; the inner width is ``num_channels // 4``.
        use_1x1conv: a strided 1x1 convolution on the shortcut, taken from the pre-activated input; False: identity.
        strides: stride of the block (and of its shortcut); the default 1 keeps the size.
        in_channels: input channels, which build the layers now; None: inferred on the first call.
        bias: convolutions with biases, as the chapter's flavour; False: bias-free, as torchvision's.
        shortcut_bn: accepted for Bottleneck's signature; version 2 puts no BatchNorm on the shortcut.
        stride_on_3x3: the stride on the 3x3 convolution (torchvision's); False: on the first 1x1 (the paper).
    """

    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, in_channels=None, bias=True,
                 shortcut_bn=False, stride_on_3x3=False): ...


class ResNeXtBlock:
    """d2l 1.0's ResNeXt block: 1x1, grouped 3x3, 1x1 convolutions, each followed by BatchNorm, plus the shortcut.

    Args:
        num_channels: output channels of the block.
        groups: d2l's meaning: the width (channels) of each group, not their number; the 3x3 convolution has
            ``round(num_channels * bot_mul) // groups`` groups, which ``groups`` must divide.
        bot_mul: bottleneck channels per output channel (``bot_channels = round(num_channels * bot_mul)``).
        use_1x1conv: a 1x1 convolution with BatchNorm on the shortcut, needed when channels or stride change.
        strides: stride of the 3x3 convolution and of the shortcut; the default 1 keeps the size.
        in_channels: input channels, which build the layers now; None: inferred on the first call.
        bias: convolutions with biases, as d2l's; False: bias-free, as torchvision's ResNeXt.
    """

    def __init__(self, num_channels, groups, bot_mul, use_1x1conv=False, strides=1, *, in_channels=None,
                 bias=True): ...


class Block:
    """Any block of the family, built from its framework-free ``spec.Block``.

    Args:
        block: the ``spec.Block`` to build; its layers get their canonical local names (``conv1``, ``bn1``, ...),
            and input channels 0 build the layers that see the input on the first call.
    """

    def __init__(self, block): ...


class ResNet:
    """Stages ``b1`` .. ``b5`` and ``head`` of the variant ``arch``, iterable like the chapter's ``nn.Sequential``.

    Initialised with d2lres's scheme (Xavier uniform weights, zero biases). Input batches are NCHW in
    PyTorch and MXNet, NHWC in TensorFlow and JAX.

    Args:
        num_classes: outputs of the dense head; the default 10 is Fashion-MNIST's.
        in_channels: channels of the input images; the default 1 is Fashion-MNIST's grey images.
        arch: the variant, anything ``spec.get_arch`` takes (an ``Arch``, a name, a depth); None: the chapter's
            ResNet-18, built from its ``Residual`` and ``resnet_block``.
        device: where the weights are created (a value ``try_gpu()`` returns); None: the framework's default.
    """

    def __init__(self, num_classes=10, in_channels=1, *, arch=None, device=None): ...


def resnet_block(num_channels, num_residuals, first_block=False, *, in_channels=None):
    """A stage of ``num_residuals`` Residual blocks; all but the first stage halve the size.

    Args:
        num_channels: output channels of every block of the stage.
        num_residuals: how many ``Residual`` blocks the stage has.
        first_block: True for the first stage (``b2``, after the max-pool): no block halves the size or projects
            its shortcut; the default False: the first block halves height and width, with a 1x1 shortcut.
        in_channels: input channels of the first block, which build the layers now; None: inferred on the first call.

    Returns:
        The framework's sequential container of the blocks (``nn.Sequential``, ``keras.Sequential``, ...).
    """


def resnet(depth=18, version=1, num_classes=10, in_channels=1, flavour=None, *, device=None):
    """Any variant of ``spec.ARCHS``, initialised with d2lres's scheme.

    Args:
        depth: 18, 34, 50, 101 or 152, or a name such as ``"resnet50"`` or ``"resnext50_32x4d"`` (ResNeXt: version
            1); the default 18 is the chapter's network.
        version: 1 (the default): post-activation blocks, as the chapter's; 2: pre-activation blocks.
        num_classes: outputs of the dense head; the default 10 is Fashion-MNIST's.
        in_channels: channels of the input images; the default 1 is Fashion-MNIST's grey images.
        flavour: ``"chapter"`` (convolutions with biases, the paper's blocks) or ``"torchvision"`` (its ``resnet*``);
            None: the name's own, as ``--arch`` gives it (torchvision for ``resnext50_32x4d`` and the 101s, else
            chapter).
        device: where the weights are created (a value ``try_gpu()`` returns); None: the framework's default.

    Returns:
        The backend's ``ResNet`` of that variant.
    """


def resnet18(num_classes=10, in_channels=1, *, version=1, flavour="chapter", device=None):
    """The chapter's ResNet-18 (or its version 2 / torchvision flavour); ``resnet34`` .. ``resnet152`` alike.

    Args:
        num_classes: outputs of the dense head; the default 10 is Fashion-MNIST's.
        in_channels: channels of the input images; the default 1 is Fashion-MNIST's grey images.
        version: 1 (the default): post-activation blocks, as the chapter's; 2: pre-activation blocks.
        flavour: ``"chapter"`` (convolutions with biases, the paper's blocks) or ``"torchvision"`` (its ``resnet*``).
        device: where the weights are created (a value ``try_gpu()`` returns); None: the framework's default.

    Returns:
        The backend's ``ResNet`` of that depth.
    """


resnet34 = resnet50 = resnet101 = resnet152 = resnet18


def shape_walk(net, input_shape=(1, 224, 224)):
    """Rows ``(layer, output shape without batch, NCHW)`` as ``spec.walk`` lists them.

    Runs in eval mode without gradients, so the BatchNorm running statistics are not touched.

    Args:
        net: a d2lres network, or any network of the framework (then one row per child, as the chapter prints).
        input_shape: ``(channels, height, width)`` of one image, NCHW in every backend; the default is 1x224x224.

    Returns:
        A list of ``(name, shape)``: b1's and the head's layers one by one, the stages ``b2`` .. ``b5`` as wholes.
    """


def count_parameters(net):
    """``(trainable, BatchNorm statistics)``.

    Args:
        net: a d2lres network or any network of the framework.

    Returns:
        ``(trainable, non_trainable)``: the number of trainable values, and of BatchNorm running means and variances.
    """


# --- weights in the neutral format (d2lres.weights) ----------------------------------------


def get_weights(net):
    """Canonical name -> numpy array in PyTorch's layout.

    Args:
        net: a d2lres network (one it built: it carries its spec); any other raises ``TypeError``.

    Returns:
        A dict of the parameters and BatchNorm statistics under ``spec.parameters``' names, as numpy copies with
        convolutions OIHW and the dense layer ``(out, in)`` whatever the backend's own layout.
    """


def set_weights(net, weights):
    """Load canonical weights (checked against the network first).

    Args:
        net: a d2lres network; any other raises ``TypeError``.
        weights: canonical name -> array in PyTorch's layout, as ``get_weights`` returns; a missing, unexpected,
            mis-shaped or non-finite entry raises ``ValueError`` naming it, before anything is changed.
    """


def save_weights(net, path):
    """Write the neutral ``.npz`` atomically; returns its path.

    Args:
        net: a d2lres network.
        path: the file to write, replaced whole or not at all; it records the network's variant.

    Returns:
        The path written, as a ``pathlib.Path``.
    """


def load_weights(net, path):
    """Read a neutral ``.npz`` into the network.

    Args:
        net: a d2lres network.
        path: a weights file written by any backend's ``save_weights`` (or a run's ``weights.npz``); a file of
            another variant, or one that cannot be read, raises ``ValueError`` naming it.
    """


def init_weights(net, seed=0):
    """The seeded initialiser shared by all backends (bit-identical across them).

    Xavier uniform weights, zero biases, BatchNorm scale 1, shift 0, running mean 0 and variance 1.

    Args:
        net: a d2lres network; any other raises ``TypeError`` (``train_ch6`` initialises those as d2l does).
        seed: seed of the numpy generator the values are drawn from; equal seeds give equal weights everywhere.
    """


def load_torchvision_state_dict(net, state_dict):
    """Load a torchvision-format state dict (tensors or arrays) into a torchvision-flavour net.

    Args:
        net: a d2lres network of version 1 and flavour ``"torchvision"`` (``resnet(..., flavour="torchvision")``).
        state_dict: torchvision's ``state_dict`` keys (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...) to
            tensors or arrays; torchvision itself is not needed, and ``num_batches_tracked`` is dropped.
    """


# --- data and training ----------------------------------------------------------------------


def try_gpu(i=0):
    """GPU ``i`` if there is one, else the CPU: the value ``device=`` takes in this backend.

    Each backend's docstring states its rule (PyTorch's takes Apple's ``mps`` where there is no CUDA GPU).

    Args:
        i: index of the GPU; the default 0 is the first.

    Returns:
        The framework's device value (``torch.device``, a TensorFlow device string, an MXNet context, a
        ``jax.Device``).
    """


def try_all_gpus():
    """Every GPU of the backend (the values ``device=`` takes), or ``[CPU]`` if there is none.

    Returns:
        A list of the framework's device values, as ``try_gpu`` returns them.
    """


def load_data_fashion_mnist(batch_size, resize=None, *, data_dir=None, seed=0, limit=None, device=None):
    """``(train_iter, test_iter)`` of framework tensors in the backend's layout, values in [0, 1].

    Args:
        batch_size: images per batch; the last batch of a split may be smaller.
        resize: side in pixels of the square images, resized once with the same bilinear rule in every
            backend; None: Fashion-MNIST's own 28x28.
        data_dir: the data set's folder, fetched there if it is missing; None: ``$D2LRES_DATA_DIR`` or the cache.
        seed: fixes the training split's order in every epoch (the same in every backend); the test split is in order.
        limit: keep only the first ``limit`` images of each split; None: all of them.
        device: where the batches are put (a value ``try_gpu()`` returns); None: the framework's default.

    Returns:
        ``(train_iter, test_iter)``: re-iterable batches ``(X, y)``, X float32 NCHW (PyTorch, MXNet) or NHWC
        (TensorFlow, JAX), y the integer labels; each pass over ``train_iter`` is one epoch.
    """


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device=None, *, precision="float32", **fit_options):
    """d2l's ``train_ch6`` (``device`` positional, as d2l calls it) on any network mapping a batch to logits.

    SGD at a constant learning rate with cross-entropy; prints d2l's lines (``training on``, loss and accuracies,
    examples/sec) and draws the curves. A network that is not d2lres's is re-initialised as d2l does
    (``d2lres.core.compat``); a d2lres network keeps its weights.

    Args:
        net: a d2lres network or any network of the framework mapping a batch to logits.
        train_iter: the training batches: d2lres's (``load_data_fashion_mnist``) or the framework's own data loader.
        test_iter: the test batches, evaluated after every epoch; the same kinds as ``train_iter``.
        num_epochs: passes over ``train_iter``.
        lr: the learning rate, constant over the run.
        device: where to train (a value ``try_gpu()`` returns); None: ``try_gpu()``.
        precision: the ``Trainer``'s ``precision``.
        **fit_options: passed on to ``d2lres.training.fit`` (checkpoints, ``verbose``, ...).

    Returns:
        The history ``d2lres.training.fit`` returns: per-epoch rows, loss and accuracy points, images/s.
    """


class Trainer:
    """PyTorch-form SGD (momentum, weight decay) with cross-entropy on one network.

    Called as d2l 1.0's ``Trainer(max_epochs, num_gpus=0, gradient_clip_val=0)`` (a number of epochs
    first, no network), it builds that edition's trainer instead, ``fit(model, data)`` on d2lres's
    loop, where the backend has the 1.0 edition's names (``d2lres.loop.edition``).

    Args:
        net: a d2lres network or any network of the framework mapping a batch to logits.
        momentum: SGD momentum in PyTorch's form (``v = m v + g + wd w``, ``w -= lr v``); the default 0: none.
        weight_decay: L2 penalty ``wd`` added to every gradient; the default 0: none.
        device: where to train (a value ``try_gpu()`` returns); None: ``try_gpu()``.
        compile: the backend's graph compilation (``torch.compile``, ``tf.function``, Gluon's hybridize,
            ``jax.jit``); None: the backend's default, stated in its docstring.
        channels_last: activations NHWC; None: the backend chooses; a value the backend cannot honour (it has one
            layout only) raises ``ValueError``.
        precision: ``"float32"`` (the default) or ``"bf16"``: mixed precision, the convolutions and the dense layer
            in bfloat16, weights, optimizer state, BatchNorm statistics and loss in float32
            (``d2lres.core.precision``); a backend that cannot is refused with ``ValueError``.
        gradient_clip_val: d2l's clipping: when the joint norm of the loss's gradients exceeds it, every gradient
            is scaled by ``gradient_clip_val / norm`` (before weight decay and momentum); the default 0: none.
    """

    def __init__(self, net, momentum=0.0, weight_decay=0.0, *, device=None, compile=None, channels_last=None,
                 precision="float32", gradient_clip_val=0.0): ...

    def convert(self, X, y):
        """A numpy batch as the framework's tensors on the trainer's device.

        Args:
            X: float32 numpy images, NCHW.
            y: integer labels, one per image.

        Returns:
            ``(X, y)`` in the backend's layout, as ``step`` takes them.
        """

    def step(self, X, y, lr):
        """One SGD step on a batch.

        Args:
            X: images in the backend's layout (its tensors or numpy), as ``convert`` gives them.
            y: integer labels, one per image.
            lr: the learning rate of this step (a schedule may change it every step).

        Returns:
            ``(loss, correct)``: the batch's mean cross-entropy (float) and its correct predictions (int).
        """

    def predict(self, X):
        """Eval-mode logits of a batch.

        Args:
            X: images in the backend's layout, as ``step`` takes them.

        Returns:
            The logits as a numpy array, one row per image.
        """

    def forward(self, X, training=False):
        """Logits of a numpy batch that is NCHW in every backend.

        Args:
            X: NCHW numpy images, whatever the backend's own layout.
            training: train mode, which normalises with the batch's statistics and updates the running ones;
                the default False: eval mode, nothing changed.

        Returns:
            The logits as a numpy array, one row per image.
        """

    def get_weights(self):
        """The network's weights, as numpy arrays.

        Returns:
            Canonical names in PyTorch's layout for a d2lres network; for any other, its own under the
            framework's names.
        """

    def set_weights(self, weights):
        """Load weights into the network (checked first).

        Args:
            weights: as ``get_weights`` returns them; missing, unexpected or mis-shaped entries raise ``ValueError``.
        """

    def optimizer_state(self):
        """The momentum buffers, for a checkpoint.

        Returns:
            ``momentum.<name>`` -> numpy array in the layout of ``get_weights``; empty while there is none.
        """

    def load_optimizer_state(self, state):
        """Put back momentum buffers that ``optimizer_state`` returned (on resume).

        Args:
            state: ``momentum.<name>`` -> array; a buffer without an entry is left as it is.
        """


# --- more than one device: ``d2lres.<backend>.parallel`` ---------------------------------------

class ParallelTrainer(Trainer):
    """The ``Trainer`` of a data-parallel run on the framework's own engine.

    ``step`` takes the global batch, splits it over the replicas and returns the global batch's loss and
    correct count. Its attributes ``replicas``, ``rank`` (this process's index; 0 writes) and ``sync_bn``
    say how it runs.

    Args:
        net: as ``Trainer``'s.
        momentum: as ``Trainer``'s.
        weight_decay: as ``Trainer``'s.
        device: as ``Trainer``'s, where the backend uses it (each backend's docstring says).
        compile: as ``Trainer``'s; refused where the backend's data-parallel engine needs one setting.
        channels_last: as ``Trainer``'s.
        precision: as ``Trainer``'s.
        replicas: how many replicas share the global batch; None: every device the run's launcher set up
            (a number must match that).
        sync_bn: BatchNorm over the global batch (default ``d2lres.parallel.SYNC_BN_DEFAULT``); False: over each
            replica's shard, the running statistics averaged after every step.
    """

    def __init__(self, net, momentum=0.0, weight_decay=0.0, *, device=None, compile=None, channels_last=None,
                 precision="float32", replicas=None, sync_bn=True): ...


#: The public names every backend's ``parallel`` module shares.
PARALLEL_NAMES = ["ParallelTrainer"]

#: Every public name of a backend package, in the order of its ``__all__``.
NAMES = ["Residual", "Bottleneck", "PreActResidual", "PreActBottleneck", "ResNeXtBlock", "Block", "ResNet",
         "resnet_block", "resnet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
         "shape_walk", "count_parameters",
         "get_weights", "set_weights", "save_weights", "load_weights", "init_weights",
         "load_torchvision_state_dict",
         "try_gpu", "try_all_gpus", "load_data_fashion_mnist", "train_ch6", "Trainer"]


#: The family's other blocks (``d2lres.core.family``): class name, ``spec.Block`` kind and version, docstring.
BLOCK_FAMILY = tuple((cls.__name__, cls.kind, cls.version, cls.__doc__)
                     for cls in (family.Bottleneck, family.PreActResidual, family.PreActBottleneck,
                                 family.ResNeXtBlock))


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
