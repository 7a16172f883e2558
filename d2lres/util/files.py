"""Files written whole or not at all: the one atomic writer of d2lres (weights, checkpoints,
metrics, reports, data files). A temporary file beside the target is renamed over it, so a
reader never sees half a file; its mode follows the user's umask like any new file; a killed
writer's leftover temporary files are removed by :func:`remove_stale_temporaries`."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from ..errors import UserError

#: Temporary files are named ``.<target>.<random>.tmp``.
TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file object for ``path``: on success it replaces ``path``, else it is deleted."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as err:  # name the target, not the temporary file or a folder above it
        raise OSError(err.errno, _reason(err, path.parent), str(path)) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is not
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, _reason(err, path.parent), str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reason(err: OSError, folder: Path) -> str:
    """``err``'s reason, with a read-only file system told apart from a missing permission."""
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and read_only(folder):
        return "Read-only file system"
    return err.strerror or str(err)


def read_only(path: str | os.PathLike) -> bool:
    """Whether the nearest existing folder at or above ``path`` is on a read-only mount."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it over ``path``."""
    with atomic_open(path) as f:
        write(f)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``Path(path).write_text(text)`` (UTF-8), whole or not at all."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed writer left in ``directory``; returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# --- folders that d2lres writes into --------------------------------------------------------------

#: The file that marks a folder as one of d2lres's runs, with its kind.
MARKER = ".d2lres-run.json"
#: What d2lres itself writes into a run folder of each kind (besides ``MARKER`` and temporaries).
OWN_FILES = {
    "train": (".lock", "checkpoint", "metrics.json", "weights.npz", "curves.png"),
    "compare": (".lock", "comparison.json", "init.npz", "checks.json", "curves.png", "report.json", "report.md",
                "torch", "tf", "mxnet", "jax"),
}
#: Files that show an unmarked folder is a run of that kind written before the marker existed.
LEGACY_SIGNS = {"train": ("checkpoint/checkpoint.npz", "metrics.json"), "compare": ("report.json", "init.npz")}


class FolderError(UserError, ValueError):
    """A folder d2lres will not write into; the message names what is there and the options."""


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def folder_kind(folder: Path) -> str | None:
    """The kind of d2lres run ``folder`` holds (``"train"``/``"compare"``), by its marker or, for
    runs older than the marker, by the files only d2lres writes; ``None`` if it holds none."""
    marker = folder / MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        return kind if kind in OWN_FILES else None
    for kind, signs in LEGACY_SIGNS.items():
        if any((folder / sign).exists() for sign in signs):
            return kind
    return None


def inspect_folder(folder: str | os.PathLike, kind: str, *, option: str = "--out") -> Path:
    """The checks of :func:`claim_folder`, reading only: nothing is created or marked. Refused
    (:class:`FolderError`, naming what is there and the options): an empty path, the filesystem
    root, a home folder itself, a file, a run of the other kind, a folder holding files that are not
    a d2lres run, a folder (or, for a new one, the folder it would be made in) that cannot be written."""
    if str(folder) == "":
        raise FolderError(f"{option} is empty; name a folder for the run (or leave {option} out for the default)")
    folder = Path(folder).expanduser()
    resolved = folder.resolve()
    homes = {Path.home().resolve(), Path("/root")}
    if resolved == Path(resolved.anchor) or resolved in homes or resolved.parent == Path("/home"):
        what = "the filesystem root" if resolved == Path(resolved.anchor) else "a home folder"
        raise FolderError(f"{option} {folder} is {what}; d2lres writes a run into a folder of its own: "
                          f"name a new folder, e.g. {option} {folder / 'runs' / kind}")
    if folder.is_dir():
        found = folder_kind(folder)
        entries = [p.name for p in folder.iterdir() if p.name not in (MARKER, ".lock")
                   and not (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX))]
        if found is not None and found != kind:
            raise FolderError(f"{option} {folder} is a d2lres {found} folder ({_listing(entries)}), not a {kind} "
                              f"run; {'d2lres train' if kind == 'train' else 'd2lres compare'} would replace its "
                              f"files: choose another {option}")
        if found is None and entries:
            raise FolderError(f"{option} {folder} holds files that are not a d2lres {kind} run "
                              f"({_listing(entries)}); d2lres writes only into a new or empty folder or one of "
                              f"its own runs: choose another {option}, or move those files away")
    elif folder.exists():
        raise FolderError(f"{option} {folder} is a file, not a folder; choose a folder for the run")
    problem = unwritable(folder)
    if problem:
        raise FolderError(f"cannot use {folder} as a run folder ({problem}); choose another {option} or make it "
                          f"writable")
    return folder


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` (or, if it does not exist, the folder it would be made in) cannot be written, or
    ``None``: a file on the way, a read-only file system, or no permission."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    if os.access(path, os.W_OK | os.X_OK):
        return None
    return "Read-only file system" if read_only(path) else "Permission denied"


def claim_folder(folder: str | os.PathLike, kind: str, *, option: str = "--out") -> Path:
    """Check that d2lres may write a ``kind`` run into ``folder`` (:func:`inspect_folder`), then
    create it and mark it as one."""
    folder = inspect_folder(folder, kind, option=option)
    if (folder / MARKER).is_file():
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        from .. import __version__
        atomic_write(folder / MARKER, lambda f: f.write(json.dumps(
            {"kind": kind, "d2lres": __version__}).encode()))
    except OSError as err:
        raise FolderError(f"cannot use {folder} as a run folder ({err.strerror or err}); choose another "
                          f"{option} or make it writable") from None
    return folder
