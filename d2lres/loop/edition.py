"""d2l 1.0's training front end (the edition d2l.ai prints), framework-free: ``add_to_class``,
``HyperParameters``, ``ProgressBoard`` with d2l's points, and :class:`EditionTrainer`, the base of
each backend's ``Trainer(max_epochs, num_gpus=0, gradient_clip_val=0)``, whose ``fit(model, data)``
runs d2lres's loop (``d2lres.loop.engine``) with the board, a progress bar and a line per epoch as
callbacks. These names follow d2l 1.0.3's signatures: the book's compatibility surface, apart from
d2lres's one API."""
from __future__ import annotations

import collections
import inspect
from pathlib import Path

import numpy as np

from .. import data as datasets
from ..errors import UserTypeError, UserValueError
from ..util import files
from .callbacks import Checkpoints, ProgressBar, StopOnSignal
from .engine import Callback, Loop, num_batches, to_numpy
from .trainer import clip_value, identity

#: Where a board drawn outside a notebook is saved (relative to the working folder).
BOARD_PNG = Path("runs") / "d2l-board.png"


def add_to_class(Class):
    """d2l's decorator: the function it decorates becomes a method of ``Class``."""
    def wrapper(obj):
        setattr(Class, obj.__name__, obj)
    return wrapper


class HyperParameters:
    """d2l's base of what has hyperparameters."""

    def save_hyperparameters(self, ignore=[]):  # noqa: B006 (d2l's signature; never changed here)
        """The caller's arguments (its local variables but ``self``, ``ignore`` and names starting
        with ``_``) as attributes, and as the dict ``hparams``."""
        local_vars = inspect.currentframe().f_back.f_locals
        self.hparams = {k: v for k, v in local_vars.items()
                        if k not in set(list(ignore) + ["self"]) and not k.startswith("_")}
        for k, v in self.hparams.items():
            setattr(self, k, v)


