"""``d2lres compare``: train every backend from the same initial weights and batch order (one
process per backend, so thread pools and memory do not mix), then write ``report.md`` with
the results table, overlaid curves and the cross-backend checks.

A compare folder is one comparison (``comparison.json``: the backends, the network, the settings,
the data slice and the initial weights): another one there is refused unless ``--overwrite``, and
every check (each backend's run folder included) passes before anything is written
(``d2lres.util.guard``)."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from .. import data, run, spec
from .. import weights as neutral
from ..checks import BF16_ERROR_CONSTANTS, UNIT_ROUNDOFF
from ..core import precision as precisions
from ..core.description import SYNC_BN_DEFAULT, RunDescription
from ..core.presets import TrainConfig
from ..errors import UserError
from ..host import backends, isa
from ..loop.plots import curves_figure
from ..loop.progress import AcrossBackends
from ..run import CHECKPOINT_DIR, TIMING, settings_line
from ..training import CHECKPOINT
from ..util import guard, signals
from ..util.files import atomic_open, atomic_write, atomic_write_text, inspect_folder
from ..util.stamps import describe as describe_stamps
from ..util.stamps import stamps

#: What the report requires of every pair of backends after training.
FIRST_STEP_TOLERANCE = 1e-4
TEST_ACC_SPREAD = 0.015
#: The same in each precision: in bf16 the first-step losses may differ by the checks' bf16 pair
#: bound on the loss at its floor (2 C 2^-8, relative to max(1, loss); ``d2lres.checks``).
PARITY = {"float32": {"first_step_loss": FIRST_STEP_TOLERANCE, "test_acc_spread": TEST_ACC_SPREAD},
          "bf16": {"first_step_loss": 2 * BF16_ERROR_CONSTANTS["step_loss"] * UNIT_ROUNDOFF["bf16"],
                   "test_acc_spread": TEST_ACC_SPREAD}}
#: A run with fewer training images, or a test accuracy below this, is a smoke run: no verdict.
SMOKE_IMAGES = 5000
SMOKE_ACCURACY = 0.2  # twice chance (ten classes)


#: What the report's total wall time includes.
TOTAL_TIME = "everything: each backend's process start and import, training, and the cross-backend checks"
#: The file that records a compare folder's comparison.
COMPARISON = "comparison.json"


class CompareError(UserError, ValueError):
    """A backend's training failed (its own error line is printed above)."""


def _train_in_subprocess(description: RunDescription, init: Path, *, bar: AcrossBackends, held: str) -> dict:
    """One backend's run (``description``, from the initial weights ``init``) in its own process(es)
    (``run.launch``): a run in its folder (checked by :func:`compare_training`) is continued."""
    backend, out = description.backend, description.out
    resume = (out / CHECKPOINT_DIR / CHECKPOINT).exists()
    bar.bar.write(f"== {backend}: {'resuming ' if resume else ''}{description.arch} in {out}")
    env, fds = bar.start(backend)
    try:
        # progress: the bar across backends, or none (not each job's own)
        return run.launch(replace(description, init=init, resume=resume, progress=bar.enabled), label=backend,
                          env={**isa.isa_env(held), **env}, child={"pass_fds": fds, "started": bar.started})
    except run.RunError as err:
        raise CompareError(str(err)) from None
    finally:
        bar.finish()


def comparison_differences(saved: dict, now: dict) -> list[str]:
    """``"key: folder A, now B"`` for each entry of two comparisons (:data:`COMPARISON`) that differs."""
    flat = [{"backends": ", ".join(sorted(c.get("backends", []))), **c.get("run", {})} for c in (saved, now)]
    return [f"{k}: folder {flat[0].get(k)}, now {flat[1].get(k)}"
            for k in dict.fromkeys([*flat[0], *flat[1]]) if flat[0].get(k) != flat[1].get(k)]


