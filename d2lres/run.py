"""One training run of one backend, as ``d2lres train`` does it: data, the same initial
weights (a seeded neutral file), the shared loop with checkpoints, and the outputs
``metrics.json``, ``curves.png``, ``weights.npz`` in the run folder.

A run folder is d2lres's or it is refused (``files.inspect_folder``: new, empty, or marked by
``.d2lres-run.json`` as a run of the same kind), and belongs to one run at a time
(``guard.run_folder``: an ``fcntl.flock`` on its ``.lock`` file). :func:`train` checks everything
before it creates, removes or writes anything, in the order ``d2lres.util.guard`` owns. An
existing run (a checkpoint or ``metrics.json``) is continued only with ``resume=True`` and
replaced only with ``overwrite=True``. The checkpoint records the run's identity
(:func:`run_identity`: backend, architecture, settings, data slice, initial weights); resuming
refuses another one, naming each difference.

``python -m d2lres.run JOB`` runs one run that :func:`launch` started (``d2lres compare``, per
backend; ``d2lres train --devices``): a :class:`RunDescription` as a JSON job."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import data, parallel, spec, training
from . import weights as neutral
from .core.description import CHECKPOINT_EVERY, SYNC_BN_DEFAULT, RunDescription
from .core.presets import TrainConfig
from .host import backends, process
from .loop.callbacks import Checkpoints, Curves, D2lLines, ExpectedTime, ProgressBar, ReportSteps, StopOnSignal
from .loop.engine import Loop
from .util import files, guard, stamps
from .util.guard import CHECKPOINT_DIR, RunError

#: The files a finished run leaves in its folder (besides ``checkpoint/``).
OUTPUTS = ("metrics.json", "weights.npz", "curves.png")


#: What each time of ``metrics.json`` includes.
TIMING = {"wall_seconds": "this process's run after the framework's import: building the network, loading and "
                          "resizing the data, training (compilation included) and evaluation",
          "images_per_s": "training images per second of the training steps alone (the first step's "
                          "compilation included; evaluation and checkpoints not)"}


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()[:16]


def init_digest(weights: dict[str, np.ndarray]) -> str:
    """The digest of initial weights that a run's identity records."""
    return _digest(weights[k] for k in sorted(weights))


def run_identity(run: RunDescription, init_weights: dict[str, np.ndarray] | None = None) -> dict:
    """What makes ``run`` the run it is, as a flat JSON-able dict: backend, architecture, training
    settings, data slice (limit, image counts, a digest of the images and labels used) and initial
    weights (the seed, or a digest of the ``--init`` arrays ``init_weights``)."""
    arch, limit = run.arch, run.limit
    dataset = data.FashionMNIST.load(run.data_dir)
    (x_train, y_train), (x_test, y_test) = dataset.raw[True], dataset.raw[False]
    sliced = [a[:limit] for a in (x_train, y_train, x_test, y_test)]
    init = "seed" if init_weights is None else init_digest(init_weights)
    return {"backend": run.backend, "arch": arch.name, "version": arch.version,
            "flavour": arch.flavour, **run.config.to_dict(), "limit": limit, "train_images": len(sliced[1]),
            "test_images": len(sliced[3]), "data": _digest(sliced), "init": init}


def check_batches(n_images: int, batch_size: int, resize: int | None, arch, test_images: int = 0) -> None:
    """Refuse training batches that cannot run: the smallest one (the last, or the only one) where
    the BatchNorm layer with the fewest positions per channel (``spec.batchnorm_sizes`` at this
    image size) would see a single value per channel; a batch whose activations would not fit
    in the available memory (``memory.require``); and the ``n_images`` training and ``test_images``
    test images resized, if they would not (``data.batches.require_memory``)."""
    from .data.batches import require_memory
    from .util import memory
    side = resize or 28
    spec.check_input((1, side, side), 1)
    sizes = spec.batchnorm_sizes((side, side), 10, 1, arch)
    layer = min(sizes, key=sizes.get)
    smallest = n_images if n_images < batch_size else (n_images % batch_size or batch_size)
    if smallest * sizes[layer] < 2:
        raise RunError(f"the {'only' if n_images <= batch_size else 'last'} training batch would hold {smallest} "
                       f"image of {side}x{side} ({n_images} image(s), batch size {batch_size}), which gives BatchNorm "
                       f"layer {layer} a single value per channel (it cannot train on that); change --batch-size or "
                       f"--limit, or a larger --resize")
    batch = min(batch_size, n_images)
    memory.require(3 * memory.activations_bytes(batch, spec.walk((1, side, side), 10, arch)),
                   f"training a batch of {batch} images of {side}x{side} (activations and their gradients)",
                   "use a smaller --batch-size or --resize")
    require_memory(n_images, side, True)
    if test_images:
        require_memory(test_images, side, False)


