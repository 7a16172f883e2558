"""d2l's compatibility layer, framework-free: what the backends add so that the book's own code runs
on them (``from d2lres import torch as d2l``) in both editions, and what they refuse with the form
that works.

- The chapter's blocks keep d2l 1.0's signatures ``Residual(num_channels, use_1x1conv=False,
  strides=1)`` and ``resnet_block(num_channels, num_residuals, first_block=False)``; the 0.17
  edition's PyTorch forms (input channels first) are refused saying how to write them.
- The 0.17 edition's helpers (``load_data_fashion_mnist``, ``try_gpu``, ``train_ch6``) are in every
  backend; the 1.0 edition's (``Classifier``, ``Trainer(max_epochs)``, ``FashionMNIST``, ...) are in
  every backend's ``edition`` module, on the shared front end ``d2lres.loop.edition``.

A *d2lres network* is one d2lres built (``ResNet``, ``resnet18()``, ...): it carries its ``spec``
(``arch``, ``in_channels``, ``num_classes``), which the neutral weights file, the input rules of
``d2lres.inputs`` and the same-function checks need. Any other network of the framework that maps
a batch to logits trains too (``Trainer``, ``train_ch6``, ``training.fit``); what it cannot have
without a spec is said where it is asked for."""
from __future__ import annotations

import functools
import inspect

import numpy as np

from ..errors import UserTypeError
from ..spec import is_d2lres_net, require_d2lres_net, spec_of  # noqa: F401 (the backends' names for them)

#: What a d2l 1.0 edition call is told by a backend without the 1.0 edition's names.
EDITION = ("d2lres follows the d2l 0.17 edition's helpers here: train with "
           "d2l.train_ch6(net, train_iter, test_iter, num_epochs, lr, d2l.try_gpu()) on the batches of "
           "d2l.load_data_fashion_mnist(batch_size, resize=96)")

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
