"""IDX files (the format of MNIST and Fashion-MNIST), unsigned bytes only, plain or gzipped, and
:class:`DataError`, the one error every part of :mod:`d2lres.data` raises."""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ..files import atomic_open

__all__ = ["DataError", "read_idx", "write_idx"]

_IDX_UINT8 = 0x08


class DataError(RuntimeError):
    """The data set cannot be read or obtained; the message says why and what to do."""


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
