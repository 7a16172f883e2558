"""One training run described once: what ``d2lres train`` (or one backend of ``d2lres compare``) was
asked, parsed at the edge into a :class:`RunDescription` that flows down unchanged.

The command line builds it from its options (each parsed by argparse once); a library caller's
strings are normalised once by :meth:`RunDescription.create`. A process that d2lres starts for
a run receives it through the job protocol (``d2lres.util.jobs``): :meth:`RunDescription.to_job`
gives the JSON object that ``jobs.command`` writes, :meth:`RunDescription.from_job` checks and
rebuilds it from the object that ``jobs.main`` read."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import spec
from ..errors import UserValueError
from ..host import backends
from ..util.guard import RunError
from ..util.jobs import ERROR_FILE
from .presets import TrainConfig

#: Synchronized BatchNorm in a data-parallel run unless asked otherwise (``d2lres.loop.split``).
SYNC_BN_DEFAULT = True
#: Steps between checkpoints unless asked otherwise.
CHECKPOINT_EVERY = 100


@dataclass(frozen=True)
class RunDescription:
    """A training run: ``backend`` (canonical name), ``arch``, ``config`` (the settings, precision
    included), ``out`` (the run folder), the initial weights ``init`` (a neutral ``.npz``; None: the
    seeded scheme), the data (``data_dir``, ``limit`` images of each split), what to do with a run in
    ``out`` (``resume``, ``overwrite``), ``checkpoint_every`` steps, ``devices`` and ``sync_bn``, and
    whether to draw a ``progress`` bar."""
    backend: str
    arch: spec.Arch
    config: TrainConfig
    out: Path
    init: Path | None = None
    data_dir: Path | None = None
    limit: int | None = None
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = CHECKPOINT_EVERY
    devices: int = 1
    sync_bn: bool = SYNC_BN_DEFAULT
    progress: bool = True

    @classmethod
    def create(cls, backend: str, config: TrainConfig, out, *, arch=None, init=None, data_dir=None,
               **options) -> "RunDescription":
        """From a library caller's values: the backend's name in any spelling, ``arch`` as anything
        ``spec.get_arch`` takes, paths as strings; the one place they are normalised."""
        return cls(backends.canonical(backend), spec.get_arch(arch), config, Path(out), _path(init), _path(data_dir),
                   **options)

    def to_job(self) -> dict:
        """The JSON object of this run for a process that d2lres starts (:meth:`from_job` reads it)."""
        return {"backend": self.backend, "arch": arch_job(self.arch), "config": self.config.to_dict(),
                "out": str(self.out), "init": _text(self.init), "data_dir": _text(self.data_dir),
                **{k: getattr(self, k) for k in _OPTIONS if k not in ("init", "data_dir")}}

    @classmethod
    def from_job(cls, job) -> "RunDescription":
        """The run of a job that :meth:`to_job` wrote (the object ``jobs.main`` read, or its text where
        it was not JSON); anything else (missing or unknown keys, values of the wrong type) raises
        :class:`RunError`."""
        if isinstance(job, str):
            return _bad("not JSON")
        if not isinstance(job, dict):
            return _bad(f"a JSON {type(job).__name__}, not an object")
        job = {k: v for k, v in job.items() if k != ERROR_FILE}
        missing = [k for k in _REQUIRED if k not in job]
        unknown = [k for k in job if k not in (*_REQUIRED, *_OPTIONS)]
        if missing or unknown:
            _bad("; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                         unknown and f"unknown {', '.join(map(repr, unknown))}"])))
        for key, kinds in _OPTIONS.items():
            value = job.get(key)
            if key in job and not (value is None and None in kinds or type(value) in kinds):
                _bad(f"{key} is {value!r}")
        backend, arch, config, out = (job.pop(k) for k in _REQUIRED)
        if not (backend in backends.BACKENDS and isinstance(out, str) and isinstance(config, dict)):
            _bad("backend, out or config of the wrong type")
        try:
            config, arch = TrainConfig(**config), arch_from_job(arch)
        except (TypeError, ValueError) as err:
            _bad(f"config or arch: {err}")
        return cls(backend, arch, config, Path(out), _path(job.pop("init", None)), _path(job.pop("data_dir", None)),
                   **job)


#: The keys every job has, and the others with the JSON types each may have (``None``: null allowed).
_REQUIRED = ("backend", "arch", "config", "out")
_OPTIONS = {"init": (str, None), "data_dir": (str, None), "limit": (int, None), "resume": (bool,),
            "overwrite": (bool,), "checkpoint_every": (int,), "devices": (int,), "sync_bn": (bool,),
            "progress": (bool,)}


def arch_job(arch: spec.Arch) -> list:
    """``[name, version, flavour]``: an architecture in a job (:func:`arch_from_job` reads it back)."""
    return [arch.name, arch.version, arch.flavour]


def arch_from_job(value) -> spec.Arch:
    """The architecture :func:`arch_job` wrote; ``ValueError`` for any other value."""
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and type(value[1]) is int
            and isinstance(value[2], str)):
        raise UserValueError(f"architecture {value!r} is not [name, version, flavour]")
    try:
        return spec.get_arch(*value)
    except ValueError:
        raise UserValueError(f"architecture {value!r} is not one of the family's") from None


def _bad(problem: str):
    raise RunError(f"the job of d2lres.run is not one that d2lres wrote ({problem}); start training with "
                   f"d2lres train or d2lres compare")


def _path(value) -> Path | None:
    return None if value is None else Path(value)


def _text(value) -> str | None:
    return None if value is None else str(value)