class ProgressBoard(HyperParameters):
    """d2l's board: each ``draw(x, y, label, every_n)`` collects a point, and every ``every_n``
    points of a label adds their mean to its line. In a notebook it is redrawn in place as d2l
    draws it; elsewhere :meth:`save` writes it to a PNG."""

    def __init__(self, xlabel=None, ylabel=None, xlim=None, ylim=None, xscale="linear", yscale="linear",
                 ls=["-", "--", "-.", ":"], colors=["C0", "C1", "C2", "C3"],  # noqa: B006 (d2l's signature)
                 fig=None, axes=None, figsize=(3.5, 2.5), display=True):
        self.save_hyperparameters()
        self.raw_points, self.data = collections.OrderedDict(), collections.OrderedDict()

    def draw(self, x, y, label, every_n=1):
        points = self.raw_points.setdefault(label, [])
        line = self.data.setdefault(label, [])
        y = y.detach() if hasattr(y, "detach") else y  # PyTorch: off the graph
        points.append((float(x), float(y)))  # a framework's scalar tensor too
        if len(points) != every_n:
            return
        line.append((sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points)))
        points.clear()
        if self.display and _in_notebook():
            from IPython import display
            display.display(self.figure())
            display.clear_output(wait=True)

    def figure(self):
        """The board as a matplotlib figure: one line per label, d2l's styles and axes."""
        from .plots import plt
        if self.fig is None:
            self.fig = plt.figure(figsize=self.figsize)
        self.fig.clf()
        axes = self.fig.gca()
        lines = [axes.plot([p[0] for p in v], [p[1] for p in v], linestyle=ls, color=color)[0]
                 for v, ls, color in zip(self.data.values(), self.ls, self.colors)]
        if self.xlim:
            axes.set_xlim(self.xlim)
        if self.ylim:
            axes.set_ylim(self.ylim)
        axes.set_xlabel(self.xlabel or "x")
        axes.set_ylabel(self.ylabel)
        axes.set_xscale(self.xscale)
        axes.set_yscale(self.yscale)
        axes.legend(lines, list(self.data)[:len(lines)])
        return self.fig

    def save(self, path) -> Path:
        """Write the board to ``path`` (a PNG, atomically); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = self.figure()
        return files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


class ModuleBase(HyperParameters):
    """What d2l 1.0's ``Module`` does alike in every framework: its board, its forward, its points
    on the board, its steps. A backend's ``Module`` derives from this and its framework's module
    (in that order: this class's methods first)."""

    def __init__(self, plot_train_per_epoch=2, plot_valid_per_epoch=1):
        super().__init__()  # the framework's module
        self.save_hyperparameters()
        self.board = ProgressBoard()

    def loss(self, y_hat, y):
        raise NotImplementedError

    def forward(self, X):
        if not hasattr(self, "net"):
            raise UserTypeError(f"{type(self).__name__} has no self.net: set it in __init__, or define forward")
        return self.net(X)

    def plot(self, key, value, train):
        """A point on the board at d2l's place (the trainer's batch counters)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            raise UserValueError("Module.plot: the model has no trainer yet (Trainer.fit sets it)")
        self.board.xlabel = "epoch"
        if train:
            x = trainer.train_batch_idx / trainer.num_train_batches
            n = trainer.num_train_batches / self.plot_train_per_epoch
        else:
            x = trainer.epoch + 1
            n = trainer.num_val_batches / self.plot_valid_per_epoch
        self.board.draw(x, value, ("train_" if train else "val_") + key, every_n=max(1, int(n)))

    def training_step(self, batch):
        loss = self.loss(self(*batch[:-1]), batch[-1])
        self.plot("loss", loss, train=True)
        return loss

    def validation_step(self, batch):
        loss = self.loss(self(*batch[:-1]), batch[-1])
        self.plot("loss", loss, train=False)


class ClassifierBase:
    """d2l 1.0's ``Classifier``'s validation points (loss and accuracy), in every framework."""

    def validation_step(self, batch):
        Y_hat = self(*batch[:-1])
        self.plot("loss", self.loss(Y_hat, batch[-1]), train=False)
        self.plot("acc", self.accuracy(Y_hat, batch[-1]), train=False)


class DataModule(HyperParameters):
    """d2l 1.0's base of data: ``get_dataloader(train)`` and its two loaders."""

    def __init__(self, root="../data", num_workers=4):
        self.save_hyperparameters()

    def get_dataloader(self, train):
        raise NotImplementedError

    def train_dataloader(self):
        return self.get_dataloader(train=True)

    def val_dataloader(self):
        return self.get_dataloader(train=False)


class FashionMNIST(DataModule):
    """d2l 1.0's Fashion-MNIST: batches of ``(X, y)`` tensors of the backend (``convert``), images
    in [0, 1], from d2lres's verified data cache (``d2lres.data``, fetched if needed; ``root`` is not
    used), the training split reshuffled each epoch in an order fixed by ``seed``. ``limit``: only
    the first images of each split. ``resize`` is a square ``(side, side)``."""

    #: The backend's ``(X, y)`` numpy batch to its tensors.
    convert = None

    def __init__(self, batch_size=64, resize=(28, 28), *, limit=None, data_dir=None, seed=0):
        super().__init__()
        self.save_hyperparameters()
        pair = tuple(resize) if isinstance(resize, (tuple, list)) else (resize, resize)
        if len(pair) != 2 or pair[0] != pair[1] or not isinstance(pair[0], int) or pair[0] < 1:
            raise UserValueError(f"FashionMNIST: resize must be a square (side, side) of positive integers, "
                                 f"got {resize!r}")
        loaded = datasets.FashionMNIST.load(data_dir)
        side = None if pair[0] == 28 else pair[0]
        self.train, self.val = (loaded.split(train, side, limit) for train in (True, False))

    def text_labels(self, indices):
        return datasets.get_fashion_mnist_labels(indices)

    def get_dataloader(self, train):
        X, y = self.train if train else self.val
        return datasets.ArrayBatches(X, y, self.batch_size, shuffle=train, seed=self.seed, convert=type(self).convert)

    def visualize(self, batch, nrows=1, ncols=8, labels=[]):  # noqa: B006 (d2l's signature)
        X, y = batch
        X = to_numpy(X)
        show_images(X[:, 0] if X.shape[1] == 1 else X[..., 0], nrows, ncols,  # NCHW or NHWC
                    titles=labels or self.text_labels(to_numpy(y)))


def _in_notebook() -> bool:
    from .plots import in_notebook  # matplotlib: imported when a board is drawn, not with the backend
    return in_notebook()


def show_images(imgs, num_rows, num_cols, titles=None, scale=1.5):
    """d2l's grid of images (arrays or a framework's tensors), with ``titles``; returns the axes."""
    from .plots import plt
    _, axes = plt.subplots(num_rows, num_cols, figsize=(num_cols * scale, num_rows * scale))
    axes = np.asarray(axes).reshape(-1)
    for i, (ax, img) in enumerate(zip(axes, imgs)):
        ax.imshow(to_numpy(img))
        ax.axes.get_xaxis().set_visible(False)
        ax.axes.get_yaxis().set_visible(False)
        if titles:
            ax.set_title(titles[i])
    return axes


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy of float logits (computed in float64)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(labels)), np.asarray(labels).reshape(-1).astype(np.int64)]


