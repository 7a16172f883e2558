"""The one image resize every backend uses: bilinear with half-pixel centres, in numpy."""
from __future__ import annotations

import numpy as np

from ..errors import UserValueError

__all__ = ["resize_images"]


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
        raise UserValueError(f"resize_images needs uint8 images (N, H, W), "
                             f"got {images.dtype} {images.shape}")
    n, height, width = images.shape
    if size is None or size == height == width:
        return np.multiply(images, np.float32(1 / 255), dtype=np.float32)
    if int(size) != size or size < 1:
        raise UserValueError(f"size must be a positive integer or None, got {size!r}")
    rows = _bilinear_matrix(height, size) / np.float32(255)
    cols_t = _bilinear_matrix(width, size).T.copy()
    out = np.empty((n, size, size), np.float32)
    for start in range(0, n, chunk):
        block = images[start:start + chunk].astype(np.float32)
        np.matmul(rows, block @ cols_t, out=out[start:start + chunk])
        np.minimum(out[start:start + chunk], 1, out=out[start:start + chunk])  # rounding > 1
    return out
