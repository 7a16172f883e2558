"""The framework-free part of every backend's ``Trainer``, which the loop drives: the methods a
backend must supply (abstract), a d2lres network's weights under the neutral names and any other
network's under the framework's own (checked before they are written), the input rules of
``d2lres.inputs``, BatchNorm running statistics kept finite, and arguments that do not fit the
constructor (d2l 1.0's ``Trainer(max_epochs=10, num_gpus=1)``) told which edition d2lres follows."""
from __future__ import annotations

import abc
import functools
import hashlib
import importlib
import inspect

import numpy as np

from .. import inputs
from ..core.compat import EDITION, TRAINER_1_0
from ..errors import UserTypeError, UserValueError
from ..spec import is_d2lres_net, spec_of


class TrainerBase(abc.ABC):
    """A backend's ``Trainer`` on ``self.net`` (on ``self.device``, named ``backend``) supplies the
    loop's methods (:meth:`step`, :meth:`predict`, :meth:`forward`, :meth:`convert`, the optimizer
    state) and its framework's pieces: :attr:`_neutral` (its module's ``(get_weights, set_weights)``),
    :meth:`_native_weights` and :meth:`_assign_native` for any other network, and for the BatchNorm
    statistics :meth:`_statistics`, :meth:`_snapshot`, :meth:`_finite` and :meth:`_restore`."""

    backend: str
    #: The backend's module of d2l 1.0's names, whose ``Trainer(max_epochs, num_gpus=0,
    #: gradient_clip_val=0)`` a call in that form builds (None: not there yet).
    edition: str | None = None

    def __new__(cls, *args, **kwargs):
        if "edition" in vars(cls) and cls.edition and is_edition_call(args, kwargs):
            return importlib.import_module(cls.edition).Trainer(*args, **kwargs)
        return super().__new__(cls)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            cls.__init__ = _checked_init(cls.__init__)

    # --- what the loop calls ---------------------------------------------------------------

    @abc.abstractmethod
    def step(self, X, y, lr: float) -> tuple[float, int]:
        """One SGD step at ``lr``; the batch's mean loss and number of correct predictions."""

    @abc.abstractmethod
    def predict(self, X) -> np.ndarray:
        """Eval-mode logits as a numpy array."""

    @abc.abstractmethod
    def forward(self, X: np.ndarray, training: bool = False) -> np.ndarray:
        """Logits of a numpy batch (train mode uses and updates the batch statistics)."""

    @abc.abstractmethod
    def convert(self, X: np.ndarray, y: np.ndarray):
        """A numpy batch as the framework's tensors on the trainer's device."""

    @abc.abstractmethod
    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimizer's state (momentum buffers) under ``momentum.<name>``."""

    @abc.abstractmethod
    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`optimizer_state` gave."""

    def get_weights(self) -> dict[str, np.ndarray]:
        """Canonical weights of a d2lres network; of any other, its own under the framework's names."""
        return self._neutral[0](self.net) if is_d2lres_net(self.net) else self._native_weights()

    def set_weights(self, weights) -> None:
        if is_d2lres_net(self.net):
            self._neutral[1](self.net, weights)
            return
        check_native_weights(weights, self._native_weights(), self.net)
        self._assign_native(weights)

    # --- the framework's pieces ------------------------------------------------------------

    @property
    @abc.abstractmethod
    def _neutral(self) -> tuple:
        """The backend module's ``(get_weights, set_weights)`` of a d2lres network."""

    @abc.abstractmethod
    def _native_weights(self) -> dict[str, np.ndarray]:
        """Any other network's weights under the framework's names."""

    @abc.abstractmethod
    def _assign_native(self, weights) -> None:
        """Write weights that :func:`check_native_weights` checked against :meth:`_native_weights`."""

    @abc.abstractmethod
    def _statistics(self) -> list:
        """``(name, handle)`` of each BatchNorm running statistic."""

    @abc.abstractmethod
    def _snapshot(self, handles) -> list:
        """Copies of the statistics ``handles``."""

    @abc.abstractmethod
    def _finite(self, handles) -> list[bool]:
        """Whether each of ``handles`` is finite."""

    @abc.abstractmethod
    def _restore(self, handles, saved) -> None:
        """Put the :meth:`_snapshot` ``saved`` back into ``handles``."""

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


def clip_value(value) -> float:
    """A ``Trainer``'s ``gradient_clip_val``: a finite number >= 0 (0: no clipping)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
            np.isfinite(value) and value >= 0):
        raise UserValueError(f"gradient_clip_val must be a finite number >= 0 (0: no clipping), got {value!r}")
    return float(value)


def is_edition_call(args: tuple, kwargs: dict) -> bool:
    """Whether ``Trainer(*args, **kwargs)`` is d2l 1.0's form (a number of epochs first, or its
    keywords without a network) rather than d2lres's ``Trainer(net, ...)``."""
    if args:
        return isinstance(args[0], (int, np.integer)) and not isinstance(args[0], bool)
    return "net" not in kwargs and bool(set(kwargs) & set(TRAINER_1_0))


def _checked_init(init):
    """``init`` (a ``Trainer``'s ``__init__``) refusing arguments that do not fit its signature with
    a ``TypeError`` that says which edition d2lres follows, instead of Python's bare one."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        try:
            signature.bind(self, *args, **kwargs)
        except TypeError as err:
            shown = signature.replace(parameters=[p.replace(annotation=inspect.Parameter.empty)
                                                  for p in list(signature.parameters.values())[1:]])
            edition = [k for k in kwargs if k in TRAINER_1_0]
            old = (f" ({', '.join(edition)}: d2l 1.0's Trainer(max_epochs, num_gpus=0, gradient_clip_val=0))"
                   if edition else "")
            how = (f"d2l 1.0's form takes no network: {type(self).__name__}(max_epochs=...).fit(model, data)"
                   if type(self).edition else EDITION)
            raise UserTypeError(f"{type(self).__name__}{shown}: {err}{old}. {how}") from None
        init(self, *args, **kwargs)
    return __init__


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
