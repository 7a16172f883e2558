"""What every backend does with an odd input: decided once, here, without a framework.

Each backend's ``ResNet`` forward and its ``Trainer`` (``step``, ``predict``, ``forward``) call
:func:`check_batch` with the batch's shape and dtype before computing anything; the ``Trainer``
also passes the batch's finiteness to :func:`check_finite` and guards the BatchNorm running
statistics with :func:`check_statistics`. So every backend refuses the same inputs with the same
message (a ``ValueError``, the :class:`InputError` subclass) and accepts the same ones:

- not 4-D, wrong channel count: refused (the backend's layout named);
- an empty batch (0 images) or images of 0 pixels on a side: refused (any side >= 1 enters the
  network: every convolution and the max-pool pad, so a 1x1 image reaches the head as 1x1);
- integer or boolean images (``uint8`` straight from a file): refused, pointing to ``/ 255`` --
  cast silently they would enter as values in [0, 255] where the network expects [0, 1];
- other floating images (``float64``, numpy's default, ``float16``): cast to the network's
  dtype (float32) -- what the pixels hold fits float32 to far below its own rounding, and numpy
  makes float64 arrays by default (``X / 255.0``), so refusing would break the common case;
- a train-mode batch in which some BatchNorm layer would see a single value per channel (a batch
  of one image small enough to reach b5 as 1x1): refused -- its batch variance is 0 and the
  running variance's ``n / (n - 1)`` undefined;
- NaN or infinite pixels (``Trainer`` methods): refused before anything runs;
- a training step or train-mode forward whose batch statistics come out non-finite (finite
  pixels, overflowing activations): the running statistics are put back as they were and
  ``training.TrainingError`` is raised -- a non-finite statistic never lands in them.
"""
from __future__ import annotations

import numbers
from functools import lru_cache

from . import spec
from .errors import TrainingError, UserError


class InputError(UserError, ValueError):
    """An input no backend accepts (the same message in every backend)."""


def dtype_kind(dtype) -> str:
    """``"float"``, ``"int"``, ``"bool"``, ``"complex"`` or ``"other"`` for a numpy, PyTorch,
    TensorFlow, MXNet or JAX dtype."""
    name = dtype_name(dtype).lower()
    if name.startswith(("float", "bfloat", "half", "double")):
        return "float"
    if name.startswith(("int", "uint", "long", "short", "qint", "quint")):
        return "int"
    if name.startswith("bool"):
        return "bool"
    if name.startswith("complex"):
        return "complex"
    return "other"


def dtype_name(dtype) -> str:
    """``float32`` for any framework's spelling (``torch.float32``, TF's ``<dtype: 'float32'>``, MXNet's
    ``numpy.float32`` class)."""
    name = getattr(dtype, "name", None)
    if not isinstance(name, str):
        name = str(dtype)
        if not name.startswith(("torch.", "<dtype: '")):  # numpy.dtype() of these breaks torch.compile's trace
            try:
                import numpy
                name = numpy.dtype(dtype).name
            except TypeError:
                pass
    return name.replace("torch.", "").replace("<dtype: '", "").replace("'>", "")


@lru_cache(maxsize=256)
def _smallest_batchnorm(hw: tuple[int, int], num_classes: int, in_channels: int, arch) -> tuple[str, int]:
    """The BatchNorm layer that sees the fewest positions per channel for one ``hw`` image."""
    sizes = spec.batchnorm_sizes(hw, num_classes, in_channels, arch)
    name = min(sizes, key=sizes.get)
    return name, sizes[name]


def _known(v) -> bool:
    return v is not None and not isinstance(v, bool) and isinstance(v, int)


