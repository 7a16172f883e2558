"""The framework-neutral weights file: one ``.npz`` of canonical names (see ``spec.parameters``)
in PyTorch's layout, written atomically; plus the one initialisation scheme of all backends."""
from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import spec
from .errors import UserError, UserValueError
from .util.files import atomic_write


def check_weights(weights: dict[str, np.ndarray], num_classes: int, in_channels: int, arch=None) -> None:
    """Raise ``ValueError`` naming every missing, unexpected or mis-shaped entry."""
    expected = spec.parameters(num_classes, in_channels, arch)
    problems = [f"missing {k} {v.shape}" for k, v in expected.items() if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [f"{k}: expected shape {v.shape}, got {tuple(weights[k].shape)}"
                 for k, v in expected.items() if k in weights and tuple(weights[k].shape) != v.shape]
    for k, v in weights.items():
        if len(problems) < 8 and k in expected and tuple(v.shape) == expected[k].shape:
            problems += _value_problems(k, v)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise UserValueError(f"weights do not fit {spec.get_arch(arch)} with {in_channels} input channel(s) and "
                             f"{num_classes} classes: {shown}")


def _value_problems(name: str, value) -> list[str]:
    """What is wrong with the values of one weights entry: not real floating point (complex,
    integer, object, structured), or not finite (NaN, infinity)."""
    value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    if value.dtype.kind != "f":
        return [f"{name}: {value.dtype} values, weights are real floating point (float32)"]
    bad = int(value.size - np.count_nonzero(np.isfinite(value)))
    return [f"{name}: {bad} value(s) NaN or infinite"] if bad else []


def infer_config(weights: dict[str, np.ndarray]) -> tuple[int, int]:
    """``(num_classes, in_channels)`` of a weights dict, read off the stem and the head."""
    try:
        return int(weights["head.fc.weight"].shape[0]), int(weights["b1.conv.weight"].shape[1])
    except KeyError as err:
        raise UserValueError(f"not a d2lres ResNet-18 weights file: no {err.args[0]}") from None


#: The member of a weights file or checkpoint that records its format (docs/formats.md): JSON
#: ``{"format": "d2lres-weights" or "d2lres-checkpoint", "version": 1, "arch": {...} or null}``.
#: A file without it (written before version 1) is read as version 1; a newer one is refused.
FORMAT_KEY = "__format__"
FORMAT_VERSION = 1


def format_record(kind: str, arch=None) -> np.ndarray:
    """The :data:`FORMAT_KEY` member of a file of ``kind`` (``weights``, ``checkpoint``) holding
    ``arch`` (an ``Arch``, a name, a dict of name, version, flavour, or ``None``: not recorded)."""
    if arch is not None and not isinstance(arch, dict):
        a = spec.get_arch(arch)
        arch = {"name": a.name, "version": a.version, "flavour": a.flavour}
    return np.array(json.dumps({"format": f"d2lres-{kind}", "version": FORMAT_VERSION, "arch": arch}))


class Arrays(dict):
    """The arrays of a file, and its format record (``format``; ``None`` for files without one)."""
    format: dict | None = None


def save_npz(path: str | os.PathLike, weights: dict[str, np.ndarray], arch=None) -> Path:
    """Write ``weights`` (canonical names) to ``path`` atomically, with its format record
    (:data:`FORMAT_KEY`; ``arch``: the architecture they belong to, if known)."""
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    arrays[FORMAT_KEY] = format_record("weights", arch)
    return atomic_write(path, lambda f: write_npz(f, arrays))


def write_npz(f, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez(f, **arrays)``, but a failed write (a full disk) leaves no half-closed zip
    behind to complain when it is collected."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def check_arch(arrays: dict, arch, path) -> None:
    """Refuse the arrays read from ``path`` if their format record names another architecture."""
    recorded = (getattr(arrays, "format", None) or {}).get("arch")
    if not recorded or arch is None:
        return
    a = spec.get_arch(arch)
    if (recorded.get("name"), recorded.get("version"), recorded.get("flavour")) != (a.name, a.version, a.flavour):
        held = f"{recorded.get('name')} version {recorded.get('version')}, flavour {recorded.get('flavour')}"
        raise WeightsFileError(f"weights file {path} holds {held}, not {a} ({a.name} version {a.version}, "
                               f"flavour {a.flavour}); pass weights of {a}, or choose the network they belong to")


class WeightsFileError(UserError, ValueError):
    """A weights or checkpoint file that cannot be read; the message names the file and what to do."""


class MissingWeightsFile(WeightsFileError, FileNotFoundError):
    """No file at the path given."""


#: The most d2lres reads from one ``.npz`` file, checked from the ``.npy`` headers before any
#: array is read: one array (ResNet's largest is 9.4 MB, a 1,000-class torchvision head 8 MB)
#: and all of them (a ResNet-152 checkpoint with its momentum: 0.5 GB).
MAX_ARRAY_BYTES = 1 << 28
MAX_TOTAL_BYTES = 1 << 30
MAX_MEMBERS = 20_000
_CHUNK = 1 << 22


def read_npz(path: str | os.PathLike, *, what: str = "weights file", fix: str = "",
             keys: tuple[str, ...] | None = None, kinds: str = "f", kind: str = "weights") -> Arrays:
    """The arrays of the ``.npz`` file ``path`` (only ``keys`` if given; every array is read, so
    a damaged member is found here). Each member's ``.npy`` header is checked before its array
    is read: a dtype of a kind not in ``kinds`` (``"f"``: floating point; object, structured,
    complex and integer arrays are refused), a compression other than np.savez's (stored,
    deflated: zipfile bounds nothing else), a shape larger than :data:`MAX_ARRAY_BYTES` (or
    than :data:`MAX_TOTAL_BYTES` in all), a size that differs from the member's, and duplicated
    or oddly named members; no more than the header's bytes are ever decompressed. The format
    record (:data:`FORMAT_KEY`) must say ``kind`` and a version this d2lres reads; it is returned
    as the result's ``format``, not as an array. Any problem
    (missing, empty, a folder, not an ``.npz``, truncated or corrupt, pickled objects) raises
    :class:`WeightsFileError` naming the file, the problem and ``fix`` (what to do)."""
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
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_MEMBERS:
                raise error(f"{len(infos)} members, more than any d2lres file ({MAX_MEMBERS})")
            if any(i.filename == "data.pkl" or i.filename.endswith("/data.pkl") for i in infos):
                raise error("is a PyTorch file (torch.save: pickles in a zip archive), not d2lres's format (an .npz "
                            "of named arrays, which d2lres reads without unpickling anything); load it in PyTorch "
                            "and write it with d2lres.torch.save_weights, or pass a torchvision state dict to "
                            "load_torchvision_state_dict")
            members: dict[str, zipfile.ZipInfo] = {}
            for info in infos:
                key = info.filename[:-4]
                if not info.filename.endswith(".npy") or not key or any(c in key for c in "/\\\0") \
                        or not key.isprintable():
                    raise error(f"odd member {info.filename!r} (not an array of np.savez)")
                if key in members:
                    raise error(f"member {info.filename!r} appears twice")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    # zipfile expands bzip2 and LZMA members without a bound: refused before reading
                    raise error(f"member {info.filename!r} is compressed with method {info.compress_type}; "
                                f"np.savez and np.savez_compressed write stored or deflated members")
                members[key] = info
            if kind == "weights" and "progress" in members:
                raise error("is a d2lres checkpoint (a run's weights, momentum and progress), not a weights file: "
                            "to continue that run, pass --resume with --out set to its run folder; to start a new "
                            "run from its weights, pass that run's weights.npz")
            missing = [k for k in keys or () if k not in members]
            if missing:
                raise error(f"has no {', '.join(missing)} (not a file of this kind)")
            out = Arrays()
            if FORMAT_KEY in members:
                with archive.open(members[FORMAT_KEY]) as member:
                    out.format = _format(str(_read_member(member, members[FORMAT_KEY], FORMAT_KEY, "U", error)[0]),
                                         kind, error)
            total = 0
            for key in keys or [k for k in members if k != FORMAT_KEY]:
                with archive.open(members[key]) as member:
                    array, size = _read_member(member, members[key], key, kinds, error)
                    total += size
                    if total > MAX_TOTAL_BYTES:
                        raise error(f"its arrays claim more than {MAX_TOTAL_BYTES:,} bytes in all, more than "
                                    f"any d2lres file")
                    out[key] = array
            return out
    except WeightsFileError:
        raise
    except PermissionError as err:
        raise error(f"cannot be read ({err.strerror})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, zlib.error, ValueError, NotImplementedError,
            RuntimeError, OverflowError) as err:
        raise error(f"truncated or corrupt ({type(err).__name__}: {err})") from None


def _format(text: str, kind: str, error) -> dict:
    """The format record's JSON, checked: this ``kind`` of file, a version this d2lres reads."""
    try:
        record = json.loads(text)
        name, version = record["format"], record["version"]
        if not (isinstance(name, str) and type(version) is int and isinstance(record.get("arch"), (dict, type(None)))):
            raise TypeError
    except (ValueError, KeyError, TypeError, RecursionError):
        raise error(f"its format record {FORMAT_KEY} is damaged ({text[:80]!r})") from None
    if name != f"d2lres-{kind}":
        raise error(f"is a {name} file, not a d2lres {kind} file")
    if version > FORMAT_VERSION:
        raise error(f"written in format version {version} by a newer d2lres; this one reads versions up to "
                    f"{FORMAT_VERSION}: upgrade d2lres to read it")
    return record


def _read_member(member, info: zipfile.ZipInfo, key: str, kinds: str, error) -> tuple[np.ndarray, int]:
    """One ``.npy`` member: its header checked, then exactly its bytes read."""
    fmt = np.lib.format
    version = fmt.read_magic(member)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise error(f"member {key}: .npy format version {version} is not supported")
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = read_header(member, max_header_size=10_000)
    if dtype.hasobject:
        raise error(f"member {key} holds pickled objects, which d2lres never loads")
    if dtype.names is not None or dtype.subdtype is not None or dtype.kind not in kinds:
        raise error(f"member {key} holds {dtype} values (a {_KINDS.get(dtype.kind, 'structured')} array); "
                    f"d2lres reads {' and '.join(_KINDS[k] for k in kinds)} arrays only")
    count = math.prod(shape)
    size = count * dtype.itemsize
    if size > MAX_ARRAY_BYTES:
        raise error(f"member {key} claims shape {shape} ({size:,} bytes), larger than any d2lres array "
                    f"({MAX_ARRAY_BYTES:,} bytes)")
    if info.file_size - member.tell() != size:
        raise error(f"member {key}: its header's shape {shape} needs {size:,} bytes, the member holds "
                    f"{info.file_size - member.tell():,} (truncated or corrupt)")
    array = np.empty(count, dtype)
    view, filled = memoryview(array.view(np.uint8)), 0
    while filled < size:
        got = member.readinto(view[filled:filled + _CHUNK])
        if not got:
            raise error(f"member {key} is truncated ({filled:,} of {size:,} bytes)")
        filled += got
    if member.read(1):
        raise error(f"member {key} holds more than its header's shape {shape}")
    array = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
    return (array.astype(dtype.newbyteorder("=")) if not dtype.isnative else array), size


_KINDS = {"f": "floating-point", "U": "text", "c": "complex", "i": "integer", "u": "unsigned integer",
          "b": "boolean", "S": "bytes", "V": "structured", "M": "date", "m": "time-delta", "O": "object"}


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a weights file written by :func:`save_npz`; a file that cannot be read raises
    :class:`WeightsFileError` (a ``ValueError``; ``FileNotFoundError`` too if it is missing)."""
    return read_npz(path, fix="pass a .npz written by d2lres (save_weights / weights.npz of a run)")


def from_channels_last(value, kind: str) -> np.ndarray:
    """A channels-last framework's array (TensorFlow, JAX: kernels HWIO, dense ``(in, out)``) in
    the canonical layout (OIHW, ``(out, in)``), as a float32 C-ordered copy; ``kind``: ``conv``,
    ``dense`` or anything else (a vector: as it is)."""
    value = np.asarray(value)
    value = value.transpose(3, 2, 0, 1) if kind == "conv" else value.T if kind == "dense" else value
    return np.array(value, dtype=np.float32, order="C")


def to_channels_last(value, kind: str) -> np.ndarray:
    """The inverse of :func:`from_channels_last`, float32 and C-ordered."""
    value = np.asarray(value, dtype=np.float32)
    value = value.transpose(2, 3, 1, 0) if kind == "conv" else value.T if kind == "dense" else value
    return np.ascontiguousarray(value)


def init_weights(num_classes: int = 10, in_channels: int = 1, seed: int = 0, arch=None) -> dict[str, np.ndarray]:
    """The initialisation scheme of every backend, as d2l's ``train_ch6`` does it:
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
        return save_npz(path, get_weights(net), getattr(net, "arch", None))

    def load_weights(net, path: str | os.PathLike) -> None:
        """Load a neutral weights file (checked against the network first)."""
        arrays = load_npz(path)
        check_arch(arrays, getattr(net, "arch", None), path)
        set_weights(net, arrays)

    def init_weights_(net, seed: int = 0) -> None:
        """Seeded initialisation shared with the other backends (bit-identical across them)."""
        spec.require_d2lres_net(net, "init_weights", "train_ch6, which initialises it as d2l does")
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
        raise UserValueError(f"torchvision's state_dict fits only the torchvision flavour of version 1, not {arch}")
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
    whether the blocks have a third convolution) and, for a ResNeXt, the shape of its first grouped
    kernel (``layer1.0.conv2.weight``: (C * d, d, 3, 3) for cardinality C and d channels per group)."""
    blocks = [len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{s}.")}) for s in (1, 2, 3, 4)]
    kind = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    grouped = tuple(getattr(state_dict.get("layer1.0.conv2.weight"), "shape", ()))[:2] if kind == "bottleneck" else ()
    cardinality, width = (grouped[0] // grouped[1], grouped[1]) if len(grouped) == 2 and grouped[0] != grouped[1] \
        and grouped[1] else (0, 0)
    for depth, (k, layers) in spec.ARCHS.items():
        if (k, tuple(layers)) == (kind, tuple(blocks)):
            arch = spec.Arch(depth, 1, "torchvision", cardinality, width)
            if not cardinality or arch.name in spec.RESNEXT:
                return arch
    raise UserValueError(f"not a torchvision ResNet or ResNeXt state_dict: {kind} blocks per stage {blocks}"
                         + (f", {cardinality} groups of {width} channels" if cardinality else "")
                         + f" match none of {', '.join(spec.ARCH_NAMES)}")


def _numpy(key: str, value) -> np.ndarray:
    """One ``state_dict`` entry as a float32 array; ``ValueError`` naming it if it is not a
    real floating-point tensor or array."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()
    try:
        value = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise UserValueError(f"state_dict entry {key!r} is not an array ({err})") from None
    if value.dtype.kind != "f":
        raise UserValueError(f"state_dict entry {key!r} holds {value.dtype} values, not real floating point")
    return value.astype(np.float32)


def from_torchvision(state_dict, arch=None) -> dict[str, np.ndarray]:
    """A torchvision-format ``state_dict`` (tensors or arrays) as canonical weights of the
    torchvision flavour; ``num_batches_tracked`` is dropped. Missing, unexpected or mis-shaped
    entries and values that are not finite real floating point raise ``ValueError`` naming them."""
    if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
        raise UserValueError(f"a state_dict is a dict of tensors, not a {type(state_dict).__name__}")
    odd = [k for k in state_dict.keys() if not isinstance(k, str)]
    if odd:
        raise UserValueError(f"state_dict keys are names (str), not {odd[0]!r}")
    state_dict = {k: v if k.endswith("num_batches_tracked") else _numpy(k, v) for k, v in state_dict.items()}
    arch = torchvision_arch(state_dict) if arch is None else \
        spec.get_arch(arch, flavour=None if isinstance(arch, spec.Arch) else "torchvision")
    try:
        num_classes, in_channels = (int(state_dict["fc.weight"].shape[0]), int(state_dict["conv1.weight"].shape[1]))
    except KeyError as err:
        raise UserValueError(f"not a torchvision ResNet state_dict: no {err.args[0]}") from None
    except IndexError:
        raise UserValueError("not a torchvision ResNet state_dict: fc.weight and conv1.weight must be matrices "
                             "and 4-d kernels") from None
    if min(num_classes, in_channels) < 1:
        raise UserValueError(f"not a torchvision ResNet state_dict: {num_classes} classes, {in_channels} input "
                             f"channels")
    keys = torchvision_keys(arch, num_classes, in_channels)
    known = set(keys.values())
    problems = [f"missing {tv}" for tv in keys.values() if tv not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in known and not k.endswith("num_batches_tracked")]
    if problems:
        raise UserValueError(f"state_dict does not fit torchvision's {arch.name}: " + "; ".join(problems[:8])
                             + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else ""))
    weights = {name: state_dict[tv] for name, tv in keys.items()}
    check_weights(weights, num_classes, in_channels, arch)
    return weights


def to_torchvision(weights: dict[str, np.ndarray], arch="resnet18") -> dict[str, np.ndarray]:
    """Canonical weights of the torchvision flavour as a torchvision-format dict of arrays."""
    num_classes, in_channels = infer_config(weights)
    return {tv: np.asarray(weights[name]) for name, tv in torchvision_keys(arch, num_classes, in_channels).items()}


def torchvision_to_npz(state_dict, path: str | os.PathLike, arch=None) -> Path:
    """Write a torchvision ``state_dict`` as a neutral weights file (loads in every backend's
    ``resnet(..., flavour="torchvision")`` with ``load_weights``)."""
    arch = torchvision_arch(state_dict) if arch is None else \
        spec.get_arch(arch, flavour=None if isinstance(arch, spec.Arch) else "torchvision")
    return save_npz(path, from_torchvision(state_dict, arch), arch)
