"""The framework-neutral weights file: one ``.npz`` of canonical names (see ``spec.parameters``)
in PyTorch's layout, written atomically; plus the one initialisation scheme of all backends."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from . import spec


def check_weights(weights: dict[str, np.ndarray], num_classes: int, in_channels: int) -> None:
    """Raise ``ValueError`` naming every missing, unexpected or mis-shaped entry."""
    expected = spec.parameters(num_classes, in_channels)
    problems = [f"missing {k} {v.shape}" for k, v in expected.items() if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [f"{k}: expected shape {v.shape}, got {tuple(weights[k].shape)}"
                 for k, v in expected.items() if k in weights and tuple(weights[k].shape) != v.shape]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise ValueError(f"weights do not fit ResNet-18 with {in_channels} input channel(s) and "
                         f"{num_classes} classes: {shown}")


def infer_config(weights: dict[str, np.ndarray]) -> tuple[int, int]:
    """``(num_classes, in_channels)`` of a weights dict, read off the stem and the head."""
    try:
        return int(weights["head.fc.weight"].shape[0]), int(weights["b1.conv.weight"].shape[1])
    except KeyError as err:
        raise ValueError(f"not a d2lres ResNet-18 weights file: no {err.args[0]}") from None


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it over
    ``path``: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_npz(path: str | os.PathLike, weights: dict[str, np.ndarray]) -> Path:
    """Write ``weights`` (canonical names) to ``path`` atomically."""
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a weights file written by :func:`save_npz`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"no weights file at {path}") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable .npz weights file ({err})") from None


def init_weights(num_classes: int = 10, in_channels: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """The initialisation scheme of all three backends, as d2l's ``train_ch6`` does it:
    Xavier (Glorot) uniform weights for convolutions and the dense layer, zero biases,
    BatchNorm scale 1, shift 0, running mean 0, running variance 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, p in spec.parameters(num_classes, in_channels).items():
        key = name.rsplit(".", 1)[1]
        if key == "weight" and len(p.shape) > 1:
            receptive = int(np.prod(p.shape[2:]))
            limit = np.sqrt(6.0 / ((p.shape[0] + p.shape[1]) * receptive))
            out[name] = rng.uniform(-limit, limit, p.shape).astype(np.float32)
        elif key in ("weight", "running_var"):
            out[name] = np.ones(p.shape, np.float32)
        else:
            out[name] = np.zeros(p.shape, np.float32)
    return out


def backend_functions(get_weights, set_weights):
    """A backend's ``save_weights(net, path)``, ``load_weights(net, path)`` and
    ``init_weights(net, seed=0)``, built on its ``get_weights`` / ``set_weights``."""
    make_initial = init_weights

    def save_weights(net, path: str | os.PathLike) -> Path:
        """Write the network's weights to the neutral file ``path`` (atomically)."""
        return save_npz(path, get_weights(net))

    def load_weights(net, path: str | os.PathLike) -> None:
        """Load a neutral weights file (checked against the network first)."""
        set_weights(net, load_npz(path))

    def init_weights_(net, seed: int = 0) -> None:
        """Seeded initialisation shared with the other backends (bit-identical across them)."""
        set_weights(net, make_initial(net.num_classes, net.in_channels, seed))

    init_weights_.__name__ = "init_weights"
    return save_weights, load_weights, init_weights_