def train(backend: str, config: TrainConfig, out: str | Path, *, arch=None, init: str | Path | None = None,
          data_dir=None, resume: bool = False, overwrite: bool = False, progress: bool = True,
          limit: int | None = None, checkpoint_every: int = CHECKPOINT_EVERY, devices: int = 1,
          sync_bn: bool = SYNC_BN_DEFAULT) -> dict:
    """Train ``arch`` (default ResNet-18) in ``backend`` with ``config`` in the run folder ``out``;
    returns (and writes) the metrics: :func:`execute` of the run these values describe
    (``RunDescription.create``, which normalises the names once)."""
    return execute(RunDescription.create(backend, config, out, arch=arch, init=init, data_dir=data_dir,
                                         resume=resume, overwrite=overwrite, progress=progress, limit=limit,
                                         checkpoint_every=checkpoint_every, devices=devices, sync_bn=sync_bn))


def execute(run: RunDescription, *, report_steps: Callable[[], None] | None = None) -> dict:
    """Train the run ``run`` describes; returns (and writes) the metrics. ``resume`` continues the
    run in ``out`` (which must have a checkpoint of the same run); ``overwrite`` replaces a run
    found there, once every check has passed (``d2lres.util.guard``: a refused run leaves the folder
    as it was). ``report_steps``: called after each step instead of drawing a bar (``d2lres compare``'s
    bar across backends).

    ``devices > 1``, or a process of a multi-process launcher (``parallel.launched``), trains
    data-parallel with the backend's ``ParallelTrainer`` (``sync_bn``: synchronized BatchNorm) in a
    process that ``parallel.launch_command`` set up. Only rank 0 (``parallel.process_rank``) holds
    the folder and writes; the others read the checkpoint to resume. Synchronized, the run is the
    one-device run with the same global batch, so it is the same run (identity) on any number of
    devices, and its checkpoint resumes on any."""
    if run.resume and run.overwrite:
        raise RunError("--resume and --overwrite exclude each other: continue the run, or replace it")
    if run.limit is not None and run.limit < 1:
        raise RunError(f"--limit must be >= 1, got {run.limit}")
    if run.devices < 1:
        raise RunError(f"--devices must be >= 1, got {run.devices}")
    if not run.sync_bn and run.devices == 1 and not parallel.launched():
        raise RunError("--no-sync-bn is for data-parallel runs: on one device BatchNorm sees the whole batch; "
                       "pass --devices N (N > 1) with it, or leave it out")

    def inputs():
        backends.require(run.backend)
        init_weights = neutral.load_npz(run.init) if run.init is not None else None
        if init_weights is not None:
            neutral.check_arch(init_weights, run.arch, run.init)
        identity = run_identity(run, init_weights)
        check_batches(identity["train_images"], run.config.batch_size, run.config.resize, run.arch,
                      identity["test_images"])
        return init_weights, identity

    def state(out: Path, value) -> guard.Plan:
        return folder_plan(out, value[1], resume=run.resume, overwrite=run.overwrite)

    process.configure(run.backend)  # a multi-process run's strategy or coordinator, before the backend computes
    writer = parallel.process_rank() == 0
    with guard.validated(run.out, "train", inputs, state, writer=writer) as (out, (init_weights, identity), plan):
        if plan.found is not None:
            print(f"{run.backend}: the run in {out} is complete already; its metrics are unchanged")
            return plan.found
        return _train(run, out, init_weights, identity, report_steps=report_steps, writer=writer)


