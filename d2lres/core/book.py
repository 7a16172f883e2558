"""The book's own code on d2lres, framework-free: what the backends' helpers do with a network
the reader wrote (``from d2lres import torch as d2l``), and the old signatures refused with the
form that works. Each backend supplies only its framework's piece (how to re-initialise, read
and write its weights).

d2lres follows the d2l 0.17 edition's helpers (``load_data_fashion_mnist``, ``try_gpu``,
``try_all_gpus``, ``train_ch6``) and d2l 1.0's ``Residual(num_channels, use_1x1conv=False,
strides=1)`` / ``resnet_block(num_channels, num_residuals, first_block=False)``.

A *d2lres network* is one d2lres built (``ResNet``, ``resnet18()``, ...): it carries its
``spec`` (``arch``, ``in_channels``, ``num_classes``), which the neutral weights file, the
input rules of ``d2lres.inputs`` and the same-function checks need. Any other network of the
framework that maps a batch to logits trains too (``Trainer``, ``train_ch6``,
``training.fit``); what it cannot have without a spec is said where it is asked for.
"""
from __future__ import annotations

import functools
import hashlib
import inspect

import numpy as np

from .. import inputs
from ..errors import UserTypeError, UserValueError
from ..spec import is_d2lres_net, require_d2lres_net, spec_of  # noqa: F401 (the backends' names for them)

#: What a d2l 1.0 edition call is told.
EDITION = ("d2lres follows the d2l 0.17 edition's helpers: train with "
           "d2l.train_ch6(net, train_iter, test_iter, num_epochs, lr, d2l.try_gpu()) on the batches of "
           "d2l.load_data_fashion_mnist(batch_size, resize=96)")

#: d2l 1.0's names that d2lres does not have, and what to use instead.
EDITION_1_0 = {
    "Classifier": "write the network as an nn.Module / Keras model / Gluon block and pass it to train_ch6",
    "FashionMNIST": "d2l.load_data_fashion_mnist(batch_size, resize=96) gives (train_iter, test_iter)",
    "Module": "write the network as the framework's own module and pass it to train_ch6",
    "DataModule": "d2l.load_data_fashion_mnist(batch_size, resize=96) gives (train_iter, test_iter)",
    "HyperParameters": "pass the settings to train_ch6",
    "ProgressBoard": "train_ch6 draws its curves itself",
    "ResNet18": "d2l.resnet18(num_classes=10, in_channels=1) builds the chapter's network",
}

#: Keywords of d2l 1.0's ``Trainer(max_epochs, num_gpus=0, gradient_clip_val=0)``.
TRAINER_1_0 = ("max_epochs", "num_gpus", "gradient_clip_val")


# --- the old signatures, refused -------------------------------------------------------------

def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def check_residual(name: str, num_channels, use_1x1conv, strides) -> None:
    """A block's ``(num_channels, use_1x1conv, strides)``: an integer where ``use_1x1conv``
    expects a bool is d2l 0.17's PyTorch ``Residual(input_channels, num_channels, ...)``."""
    if not _is_bool(use_1x1conv):
        raise UserTypeError(
            f"{name}({num_channels!r}, {use_1x1conv!r}, ...): use_1x1conv must be True or False, got "
            f"{type(use_1x1conv).__name__} {use_1x1conv!r}. d2lres follows d2l 1.0's signature "
            f"{name}(num_channels, use_1x1conv=False, strides=1); d2l 0.17's PyTorch "
            f"{name}(input_channels, num_channels, use_1x1conv=False, strides=1) is written here "
            f"{name}(num_channels, use_1x1conv, strides, in_channels=input_channels), "
            f"e.g. {name}({use_1x1conv!r}, in_channels={num_channels!r})")
    if isinstance(num_channels, bool) or not isinstance(num_channels, (int, np.integer)) or num_channels <= 0:
        raise UserTypeError(f"{name}: num_channels must be a positive integer, got {num_channels!r}")
    if isinstance(strides, bool) or not isinstance(strides, (int, np.integer)) or strides <= 0:
        raise UserTypeError(f"{name}: strides must be a positive integer, got {strides!r}")