class _Board(Callback):
    """d2l 1.0's points on the model's board: the training loss of each step at ``x = step /
    batches per epoch`` (means of ``batches / plot_train_per_epoch`` steps), and after each epoch
    the validation loss and accuracy of each batch at ``x = epoch`` (means of ``batches /
    plot_valid_per_epoch``); outside a notebook a line per epoch and, at the end, the board
    saved to ``path`` (printed)."""

    def __init__(self, front, model, path):
        self.front, self.model, self.board, self.path = front, model, model.board, path

    def every(self, batches: int, per_epoch) -> int:
        return max(1, int(batches / per_epoch))

    linked = False

    def on_epoch_begin(self, loop: Loop) -> None:
        """The board's points live in the loop's history, so that a checkpoint keeps them; a
        resumed run gets them back, and the trainer's counters where it stopped. (Here, not at
        the train's beginning: after a checkpoint callback has restored the history, while this
        callback comes before it, to draw a step's point before the step's checkpoint.)"""
        if self.linked:
            return
        self.linked = True
        saved = loop.history.get("board")
        if saved is not None:
            for mine, theirs in ((self.board.data, saved["data"]), (self.board.raw_points, saved["raw"])):
                mine.clear()
                mine.update((k, [tuple(p) for p in v]) for k, v in theirs.items())
            self.front.epoch = loop.epoch
            self.front.train_batch_idx = loop.epoch * loop.steps_per_epoch + loop.step_in_epoch
        loop.history["board"] = {"data": self.board.data, "raw": self.board.raw_points}

    def on_step_end(self, loop: Loop) -> None:
        front = self.front
        self.board.xlabel = "epoch"
        self.board.draw(front.train_batch_idx / front.num_train_batches, loop.last_loss, "train_loss",
                        every_n=self.every(front.num_train_batches, self.model.plot_train_per_epoch))
        front.train_batch_idx += 1

    def evaluate(self, trainer, batches) -> float:
        """The validation pass: each batch's mean loss and accuracy on the board; the accuracy
        over every example (the loop's test accuracy)."""
        front, correct, total = self.front, 0, 0
        every = self.every(front.num_val_batches, self.model.plot_valid_per_epoch)
        for X, y in batches:
            logits, labels = trainer.predict(X), to_numpy(y).reshape(-1)
            hits = logits.argmax(axis=1) == labels
            self.board.draw(front.epoch + 1, cross_entropy(logits, labels).mean(), "val_loss", every_n=every)
            self.board.draw(front.epoch + 1, hits.mean(), "val_acc", every_n=every)
            correct, total = correct + int(hits.sum()), total + labels.size
            front.val_batch_idx += 1
        return correct / max(total, 1)

    def on_epoch_end(self, loop: Loop) -> None:
        self.front.epoch = loop.epoch
        if not _in_notebook():
            last = {k: v[-1][1] for k, v in self.board.data.items() if v}
            shown = ", ".join(f"{k} {last[k]:.3f}" for k in ("train_loss", "val_loss", "val_acc") if k in last)
            print(f"epoch {loop.epoch}/{loop.num_epochs}: {shown}", flush=True)

    def on_train_end(self, loop: Loop) -> None:
        if not _in_notebook() and self.path is not None:
            print(f"the board: {self.board.save(self.path)}")