def folder_plan(out: Path, identity: dict, *, resume: bool, overwrite: bool) -> guard.Plan:
    """What the run folder ``out`` holds against the run ``identity`` (reading only): a run there is
    continued only with ``resume`` (the same run; ``found``: its metrics if it is finished) and
    replaced only with ``overwrite`` (``remove``: its files)."""
    checkpoint = out / CHECKPOINT_DIR / training.CHECKPOINT
    found = [str(p.relative_to(out)) for p in (checkpoint, out / "metrics.json") if p.exists()]
    if resume and not checkpoint.exists():
        raise RunError(f"--resume: no checkpoint in {out} (no {checkpoint.relative_to(out)}); "
                       f"run without --resume to start the run")
    if found and not resume:
        if not overwrite:
            raise RunError(f"{out} holds a run already ({', '.join(found)}); pass --resume to continue it, "
                           f"--overwrite to replace it, or choose another --out")
        return guard.Plan(remove=(checkpoint, *(out / name for name in OUTPUTS)))
    if not resume:
        return guard.Plan()
    differences = training.identity_differences(training.read_identity(out / CHECKPOINT_DIR), identity)
    if differences:
        raise RunError(f"--resume: the checkpoint in {out} belongs to another run: {'; '.join(differences)}. "
                       f"Resume with the run's own options, or pass --overwrite to start again")
    return guard.Plan(found=_finished_metrics(out, identity))


def _finished_metrics(out: Path, identity: dict) -> dict | None:
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and metrics.get("run") == identity else None


def curves_title(arch, backend: str, config: TrainConfig, limit: int | None, trainer) -> str:
    """The network, backend, device and settings of a run, for its curves."""
    from .host.devices import describe
    device = getattr(trainer, "device_label", None) or describe(trainer.device, backend).split(" (")[0]
    return settings_line(f"{arch} in {backend} on {device}", config, limit)


def settings_line(head: str, config: TrainConfig, limit: int | None) -> str:
    """``head``, then the settings of ``config`` and the data slice on a second line."""
    c = config
    return (f"{head}\n{c.epochs} epoch(s), batch {c.batch_size}, {f'resize {c.resize}' if c.resize else '28x28'}, "
            f"lr {c.lr} ({c.schedule}), momentum {c.momentum}, weight decay {c.weight_decay}, seed {c.seed}"
            + (f", {c.precision}" if c.precision != "float32" else "")
            + (f", first {limit:,} images of each split" if limit else ""))


def _train(run: RunDescription, out: Path, init_weights, identity, *, report_steps, writer) -> dict:
    backend, arch, config = run.backend, run.arch, run.config
    mod = backends.load(backend)
    tic = time.perf_counter()
    net = mod.ResNet(arch=arch)
    if init_weights is not None:
        try:
            mod.set_weights(net, init_weights)
        except ValueError as err:
            raise RunError(f"--init {run.init}: {err}; pass weights of {arch} (or the matching --arch)") from None
    else:
        mod.init_weights(net, config.seed)
    options = {"momentum": config.momentum, "weight_decay": config.weight_decay, "device": mod.try_gpu(),
               "precision": config.precision}
    if run.devices > 1 or parallel.launched():
        trainer = parallel.backend_module(backend).ParallelTrainer(net, sync_bn=run.sync_bn, **options)
        if run.devices > 1 and trainer.replicas != run.devices:  # under a launcher, its processes decide
            raise RunError(f"--devices {run.devices}: this process was set up for {trainer.replicas} replica(s) (by "
                           f"its launcher, or d2lres.parallel.launch_command); under a launcher leave --devices out, "
                           f"its processes decide")
    else:
        trainer = mod.Trainer(net, **options)
    train_iter, test_iter = data.load_batches(config.batch_size, config.resize, trainer.convert,
                                              data_dir=run.data_dir, seed=config.seed, limit=run.limit)
    lr = (training.one_cycle(config.lr, config.epochs * len(train_iter)) if config.schedule == "onecycle"
          else config.lr)
    history = Loop(trainer, train_iter, test_iter, config.epochs, lr).run(
        callbacks(run, out, identity, curves_title(arch, backend, config, run.limit, trainer), report_steps, writer))
    weights = trainer.get_weights()
    last = history["epochs"][-1]
    metrics = {"backend": backend, "arch": str(arch), "config": config.to_dict(), "limit": run.limit,
               "device": history["device"], "devices": getattr(trainer, "replicas", 1),
               "sync_bn": getattr(trainer, "sync_bn", None), "train_loss": last["train_loss"],
               "train_acc": last["train_acc"],
               "test_acc": last["test_acc"],
               "images_per_s": sum(e["images_per_s"] for e in history["epochs"]) / len(history["epochs"]),
               "wall_seconds": time.perf_counter() - tic, "first_step_loss": history["first_step_loss"],
               "run": identity, "init": None if run.init is None else str(run.init), "timing": TIMING,
               "stamps": stamps.stamps([backend], data.data_stamp(run.data_dir)),
               "history": history, "curves": str(out / "curves.png"), "weights": str(out / "weights.npz")}
    if writer:
        neutral.save_npz(out / "weights.npz", weights, arch)
        files.atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=1).encode()))
    return metrics


