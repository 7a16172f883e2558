"""The data set in memory and its mini-batches: each (split, size) computed once per process,
served by array slicing in an order that depends only on a seed and the epoch."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import UserValueError
from .resize import resize_images
from .sources import data_dir_path, load_fashion_mnist_arrays

__all__ = ["FashionMNIST", "ArrayBatches", "load_batches"]


class FashionMNIST:
    """The data set in memory: raw uint8 arrays, and each (split, size) computed once."""

    _loaded: dict[Path, FashionMNIST] = {}

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray,
                 x_test: np.ndarray, y_test: np.ndarray):
        self.raw = {True: (x_train, y_train), False: (x_test, y_test)}
        self._splits: dict[tuple[bool, int | None, int | None], tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def load(cls, data_dir: str | os.PathLike | None = None) -> FashionMNIST:
        """The data set from ``data_dir`` (fetched if needed); one instance per directory and
        process, so resized splits are shared by every caller."""
        key = data_dir_path(data_dir).resolve()
        if key not in cls._loaded:
            cls._loaded[key] = cls(*load_fashion_mnist_arrays(key))
        return cls._loaded[key]

    def split(self, train: bool, resize: int | None = None, limit: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)``: float32 images (N, 1, H, W) in [0, 1] and int64 labels (N,); ``limit``: only
        the first images, and only those are resized. Refused (``memory.MemoryNeeded``) before
        allocating if the images would not fit in the available memory."""
        key = (bool(train), resize, limit)
        if key not in self._splits:
            images, labels = (a[:limit] for a in self.raw[bool(train)])
            require_memory(len(images), resize or images.shape[-1], train)
            X = resize_images(images, resize)
            self._splits[key] = (X[:, None], labels.astype(np.int64))
        return self._splits[key]


def require_memory(n_images: int, side: int, train: bool) -> None:
    """Refuse (``memory.MemoryNeeded``) ``n_images`` images of one split at ``side`` x ``side`` in
    float32 if they would not fit in the available memory."""
    from ..util import memory
    memory.require(memory.images_bytes(n_images, side),
                   f"{n_images:,} {'training' if train else 'test'} images at {side}x{side} (float32)",
                   "use fewer images (--limit N) or a smaller --resize")


class ArrayBatches:
    """Mini-batches ``(X[i:j], y[i:j])`` of in-memory arrays, the last one possibly smaller.

    With ``shuffle``, epoch ``k`` uses the permutation drawn from ``(seed, k)``, so the order
    depends only on the seed and the epoch, in any process and backend. Each iteration is one
    epoch; :meth:`set_epoch` repositions (e.g. to resume). ``convert(xb, yb)`` maps numpy
    batches to framework tensors.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool,
                 seed: int = 0, convert: Callable[[np.ndarray, np.ndarray], Any] | None = None):
        if len(X) != len(y):
            raise UserValueError(f"X has {len(X)} samples but y has {len(y)}")
        if batch_size < 1:
            raise UserValueError(f"batch_size must be positive, got {batch_size}")
        self.X, self.y = X, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.convert = convert or (lambda xb, yb: (xb, yb))
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch``."""
        self.epoch = epoch

    def order(self, epoch: int) -> np.ndarray | None:
        """The sample order of ``epoch`` (``None``: natural order, no shuffling)."""
        if not self.shuffle:
            return None
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.y))

    def __iter__(self) -> Iterator[Any]:
        order = self.order(self.epoch)
        self.epoch += 1
        return self._batches(order)

    def _batches(self, order: np.ndarray | None) -> Iterator[Any]:
        for start in range(0, len(self.y), self.batch_size):
            if order is None:
                index = slice(start, start + self.batch_size)
            else:
                index = order[start:start + self.batch_size]
            yield self.convert(self.X[index], self.y[index])


def load_batches(batch_size: int, resize: int | None, convert: Callable, *,
                 data_dir: str | os.PathLike | None = None, seed: int = 0,
                 limit: int | None = None) -> tuple[ArrayBatches, ArrayBatches]:
    """``(train_iter, test_iter)`` for a backend's ``load_data_fashion_mnist``: the training
    split shuffled (order fixed by ``seed``), the test split in order; ``convert`` turns numpy
    batches into the framework's tensors; ``limit`` keeps the first images of each split."""
    data = FashionMNIST.load(data_dir)
    (Xtr, ytr), (Xte, yte) = data.split(True, resize, limit), data.split(False, resize, limit)
    return (ArrayBatches(Xtr, ytr, batch_size, shuffle=True, seed=seed, convert=convert),
            ArrayBatches(Xte, yte, batch_size, shuffle=False, convert=convert))