class EditionTrainer(HyperParameters):
    """d2l 1.0's ``Trainer``: ``fit(model, data)`` trains ``model`` (a d2l ``Module`` whose loss is
    the classifier's cross-entropy) on ``data`` (a ``DataModule``) for ``max_epochs`` with
    d2lres's loop: BatchNorm in training mode during the steps, d2lres's progress bar, a stop on
    Ctrl-C, and the model's board with d2l's points. A backend supplies :meth:`_step_trainer`
    (d2lres's ``Trainer`` on the model, with the learning rate of its optimizer) and its device
    rule; the step clips as d2l does (``gradient_clip_val``). d2lres's own options are keyword-only,
    after d2l's."""

    #: The backend's ``Classifier``: d2lres's step computes its loss (cross-entropy), so a model
    #: with another is refused.
    classifier: type

    def __init__(self, max_epochs, num_gpus=0, gradient_clip_val=0, *, checkpoint_dir=None, resume=False,
                 checkpoint_every=100, precision="float32", board_path=BOARD_PNG):
        self.save_hyperparameters(ignore=["checkpoint_dir", "resume", "checkpoint_every", "precision", "board_path"])
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, (int, np.integer)) or max_epochs < 1:
            raise UserValueError(f"Trainer: max_epochs must be a positive integer, got {max_epochs!r}")
        clip_value(gradient_clip_val)
        if resume and checkpoint_dir is None:
            raise UserValueError("Trainer(resume=True) needs the checkpoint_dir= of the run to continue")
        #: d2lres's options beside d2l's: the checkpoint folder (a checkpoint every ``checkpoint_every``
        #: steps and at each epoch's end; ``resume`` continues from it exactly), the precision of the
        #: steps (``d2lres.core.precision``), where the board is saved outside a notebook (None: not saved).
        self.checkpoint_dir, self.resume, self.checkpoint_every = checkpoint_dir, resume, checkpoint_every
        self.precision, self.board_path = precision, board_path

    def prepare_data(self, data):
        self.train_dataloader = data.train_dataloader()
        self.val_dataloader = data.val_dataloader()
        self.num_train_batches = num_batches(self.train_dataloader)
        self.num_val_batches = num_batches(self.val_dataloader) if self.val_dataloader is not None else 0

    def prepare_model(self, model):
        model.trainer = self
        model.board.xlim = [0, self.max_epochs]
        self.model = model

    def prepare_batch(self, batch):
        """The batch as the step takes it (d2lres's step puts it on the device)."""
        return batch

    def fit_epoch(self):
        raise NotImplementedError("d2lres's Trainer.fit runs its epochs in d2lres's loop (d2lres.loop.engine); "
                                  "it has no fit_epoch to call or replace")

    def fit(self, model, data):
        if type(self).fit_epoch is not EditionTrainer.fit_epoch:
            raise UserTypeError("Trainer.fit: this Trainer's fit_epoch was replaced (add_to_class), and d2lres's fit "
                                "runs its own loop, which would ignore it; train with your own loop instead")
        for method in ("configure_optimizers", "board"):
            if not hasattr(model, method):
                raise UserTypeError(f"Trainer.fit: the model must be a d2l Module (class Net(d2l.Classifier)), got a "
                                    f"{type(model).__name__} without {method}; a plain network trains with "
                                    f"d2l.train_ch6(net, train_iter, test_iter, num_epochs, lr)")
        if getattr(type(model), "loss", None) is not self.classifier.loss:
            raise UserTypeError(f"Trainer.fit: d2lres trains with the classifier's cross-entropy, and "
                                f"{type(model).__name__} defines its own loss: derive it from d2l.Classifier "
                                f"without overriding loss")
        self.prepare_data(data)
        if self.val_dataloader is None:
            raise UserValueError("Trainer.fit: the data has no validation loader; d2lres evaluates after each epoch")
        self.prepare_model(model)
        self.optim = model.configure_optimizers()
        step_trainer, lr = self._step_trainer(model, self.optim)
        self.step_trainer = step_trainer
        self.epoch = self.train_batch_idx = self.val_batch_idx = 0
        board = _Board(self, model, self.board_path)
        loop = Loop(step_trainer, self.train_dataloader, self.val_dataloader, self.max_epochs, lr,
                    evaluate=board.evaluate)
        callbacks = []
        if self.checkpoint_dir is not None:
            run = {**identity(model, step_trainer.get_weights()), "max_epochs": self.max_epochs, "lr": lr,
                   "batch_size": getattr(data, "batch_size", None), "train_batches": self.num_train_batches}
            callbacks.append(Checkpoints(self.checkpoint_dir, every=self.checkpoint_every, resume=self.resume,
                                         identity=run))
        self.history = loop.run([ProgressBar(), board, *callbacks, StopOnSignal()])

    def _step_trainer(self, model, optimizer):
        """``(d2lres's Trainer on model, learning rate)`` from the model's optimizer."""
        raise NotImplementedError
