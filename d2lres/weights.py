"""The framework-neutral weights file: one ``.npz`` of canonical names (see ``spec.parameters``)
in PyTorch's layout, written atomically; plus the one initialisation scheme of all backends."""
from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import spec
from .files import atomic_write


def check_weights(weights: dict[str, np.ndarray], num_classes: int, in_channels: int, arch=None) -> None:
    """Raise ``ValueError`` naming every missing, unexpected or mis-shaped entry."""
    expected = spec.parameters(num_classes, in_channels, arch)
    problems = [f"missing {k} {v.shape}" for k, v in expected.items() if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [f"{k}: expected shape {v.shape}, got {tuple(weights[k].shape)}"
                 for k, v in expected.items() if k in weights and tuple(weights[k].shape) != v.shape]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise ValueError(f"weights do not fit {spec.get_arch(arch)} with {in_channels} input channel(s) and "
                         f"{num_classes} classes: {shown}")


def infer_config(weights: dict[str, np.ndarray]) -> tuple[int, int]:
    """``(num_classes, in_channels)`` of a weights dict, read off the stem and the head."""
    try:
        return int(weights["head.fc.weight"].shape[0]), int(weights["b1.conv.weight"].shape[1])
    except KeyError as err:
        raise ValueError(f"not a d2lres ResNet-18 weights file: no {err.args[0]}") from None


def save_npz(path: str | os.PathLike, weights: dict[str, np.ndarray]) -> Path:
    """Write ``weights`` (canonical names) to ``path`` atomically."""
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    return atomic_write(path, lambda f: np.savez(f, **arrays))


class WeightsFileError(ValueError):
    """A weights or checkpoint file that cannot be read; the message names the file and what to do."""


class MissingWeightsFile(WeightsFileError, FileNotFoundError):
    """No file at the path given."""


def read_npz(path: str | os.PathLike, *, what: str = "weights file", fix: str = "",
             keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file ``path`` (only ``keys`` if given; every array is read, so
    a damaged member is found here). Any problem (missing, empty, a folder, not an ``.npz``,
    truncated or corrupt, pickled objects) raises :class:`WeightsFileError` naming the file,
    the problem and ``fix`` (what to do)."""
    path = Path(path)
    fix = f"; {fix}" if fix else ""

    def error(problem: str, cls=WeightsFileError):
        return cls(f"{what} {path}: {problem}{fix}")

    if not path.exists():
        raise error("no such file", MissingWeightsFile)
    if path.is_dir():
        raise error("is a folder, not a file")
    try:
        if path.stat().st_size == 0:
            raise error("the file is empty (0 bytes), e.g. from an interrupted copy")
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"PK\x03\x04":
            raise error("not an .npz file (it is not a zip archive" + (", it looks like a pickle"
                        if magic[:1] == b"\x80" else "") + ")")
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys or () if k not in data.files]
            if missing:
                raise error(f"has no {', '.join(missing)} (not a file of this kind)")
            return {k: data[k] for k in (keys or data.files)}
    except WeightsFileError:
        raise
    except PermissionError as err:
        raise error(f"cannot be read ({err.strerror})") from None
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise error("holds pickled objects, which d2lres never loads") from None
        raise error(f"damaged ({err})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, zlib.error) as err:
        raise error(f"truncated or corrupt ({type(err).__name__}: {err})") from None


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a weights file written by :func:`save_npz`; a file that cannot be read raises
    :class:`WeightsFileError` (a ``ValueError``; ``FileNotFoundError`` too if it is missing)."""
    return read_npz(path, fix="pass a .npz written by d2lres (save_weights / weights.npz of a run)")


def init_weights(num_classes: int = 10, in_channels: int = 1, seed: int = 0, arch=None) -> dict[str, np.ndarray]:
    """The initialisation scheme of all three backends, as d2l's ``train_ch6`` does it:
    Xavier (Glorot) uniform weights for convolutions and the dense layer, zero biases,
    BatchNorm scale 1, shift 0, running mean 0, running variance 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, p in spec.parameters(num_classes, in_channels, arch).items():
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
        from .book import require_d2lres_net
        require_d2lres_net(net, "init_weights", "train_ch6, which initialises it as d2l does")
        set_weights(net, make_initial(net.num_classes, net.in_channels, seed, getattr(net, "arch", None)))

    init_weights_.__name__ = "init_weights"
    return save_weights, load_weights, init_weights_


def torchvision_loader(set_weights):
    """A backend's ``load_torchvision_state_dict(net, state_dict)``, built on its ``set_weights``."""

    def load_torchvision_state_dict(net, state_dict) -> None:
        """Load a torchvision-format ``state_dict`` (``conv1.weight``, ``layer1.0.bn1.running_mean``,
        ``layer2.0.downsample.0.weight``, ``fc.bias``, ...; tensors or arrays) into
        ``resnet(..., flavour="torchvision")``; torchvision itself is not needed."""
        set_weights(net, from_torchvision(state_dict, net.arch))
    return load_torchvision_state_dict


# --- torchvision's state_dict format ---------------------------------------------------------

def torchvision_keys(arch="resnet18", num_classes: int = 1000, in_channels: int = 3) -> dict[str, str]:
    """Canonical name -> torchvision ``state_dict`` key, for the torchvision flavour (version 1):
    ``b1.conv`` <-> ``conv1``, ``b1.bn`` <-> ``bn1``, ``b<k>.<i>.conv1`` <-> ``layer<k-1>.<i>.conv1``,
    the projection shortcut's convolution / BatchNorm <-> ``downsample.0`` / ``downsample.1``,
    ``head.fc`` <-> ``fc``."""
    arch = spec.get_arch(arch, flavour=None if isinstance(arch, spec.Arch) else "torchvision")
    if arch.version != 1 or arch.flavour != "torchvision":
        raise ValueError(f"torchvision's state_dict fits only the torchvision flavour of version 1, not {arch}")
    keys = {}
    for stage in spec.resnet_spec(arch, num_classes, in_channels).values():
        for layer in stage:
            for p in spec.primitives(layer):
                if isinstance(p, str) or not isinstance(p, (spec.Conv, spec.BatchNorm, spec.Dense)):
                    continue
                if p.name.startswith("b1."):
                    tv = {"b1.conv": "conv1", "b1.bn": "bn1"}[p.name]
                elif p.name == "head.fc":
                    tv = "fc"
                else:
                    stage_name, i, attr = p.name.split(".")
                    attr = {layer.shortcut_name: "downsample.0", f"bn{layer.shortcut_name[-1]}": "downsample.1"
                            }.get(attr, attr)
                    tv = f"layer{int(stage_name[1:]) - 1}.{i}.{attr}"
                params = ("weight", "bias", "running_mean", "running_var") if isinstance(p, spec.BatchNorm) \
                    else ("weight", "bias") if isinstance(p, spec.Dense) or p.bias else ("weight",)
                keys.update({f"{p.name}.{k}": f"{tv}.{k}" for k in params})
    return keys


def torchvision_arch(state_dict) -> spec.Arch:
    """The variant a torchvision ``state_dict`` holds, read off its keys (blocks per stage, and
    whether the blocks have a third convolution)."""
    blocks = [len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{s}.")}) for s in (1, 2, 3, 4)]
    kind = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    for depth, (k, layers) in spec.ARCHS.items():
        if (k, tuple(layers)) == (kind, tuple(blocks)):
            return spec.Arch(depth, 1, "torchvision")
    raise ValueError(f"not a torchvision ResNet state_dict: {kind} blocks per stage {blocks} match none of "
                     f"{', '.join(spec.ARCH_NAMES)}")


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def from_torchvision(state_dict, arch=None) -> dict[str, np.ndarray]:
    """A torchvision-format ``state_dict`` (tensors or arrays) as canonical weights of the
    torchvision flavour; ``num_batches_tracked`` is dropped. Missing or unexpected keys raise
    ``ValueError`` naming them."""
    arch = torchvision_arch(state_dict) if arch is None else \
        spec.get_arch(arch, flavour=None if isinstance(arch, spec.Arch) else "torchvision")
    try:
        num_classes, in_channels = (int(state_dict["fc.weight"].shape[0]), int(state_dict["conv1.weight"].shape[1]))
    except KeyError as err:
        raise ValueError(f"not a torchvision ResNet state_dict: no {err.args[0]}") from None
    keys = torchvision_keys(arch, num_classes, in_channels)
    known = set(keys.values())
    problems = [f"missing {tv}" for tv in keys.values() if tv not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in known and not k.endswith("num_batches_tracked")]
    if problems:
        raise ValueError(f"state_dict does not fit torchvision's {arch.name}: " + "; ".join(problems[:8])
                         + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else ""))
    weights = {name: _numpy(state_dict[tv]) for name, tv in keys.items()}
    check_weights(weights, num_classes, in_channels, arch)
    return weights


def to_torchvision(weights: dict[str, np.ndarray], arch="resnet18") -> dict[str, np.ndarray]:
    """Canonical weights of the torchvision flavour as a torchvision-format dict of arrays."""
    num_classes, in_channels = infer_config(weights)
    return {tv: np.asarray(weights[name]) for name, tv in torchvision_keys(arch, num_classes, in_channels).items()}


def torchvision_to_npz(state_dict, path: str | os.PathLike, arch=None) -> Path:
    """Write a torchvision ``state_dict`` as a neutral weights file (loads in every backend's
    ``resnet(..., flavour="torchvision")`` with ``load_weights``)."""
    return save_npz(path, from_torchvision(state_dict, arch))