def check_batch(shape, dtype, in_channels: int, *, channels_last: bool = False, training: bool = False,
                arch=None, num_classes: int = 10) -> None:
    """Raise :class:`InputError` for a batch no backend accepts. ``shape`` in the backend's layout
    (``channels_last``: NHWC, else NCHW); an entry ``None`` (a dimension unknown while a graph is
    traced) is not checked. ``training``: the BatchNorm layers use batch statistics.
    ``in_channels`` None (a network that is not d2lres's, without a spec): the channel count
    and the BatchNorm batch-of-one rule are left to the framework, which raises its own error."""
    shape = tuple(None if s is None else int(s) for s in shape)
    layout = "(N, H, W, C)" if channels_last else "(N, C, H, W)"
    if len(shape) != 4:
        channels = "" if in_channels is None else f" with C = {in_channels}"
        raise InputError(f"expected a batch of shape {layout}{channels}, got shape {shape}")
    kind = dtype_kind(dtype)
    if kind in ("int", "bool"):
        raise InputError(f"{'integer' if kind == 'int' else 'boolean'} images ({dtype_name(dtype)}) are not "
                         f"accepted: the network takes floating-point pixel values in [0, 1]; convert them, "
                         f"e.g. X.astype('float32') / 255 for 8-bit images")
    if kind != "float":
        raise InputError(f"images of dtype {dtype_name(dtype)} are not accepted: the network takes float32 "
                         f"pixel values in [0, 1]")
    n, c, h, w = (shape[0], shape[3], shape[1], shape[2]) if channels_last else shape
    if n == 0:
        raise InputError(f"empty batch (0 images, shape {shape}): the network needs at least one image")
    if _known(c) and in_channels is not None and c != in_channels:
        raise InputError(f"the network expects {in_channels} input channel(s), got {c} "
                         f"(batch of shape {shape}, layout {layout})")
    if (_known(h) and h <= 0) or (_known(w) and w <= 0):
        raise InputError(f"images of {h}x{w} pixels: height and width must be at least 1")
    if training and in_channels is not None and _known(n) and _known(h) and _known(w):
        layer, positions = _smallest_batchnorm((h, w), num_classes, in_channels, spec.get_arch(arch))
        if n * positions < 2:
            raise InputError(f"a train-mode batch of {n} image(s) of {h}x{w} gives BatchNorm layer {layer} "
                             f"{n * positions} value per channel; batch statistics need at least 2: use a larger "
                             f"batch or larger images, or eval mode")


def check_network(net, accepted: bool, backend: str, what: str) -> None:
    """Raise :class:`InputError` unless ``accepted`` (``net`` is a network ``what`` can take)."""
    if not accepted:
        raise InputError(f"{what} needs a network of the {backend} backend, e.g. d2lres.{backend}.resnet18(); "
                         f"got {net!r:.60} ({type(net).__name__})")


def check_shape(input_shape, in_channels: int) -> tuple[int, int, int]:
    """``input_shape`` as three ints ``(C, H, W)`` the network takes; :class:`InputError` for
    anything else (strings, fractions, the wrong length) and ``spec.check_input``'s refusals."""
    dims = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if dims is None or len(dims) != 3 or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                                 for d in dims):
        raise InputError(f"an input shape is three integers (channels, height, width), e.g. ({in_channels}, 28, 28); "
                         f"got {input_shape!r}")
    dims = tuple(int(d) for d in dims)
    try:
        spec.check_input(dims, in_channels)
    except ValueError as err:
        raise InputError(str(err)) from None
    return dims


def check_finite(all_finite: bool) -> None:
    """Raise :class:`InputError` unless every pixel of the batch is finite."""
    if not all_finite:
        raise InputError("the batch holds NaN or infinite pixel values; nothing was computed or changed "
                         "(clean or drop the batch)")


def check_statistics(non_finite: list[str]) -> None:
    """After a train-mode pass whose running statistics were put back because of ``non_finite``
    (names of BatchNorm statistics that came out NaN or infinite): raise ``TrainingError``."""
    if non_finite:
        more = f" and {len(non_finite) - 1} more" if len(non_finite) > 1 else ""
        raise TrainingError(f"the BatchNorm statistics of this batch are not finite ({non_finite[0]}{more}): "
                            f"the activations overflow (try a lower learning rate); the running statistics "
                            f"were kept as they were before the batch")


def keep_statistics_finite(names: list[str], snapshot, finite, restore, run):
    """``run()`` (a train-mode pass), with the BatchNorm running statistics ``names`` saved first
    (``snapshot()``); if ``finite()`` (one bool per name) then finds any non-finite, ``restore(saved)``
    puts them back and ``TrainingError`` is raised. Returns what ``run()`` returned."""
    saved = snapshot()
    result = run()
    bad = [n for n, ok in zip(names, finite()) if not ok]
    if bad:
        restore(saved)
        check_statistics(bad)
    return result