def checked_residual(cls):
    """``cls`` (a backend's ``Residual``) with :func:`check_residual` run before its ``__init__``.
    Applied after the class, not written in it: the class body is the chapter's ``#@save`` cell."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, num_channels, use_1x1conv=False, strides=1, **kwargs):
        check_residual(cls.__name__, num_channels, use_1x1conv, strides)
        init(self, num_channels, use_1x1conv, strides, **kwargs)
    cls.__init__ = __init__
    return cls


_RESNET_BLOCK_FIX = ("d2lres follows d2l 1.0's signature resnet_block(num_channels, num_residuals, "
                     "first_block=False); d2l 0.17's PyTorch resnet_block(input_channels, num_channels, "
                     "num_residuals, first_block=False) is written here resnet_block(num_channels, num_residuals, "
                     "first_block, in_channels=input_channels)")


def checked_resnet_block(function):
    """``function`` (a backend's ``resnet_block``, same signature) refusing d2l 0.17's PyTorch
    form ``resnet_block(input_channels, num_channels, num_residuals, first_block=False)`` with
    a ``TypeError`` that says how it is written here. Applied after the function, not as a
    decorator line: the function's source is the chapter's ``#@save`` cell."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def resnet_block(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise UserTypeError(f"resnet_block: {err}. {_RESNET_BLOCK_FIX}") from None
        bound.apply_defaults()
        a = bound.arguments
        if not _is_bool(a["first_block"]):
            example = (f"resnet_block({a['num_residuals']!r}, {a['first_block']!r}, "
                       f"in_channels={a['num_channels']!r})")
            raise UserTypeError(f"resnet_block({a['num_channels']!r}, {a['num_residuals']!r}, {a['first_block']!r}): "
                                f"first_block must be True or False, got {type(a['first_block']).__name__} "
                                f"{a['first_block']!r}. {_RESNET_BLOCK_FIX}, e.g. {example}")
        n = a["num_residuals"]
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise UserTypeError(f"resnet_block: num_residuals must be a positive integer, got {n!r}")
        return function(*args, **kwargs)
    return resnet_block


class TrainerSignature(type):
    """The metaclass of the backends' ``Trainer``: arguments that do not fit its signature
    (d2l 1.0's ``Trainer(max_epochs=10, num_gpus=1)``) raise a ``TypeError`` that says which
    edition d2lres follows, instead of Python's bare one."""

    def __call__(cls, *args, **kwargs):
        signature = inspect.signature(cls.__init__)
        try:
            signature.bind(None, *args, **kwargs)
        except TypeError as err:
            shown = signature.replace(parameters=[p.replace(annotation=inspect.Parameter.empty)
                                                  for p in list(signature.parameters.values())[1:]])
            edition = [k for k in kwargs if k in TRAINER_1_0]
            old = (f" ({', '.join(edition)}: d2l 1.0's Trainer(max_epochs, num_gpus=0, gradient_clip_val=0))"
                   if edition else "")
            raise UserTypeError(f"{cls.__name__}{shown}: {err}{old}. {EDITION}") from None
        return super().__call__(*args, **kwargs)


class TrainerBase(metaclass=TrainerSignature):
    """The framework-free part of every backend's ``Trainer``: a d2lres network's weights under
    the neutral names and any other network's under the framework's own (checked before they are
    written), the input rules of ``d2lres.inputs``, and BatchNorm running statistics kept finite.
    A backend's ``Trainer`` supplies its framework's pieces: ``_neutral`` (its module's
    ``(get_weights, set_weights)``), ``_native_weights()`` and ``_assign_native(weights)`` for any
    other network, and for the statistics ``_statistics()`` (``(name, handle)`` pairs),
    ``_snapshot(handles)``, ``_finite(handles)`` (a bool per handle) and ``_restore(handles, saved)``."""

    def get_weights(self) -> dict[str, np.ndarray]:
        """Canonical weights of a d2lres network; of any other, its own under the framework's names."""
        return self._neutral[0](self.net) if is_d2lres_net(self.net) else self._native_weights()

    def set_weights(self, weights) -> None:
        if is_d2lres_net(self.net):
            self._neutral[1](self.net, weights)
            return
        check_native_weights(weights, self._native_weights(), self.net)
        self._assign_native(weights)

    def _check_batch(self, shape, dtype, training: bool, finite=None, channels_last: bool = False) -> None:
        """``d2lres.inputs``' rules before anything runs: the batch's shape and dtype, then (if
        ``finite``, a function giving whether every pixel is finite) its values."""
        in_channels, num_classes, arch = spec_of(self.net)
        inputs.check_batch(tuple(shape), dtype, in_channels, channels_last=channels_last, training=training,
                           arch=arch, num_classes=num_classes or 10)
        if finite is not None:
            inputs.check_finite(bool(finite()))

    def _keep_statistics_finite(self, run):
        """``run()``; non-finite BatchNorm running statistics after it are put back (``TrainingError``)."""
        stats = self._statistics()
        handles = [h for _, h in stats]
        return inputs.keep_statistics_finite([n for n, _ in stats], lambda: self._snapshot(handles),
                                             lambda: self._finite(handles),
                                             lambda saved: self._restore(handles, saved), run)


def module_getattr(module: str):
    """A backend package's ``__getattr__``: d2l 1.0's names (``Classifier``, ``FashionMNIST``,
    ...) raise an ``AttributeError`` saying what d2lres has instead."""
    def __getattr__(name: str):
        if name in EDITION_1_0:
            raise AttributeError(f"module {module!r} has no attribute {name!r}: d2l 1.0's {name} is not part of "
                                 f"d2lres, which follows the d2l 0.17 edition's helpers; {EDITION_1_0[name]}")
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return __getattr__


# --- any network in the helpers ----------------------------------------------------------------

def check_native_weights(weights: dict, current: dict, net) -> None:
    """Raise ``ValueError`` naming every missing, unexpected or mis-shaped entry of ``weights``
    against ``current`` (the network's own weights under the framework's names)."""
    problems = [f"missing {k} {tuple(v.shape)}" for k, v in current.items() if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in current]
    problems += [f"{k}: expected shape {tuple(v.shape)}, got {tuple(np.shape(weights[k]))}"
                 for k, v in current.items() if k in weights and tuple(np.shape(weights[k])) != tuple(v.shape)]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise UserValueError(f"weights do not fit this {type(net).__name__}: {shown}")


def identity(net, weights: dict) -> dict:
    """The part of a run's identity (``training.fit``'s ``identity=``) that the network gives:
    its variant for a d2lres network; else its class and a digest of its weights' names and
    shapes, so a checkpoint is resumed only into the same structure."""
    if is_d2lres_net(net):
        return {"network": str(net.arch), "in_channels": net.in_channels, "num_classes": net.num_classes}
    layout = ";".join(f"{k}{tuple(np.shape(v))}" for k, v in weights.items())
    return {"network": type(net).__name__, "structure": hashlib.sha256(layout.encode()).hexdigest()[:16]}
