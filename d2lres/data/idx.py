"""IDX files (the format of MNIST and Fashion-MNIST), unsigned bytes only, plain or gzipped, and
:class:`DataError`, the one error every part of :mod:`d2lres.data` raises."""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import UserError, UserValueError
from ..util.files import atomic_open

__all__ = ["DataError", "read_idx", "write_idx"]

_IDX_UINT8 = 0x08


class DataError(UserError, RuntimeError):
    """The data set cannot be read or obtained; the message says why and what to do."""


#: The largest IDX data d2lres reads: Fashion-MNIST's 60,000 training images of 28x28. A file
#: claiming more (or a gzip member expanding past its claim) is refused before it is expanded.
MAX_IDX_BYTES = 60_000 * 28 * 28
_CHUNK = 1 << 20


def read_idx(path: str | os.PathLike, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip-compressed or plain) into a uint8 array.

    The header is checked first: a shape of more than ``max_bytes`` is refused, and never more
    than the shape's bytes (plus one chunk) are decompressed, so a gzip bomb costs no more memory
    than a genuine file. Raises :class:`DataError` naming the file if it is truncated, corrupt,
    too large or not uint8 IDX.
    """
    path = Path(path)
    fix = "delete it to fetch it again, or pass another --data-dir"
    try:
        with open(path, "rb") as raw_file:
            gzipped = raw_file.read(2) == b"\x1f\x8b"
            raw_file.seek(0)
            with (gzip.GzipFile(fileobj=raw_file) if gzipped else contextlib.nullcontext(raw_file)) as f:
                head = f.read(4)
                if len(head) < 4 or head[0] != 0 or head[1] != 0:
                    raise DataError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'}); {fix}")
                if head[2] != _IDX_UINT8:
                    raise DataError(f"{path}: IDX data type 0x{head[2]:02x} is not supported "
                                    f"(only unsigned byte, 0x08); {fix}")
                ndim = head[3]
                dims = f.read(4 * ndim)
                if ndim == 0 or len(dims) < 4 * ndim:
                    raise DataError(f"{path}: IDX header is truncated or has no dimensions; {fix}")
                shape = tuple(int(d) for d in np.frombuffer(dims, ">u4", ndim))
                expected = math.prod(shape)
                if expected > max_bytes:
                    raise DataError(f"{path}: IDX shape {shape} claims {expected:,} bytes, more than the "
                                    f"largest data set d2lres reads ({max_bytes:,}); {fix}")
                data, filled = np.empty(expected, np.uint8), 0
                view = memoryview(data)
                while filled < expected:
                    got = f.readinto(view[filled:filled + _CHUNK])
                    if not got:
                        break
                    filled += got
                extra = f.read(_CHUNK)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read (truncated or corrupt gzip?): {exc}; {fix}") from None
    if filled != expected or extra:
        found = f"{filled}" if filled < expected else f"more than {expected}"
        raise DataError(f"{path}: IDX shape {shape} needs {expected} bytes of data, "
                        f"found {found} (truncated or corrupt); {fix}")
    return data.reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed IDX file, atomically and reproducibly
    (gzip mtime 0 and no file name in the header, so equal arrays give equal bytes; level 6,
    much faster than 9 for a file hardly larger)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim == 0:
        raise UserValueError(f"write_idx needs a uint8 array with at least one dimension, "
                             f"got {array.dtype} with shape {array.shape}")
    header = bytes([0, 0, _IDX_UINT8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with atomic_open(path) as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0,
                                                compresslevel=6) as gz:
        gz.write(header)
        gz.write(np.ascontiguousarray(array).tobytes())