def recorded_comparison(out: Path) -> dict | None:
    """The comparison a compare folder holds: its :data:`COMPARISON`, or for a folder written before
    that file, its ``report.json``'s backends and runs; ``None`` if it records none."""
    try:
        return json.loads((out / COMPARISON).read_text())
    except (OSError, ValueError):
        pass
    try:
        results = json.loads((out / "report.json").read_text())["results"]
        run = dict(next(iter(results.values()))["run"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration):
        return None
    run.pop("backend", None)
    return {"backends": list(results), "run": run}


def compare_training(config: TrainConfig, out: str | Path, names=None, *, arch=None,
                     data_dir=None, limit: int | None = None, checks: bool = True, overwrite: bool = False,
                     progress: bool = True, held: str = "native", devices: int = 1,
                     sync_bn: bool = SYNC_BN_DEFAULT) -> Path:
    """Train each backend (``names``; default: every one available), then write ``out/report.md``,
    ``out/curves.png``, ``out/report.json``. A backend's finished run of the same comparison is
    reused (the report says so), an interrupted one continued; another comparison in ``out`` is
    refused, naming what differs, unless ``overwrite``.
    ``progress``: one bar over every backend's steps, and the expected time once the first
    backend's steps are measured; ``held``: the instruction set every backend's process is held
    to (``d2lres.host.isa``), recorded with the CPU in the report; ``devices``/``sync_bn``: data-parallel
    training in every backend (``d2lres.run.train``)."""
    arch = spec.get_arch(arch)  # the edge: anything spec.get_arch takes
    names = mixed_backends(distinct(names or backends.available()), config.precision, chosen=bool(names))
    tic = time.perf_counter()
    # each backend's run; its folder is the one inside the checked compare folder (below)
    data_path = None if data_dir is None else Path(data_dir)
    descriptions = {n: RunDescription(n, arch, config, Path(out, n), data_dir=data_path, limit=limit, devices=devices,
                                      sync_bn=sync_bn) for n in names}

    def inputs():
        for n in names:
            backends.require(n)
        source = data.fetch_fashion_mnist(data_dir).source
        init = neutral.init_weights(seed=config.seed, arch=arch)  # the same weights for every backend
        runs = {n: run.run_identity(descriptions[n], init) for n in names}
        first = runs[names[0]]
        run.check_batches(first["train_images"], config.batch_size, config.resize, arch, first["test_images"])
        common = {k: v for k, v in first.items() if k != "backend"}
        return source, init, runs, {"backends": names, "run": common}

    def state(out: Path, value) -> guard.Plan:
        _, _, runs, comparison = value
        saved = recorded_comparison(out)
        differences = comparison_differences(saved, comparison) if saved is not None else []
        if differences and not overwrite:
            raise CompareError(f"{out} holds another comparison: {'; '.join(differences)}. A compare folder is one "
                               f"comparison: choose another --out, or pass --overwrite to replace it")
        init = out / "init.npz"
        if not overwrite and init.exists() and run.init_digest(neutral.load_npz(init)) != comparison["run"]["init"]:
            raise CompareError(f"{init} holds other initial weights than seed {config.seed} gives {arch}: the folder "
                               f"is another comparison; choose another --out, or pass --overwrite to replace it")
        remove, reused = [], {}
        if overwrite:
            remove += [out / name for name in (COMPARISON, "init.npz", "checks.json", "curves.png", "report.json",
                                                "report.md")]
        for n in backends.BACKENDS:
            folder = out / n
            if n not in names and not (overwrite and folder.is_dir()):
                continue
            try:
                inspect_folder(folder, "train", option=f"the {n} run folder {folder} (--out)")
            except UserError as err:
                raise CompareError(f"{n}: {err}") from None
            guard.refuse_if_held(folder)
            resume = not overwrite and (folder / CHECKPOINT_DIR / CHECKPOINT).exists()
            try:
                plan = run.folder_plan(folder, runs.get(n, {}), resume=resume, overwrite=overwrite)
            except UserError as err:
                raise CompareError(f"{n}: {err}") from None
            remove += plan.remove
            if plan.found is not None:
                reused[n] = plan.found
        return guard.Plan(remove=tuple(remove), found=reused)

    with guard.validated(out, "compare", inputs, state) as (out, (source, init_weights, runs, comparison), plan):
        print(f"data: {source}")
        reused = plan.found
        if not (out / COMPARISON).exists():
            atomic_write_text(out / COMPARISON, json.dumps(comparison, indent=1))
        init = out / "init.npz"
        if not init.exists():
            neutral.save_npz(init, init_weights, arch)
        steps = config.epochs * -(-runs[names[0]]["train_images"] // config.batch_size)
        results = {}
        with AcrossBackends({n: steps for n in names if n not in reused}, enabled=progress) as bar:
            for n in names:
                if n in reused:
                    bar.bar.write(f"== {n}: its finished run in {out / n} is reused (not trained again)")
                    results[n] = {**reused[n], "reused": True}
                    continue
                try:
                    results[n] = _train_in_subprocess(replace(descriptions[n], out=out / n), init, bar=bar,
                                                      held=held)
                except signals.Interrupted as err:
                    err.detail = "; ".join(filter(None, [
                        err.detail, f"finished: {', '.join(results) or 'none'}",
                        f"not started: {', '.join(names[len(results) + 1:]) or 'none'}"]))
                    raise
        signals.check("the report", f"every backend finished ({', '.join(names)}), no report written", True)
        check_md = ""
        if checks:
            status = signals.run_child([sys.executable, "-m", "d2lres", "check", "--json", str(out / "checks.json"),
                                        "--backends", *names, "--arch", arch.name, "--version", str(arch.version),
                                        "--flavour", arch.flavour, "--precision", config.precision],
                                       forward=False, stdout=subprocess.DEVNULL)
            signals.check("the cross-backend checks", f"every backend finished ({', '.join(names)}), no report "
                          f"written", True)
            if status not in (0, 1):  # 1: checks ran and failed, which the report shows
                raise CompareError(f"the cross-backend checks failed to run (exit status {status})")
            check_md = json.loads((out / "checks.json").read_text())["table"]
        title = settings_line(f"{arch}: {', '.join(names)}", config, limit)
        fig = curves_figure({n: r["history"] for n, r in results.items()}, title)
        with atomic_open(out / "curves.png") as f:
            fig.savefig(f, dpi=110, format="png")
        summary = parity(results, config.precision)
        summary["wall_seconds"] = time.perf_counter() - tic
        stamp = stamps(names, data.data_stamp(data_dir), held)
        cpu = stamp["cpu"]
        report = {"arch": str(arch), "config": config.to_dict(), "limit": limit, "cpu": cpu, "parity": summary,
                  "stamps": stamp, "timing": {**TIMING, "total wall_seconds": total_time(results)},
                  "results": {n: {k: v for k, v in r.items() if k != "history"} for n, r in results.items()}}
        atomic_write(out / "report.json", lambda f: f.write(json.dumps(report, indent=1).encode()))
        text = render(config, results, summary, check_md, arch=arch, limit=limit, cpu=cpu, stamp=stamp)
        atomic_write(out / "report.md", lambda f: f.write(text.encode()))
    return out / "report.md"


def total_time(results: dict[str, dict]) -> str:
    """What the report's total wall time includes: :data:`TOTAL_TIME`, less the backends whose finished
    run was reused (their own times are in the table)."""
    reused = [n for n, r in results.items() if r.get("reused")]
    if not reused:
        return TOTAL_TIME
    trained = [n for n in results if n not in reused]
    return ("this command: " + (f"training {', '.join(trained)} (each backend's process start and import "
                                f"included), " if trained else "no training, ")
            + f"the cross-backend checks; reused without training: {', '.join(reused)} (finished by an earlier "
              f"compare into this folder; the table gives the times of those runs)")


def mixed_backends(names: list[str], precision: str, chosen: bool) -> list[str]:
    """``names`` that train in ``precision``: the others are left out with a note when the
    backends were not ``chosen`` (every one installed), refused when they were."""
    if precision == precisions.DEFAULT:
        return names
    left = [n for n in names if n not in precisions.MIXED_BACKENDS]
    if left and chosen:
        raise CompareError(f"{', '.join(left)} cannot train in {precision} (see d2lres.{left[0]}.Trainer); leave "
                           f"{'it' if len(left) == 1 else 'them'} out of --backends")
    if left:
        print(f"d2lres: note: {', '.join(left)} left out: {'it trains' if len(left) == 1 else 'they train'} in float32 "
              f"only")
    return [n for n in names if n in precisions.MIXED_BACKENDS]


def distinct(names) -> list[str]:
    """The backends ``names`` (any spelling), each once; a note says so when one was named twice."""
    given = [backends.canonical(n) for n in names]
    unique = list(dict.fromkeys(given))
    twice = [n for n in unique if given.count(n) > 1]
    if twice:
        print(f"d2lres: note: {', '.join(twice)} named more than once in --backends; each backend is trained once "
              f"({', '.join(unique)})")
    return unique


def parity(results: dict[str, dict], precision: str = "float32") -> dict:
    """The parity figures of every pair of backends and the verdict against ``PARITY[precision]``:
    ``PASS``/``FAIL``, or ``None`` with the reason (``no_verdict``) for fewer than two backends or
    a smoke run. The first-step loss differences are relative to max(1, loss) in bf16, absolute in float32."""
    pairs = list(itertools.combinations(results, 2))
    scale = (lambda a, b: 1.0) if precision == "float32" else (
        lambda a, b: max(1.0, abs(results[a]["first_step_loss"]), abs(results[b]["first_step_loss"])))
    first = max((abs(results[a]["first_step_loss"] - results[b]["first_step_loss"]) / scale(a, b) for a, b in pairs),
                default=0.0)
    accs = [r["test_acc"] for r in results.values()]
    spread = max(accs) - min(accs)
    images = min(r["run"]["train_images"] for r in results.values())
    reason = None
    if len(results) < 2:
        reason = f"one backend ({', '.join(results)}): nothing to compare"
    elif images < SMOKE_IMAGES or max(accs) < SMOKE_ACCURACY:
        reason = (f"a smoke run ({images:,} training images, test accuracy at most {max(accs):.3f}; a verdict needs "
                  f">= {SMOKE_IMAGES:,} images and accuracy >= {SMOKE_ACCURACY:g}): it shows the run works, not parity")
    criteria = PARITY[precision]
    ok = None if reason else first <= criteria["first_step_loss"] and spread <= criteria["test_acc_spread"]
    return {"first_step_loss_max_diff": first, "test_acc_spread": spread, "ok": ok, "no_verdict": reason,
            "precision": precision, "criteria": criteria}


def render(config: TrainConfig, results: dict[str, dict], summary: dict, check_md: str, *, arch: spec.Arch,
           limit: int | None = None, cpu: dict | None = None, stamp: dict | None = None) -> str:
    c = config
    criteria = summary.get("criteria", PARITY["float32"])
    relative, why = ("", "") if c.precision == "float32" else (
        " (relative to max(1, loss))", f"; in {c.precision}: twice the checks' bound on the loss, "
                                       f"2 x {BF16_ERROR_CONSTANTS['step_loss']:g} x 2^-8")
    count = {1: "one backend", 2: "two backends", 3: "three backends"}.get(len(results), f"{len(results)} backends")
    lines = [f"# d2lres: {arch} on Fashion-MNIST in {count}", "",
             f"Network: {arch} ({arch.name}, version {arch.version}, flavour {arch.flavour}). "
             f"Settings: {c.epochs} epoch(s), batch {c.batch_size}, resize {c.resize}, lr {c.lr} "
             f"({c.schedule}), momentum {c.momentum}, weight decay {c.weight_decay}, seed {c.seed}, "
             f"precision {c.precision}"
             + (f", the first {limit} images of each split" if limit else "") + ". "
             "Every backend starts from the same weights (`init.npz`) and sees the same batch order.", "",
             f"Total wall time {summary['wall_seconds']:.0f} s ({total_time(results)}).",
             "", *(describe_stamps(stamp) if stamp else [f"- CPU: {isa.describe(cpu)}"]), "",
             "| backend | device | train loss | train acc | test acc | images/s (training steps) "
             "| wall time (s, in the backend's process) | first-step loss |",
             "|---|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        device = r["device"] if r.get("devices", 1) == 1 else f"{r['devices']} x {r['device']}"
        lines.append(f"| {n} | {device} | {r['train_loss']:.4f} | {r['train_acc']:.4f} | {r['test_acc']:.4f} | "
                     f"{r['images_per_s']:.1f} | {r['wall_seconds']:.0f}{' (reused)' if r.get('reused') else ''} | "
                     f"{r['first_step_loss']:.6f} |")
    lines += ["", "![training curves](curves.png)", "", "## Parity", "",
              f"- first-step loss, largest difference between backends{relative}: "
              f"{summary['first_step_loss_max_diff']:.2e} (required <= {criteria['first_step_loss']:.3g}{why})",
              f"- test accuracy spread: {100 * summary['test_acc_spread']:.2f} points "
              f"(required <= {100 * criteria['test_acc_spread']:g})",
              f"- result: {'PASS' if summary['ok'] else 'FAIL'}" if summary["ok"] is not None
              else f"- result: no verdict -- {summary['no_verdict']}", "",
              f"Times: images/s: {TIMING['images_per_s']}; wall time: {TIMING['wall_seconds']}.", ""]
    if check_md:
        lines += ["## Cross-backend checks (random weights)", "", check_md, ""]
    return "\n".join(lines)