# --- the per-backend job of ``d2lres compare`` --------------------------------------------------

def callbacks(run: RunDescription, out: Path, identity: dict, title: str, report_steps, writer: bool) -> list:
    """What surrounds the loop of a run in its folder ``out``: the bar and the expected time, or
    ``report_steps``, checkpoints (resumed with ``run.resume``), the curves, a stop on a signal, d2l's
    closing lines. Only the process that writes (``writer``) shows or writes anything."""
    chosen = []
    if writer and report_steps is not None:
        chosen.append(ReportSteps(report_steps))
    elif writer and run.progress:
        chosen += [ProgressBar(), ExpectedTime()]
    chosen.append(Checkpoints(out / CHECKPOINT_DIR, every=run.checkpoint_every, resume=run.resume, identity=identity,
                              write=writer))
    if writer:
        chosen.append(Curves(out / "curves.png", title))
    chosen.append(StopOnSignal())
    if writer:
        chosen.append(D2lLines())
    return chosen


def launch(run: RunDescription, *, label: str | None = None, env: dict | None = None,
           child: dict | None = None) -> dict:
    """The run ``run`` in the process(es) that ``parallel.launch_command`` sets up for its backend's
    engine on ``run.devices`` devices (``python -m d2lres.run JOB``, the job ``run.to_job()``; ``env``
    on top of their environment, ``child``: ``signals.run_child``'s other arguments); returns its
    metrics. Its error is raised here as :class:`RunError` with the job's own message (``label: ``
    before it); a signal, as ``signals.Interrupted`` where the job stopped (``label``'s step).
    ``d2lres train --devices`` and each backend of ``d2lres compare`` start their runs with it."""
    import tempfile

    from .util import jobs, signals
    with tempfile.TemporaryDirectory(prefix="d2lres-job-") as tmp:
        error_file = Path(tmp) / "error"
        argv, launch_env = parallel.launch_command(run.backend, run.devices,
                                                   {**run.to_job(), jobs.ERROR_FILE: str(error_file)})
        status = signals.run_child(argv, env=process.overlay(launch_env, env or {}), **(child or {}))
        if status:
            where, detail, resumable = jobs.stopped_at(error_file)
            if label is not None:
                where = f"{label}'s {where}" if where else label
            signals.check(where, detail, resumable)
            error = (jobs.failure(error_file)
                     or f"training in {run.backend} failed (exit status {status}; its error is above)")
            raise RunError(f"{label}: {error}" if label is not None else error)
    return json.loads((run.out / "metrics.json").read_text())


def main(argv=None) -> int:
    """``python -m d2lres.run JOB``: run one job that :func:`launch` started (``jobs.main``: errors as
    ``d2lres train``'s, on stderr or into the job's error file, for the caller to report)."""
    from .util import jobs
    parallel.die_with_launcher()

    def work(job) -> int:
        from .loop.progress import step_reporter
        # d2lres compare's bar across backends, when it started this job
        metrics = execute(RunDescription.from_job(job), report_steps=step_reporter())
        if parallel.process_rank() == 0:
            print(f"test accuracy {metrics['test_acc']:.4f}")
        return 0
    return jobs.main(sys.argv[1:] if argv is None else argv, work, writes=parallel.process_rank() == 0)


if __name__ == "__main__":
    sys.exit(main())
