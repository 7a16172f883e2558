"""``d2lres profile``: where a training step's time goes, stage by stage, in every backend.

For ResNet-18 at one image side and batch, each backend (in its own process, as ``d2lres bench``
runs them, optionally held to AVX2 by ``d2lres.host.isa``) times, in training mode:

- each stage of its own network separately -- ``b1`` (the stem: convolution, BatchNorm, ReLU,
  max-pool), ``b2`` .. ``b5`` (the ``resnet_block`` stages) and ``head`` (pooling, dense and the
  cross-entropy loss) -- forward and backward: the gradients of the stage's parameters and of its
  input (not of the images for ``b1``: a training step needs none), fed with an input of the shape
  that stage sees in the network and a random gradient of its output;
- the optimizer update alone (SGD with the quick preset's momentum and weight decay, every
  parameter, gradients given), at learning rate 0: the same arithmetic, and the weights stay
  where they are however often the parts run on random inputs and gradients;
- the whole step (the backend's ``Trainer.step``: what ``d2lres train`` runs).

``d2lres/<backend>/profile.py`` builds these calls from the backend's own model objects (its
stages, its ``Trainer``); this module is framework-free: the inputs, the timing, the FLOP counts
and the report. Figures are medians of ``repeats`` rounds after ``warmup`` rounds; within a round
every part runs once, in turn, so that a machine whose load changes slows all parts alike and the
shares within one run stay comparable. FLOPs follow ``d2lres bench``'s rule
(``spec.training_flops``: forward + backward = 3 x the forward's multiply-accumulates, 2 FLOPs
each), per stage from ``spec.walk``; the stages' FLOPs add up to the network's. The matmul limit
is ``d2lres bench``'s: the best float32 matmul of the run (numpy's and each backend's own).
``other`` is the step's time beyond its stages and update (the stages' boundaries, the input
checks, reading the loss back; negative when separate calls cost more than one fused step)."""
from __future__ import annotations

import importlib
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import data, spec
from ..core.presets import preset
from ..host import backends, isa
from ..util import jobs, stamps
from .bench import matmul_gflops, numpy_matmul_gflops

#: The learning rate of every timed update and step (see above).
LR = 0.0
STAGES = spec.STAGE_NAMES  # b1 .. b5, head
PARTS = (*STAGES, "update", "step")
#: What each stage is, for the reports.
STAGE_LABELS = {"b1": "stem (conv 7x7, BN, ReLU, max-pool)", "b2": "stage 2 (resnet_block 64)",
                "b3": "stage 3 (resnet_block 128)", "b4": "stage 4 (resnet_block 256)",
                "b5": "stage 5 (resnet_block 512)", "head": "head (avg-pool, dense, loss)"}


@dataclass(frozen=True)
class ProfileConfig:
    size: int = 40
    batch: int = 128
    repeats: int = 7
    warmup: int = 2
    matmul_n: int = 2048

    @classmethod
    def quick(cls) -> "ProfileConfig":
        """Seconds, not minutes: a smoke run of every part (numbers not meaningful)."""
        return cls(size=32, batch=4, repeats=2, warmup=1, matmul_n=256)


def stages(size: int, num_classes: int = 10, in_channels: int = 1) -> list[dict]:
    """Per stage of ResNet-18 at ``size`` x ``size``: name, input and output shape of one image
    (NCHW convention, as ``spec.walk``) and forward multiply-accumulates."""
    shape, out = (in_channels, size, size), []
    for name, row_shape, macs in spec.walk(shape, num_classes):
        stage = name.split(".")[0]
        if not out or out[-1]["stage"] != stage:
            out.append({"stage": stage, "input": shape, "output": row_shape, "macs": 0})
        out[-1]["output"], out[-1]["macs"] = row_shape, out[-1]["macs"] + macs
        shape = row_shape
    assert [s["stage"] for s in out] == list(STAGES)
    return out


def training_gflop(macs: int, batch: int) -> float:
    """GFLOP of forward + backward over a batch: ``d2lres bench``'s rule (``spec.training_flops``)."""
    return 6 * macs * batch / 1e9


def feeds(size: int, batch: int, seed: int = 0) -> dict:
    """Numpy inputs (NCHW, float32): the images and labels of a step, and per stage an input of
    the shape it sees and a gradient of its output (the head's is the loss: labels instead)."""
    rng = np.random.default_rng(seed)
    out = {"images": rng.random((batch, 1, size, size), dtype=np.float32),
           "labels": rng.integers(0, 10, batch).astype(np.int64), "stages": {}}
    for s in stages(size):
        X = rng.random((batch, *s["input"]), dtype=np.float32)
        dY = None if s["stage"] == "head" else rng.standard_normal((batch, *s["output"]), dtype=np.float32)
        out["stages"][s["stage"]] = (X, dY)
    return out


def median_ms(calls: dict, repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of each of ``calls`` (name -> callable), ``repeats`` rounds after
    ``warmup`` rounds, every call once per round in turn."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(warmup + repeats):
        for name, call in calls.items():
            tic = time.perf_counter()
            call()
            if i >= warmup:
                times[name].append(1000 * (time.perf_counter() - tic))
    return {name: statistics.median(t) for name, t in times.items()}


def worker(backend: str, config: ProfileConfig) -> dict:
    """Time one backend's parts (runs in its own process)."""
    mod = backends.load(backend)
    fw_bench = importlib.import_module(f"d2lres.{backend}.bench")
    fw_profile = importlib.import_module(f"d2lres.{backend}.profile")
    quick = preset("quick")
    net = mod.resnet18()
    mod.init_weights(net, 0)
    trainer = mod.Trainer(net, momentum=quick.momentum, weight_decay=quick.weight_decay, device=mod.try_gpu())
    calls = fw_profile.calls(trainer, feeds(config.size, config.batch), lr=LR)
    assert list(calls) == list(PARTS), list(calls)
    ms = median_ms(calls, config.repeats, config.warmup)
    return {"backend": backend, "device": str(mod.try_gpu()), "ms": ms,
            "matmul_gflops": matmul_gflops(fw_bench.matmul(config.matmul_n), config.matmul_n)}


def _run_worker(backend: str, config: ProfileConfig, out: Path, held: str) -> dict:
    job = {"backend": backend, "config": asdict(config), "out": str(out)}
    return jobs.run_worker("d2lres.perf.profile", job, backend, isa.timed_process_env(held))


def profile(names, out, config: ProfileConfig = ProfileConfig(), *, held: str = "native") -> dict:
    """Profile every backend of ``names``, each in its own process held to ``held`` (``native`` or
    ``avx2``); write ``profile.json``, ``profile.md`` and ``profile.png`` in ``out``; return the
    report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numpy_gflops = numpy_matmul_gflops(config.matmul_n, held)
    runs = [_run_worker(name, config, out / f"{name}-worker.json", held) for name in names]
    for name in names:
        (out / f"{name}-worker.json").unlink(missing_ok=True)
    report = {"cpu": isa.cpu_info(held), "config": asdict(config),
              "optimizer": {"lr": LR, **{k: getattr(preset("quick"), k) for k in ("momentum", "weight_decay")}},
              "stages": stages(config.size), "runs": runs,
              "training_gflop": training_gflop(spec.forward_macs((1, config.size, config.size)), config.batch)}
    report["matmul_gflops"] = {"numpy": numpy_gflops, **{r["backend"]: r["matmul_gflops"] for r in runs}}
    report["matmul_limit_gflops"] = max(report["matmul_gflops"].values())
    report["stamps"] = stamps.stamps(names, data.data_stamp(), held)
    summarize(report)
    from ..loop import plots
    table = format_table(report)
    plots.save_report(out, "profile", report, plots.profile_figure(report), table)
    report["table"] = table
    return report


def summarize(report: dict) -> None:
    """Per stage: GFLOP and FLOP share; per run and part: share of the step, GFLOP/s and its
    share of the matmul limit; ``other`` = step - stages - update."""
    batch, limit = report["config"]["batch"], report["matmul_limit_gflops"]
    for s in report["stages"]:
        s["gflop"] = training_gflop(s["macs"], batch)
        s["flop_share"] = s["gflop"] / report["training_gflop"]
    gflop = {s["stage"]: s["gflop"] for s in report["stages"]} | {"step": report["training_gflop"]}
    for r in report["runs"]:
        ms = r["ms"]
        r["other_ms"] = ms["step"] - sum(ms[p] for p in (*STAGES, "update"))
        r["share_of_step"] = {p: v / ms["step"] for p, v in ms.items()} | {"other": r["other_ms"] / ms["step"]}
        r["gflops"] = {p: gflop[p] / (ms[p] / 1000) for p in gflop}
        r["share_of_limit"] = {p: g / limit for p, g in r["gflops"].items()}


def format_table(report: dict) -> str:
    """Markdown: the setting, then per backend (columns) and part (rows) the median ms, the
    share of the step and the share of the matmul limit."""
    c, runs = report["config"], report["runs"]
    opt = report["optimizer"]
    names = [r["backend"] for r in runs]
    lines = [f"CPU: {isa.describe(report['cpu'])}. ResNet-18, batch {c['batch']} of 1x{c['size']}x{c['size']}, "
             f"training mode, forward + backward per stage; SGD momentum {opt['momentum']}, weight decay "
             f"{opt['weight_decay']} (the quick preset; learning rate 0: the same work, the weights unchanged). "
             f"Medians of {c['repeats']} rounds after {c['warmup']} "
             f"warm-up rounds, the parts taking turns. GFLOP: 6 x forward MACs x batch (`d2lres bench`'s rule); "
             f"the whole step {report['training_gflop']:.2f} GFLOP. Matmul limit "
             f"{report['matmul_limit_gflops']:.0f} GFLOP/s, the best float32 {c['matmul_n']}x{c['matmul_n']} "
             "matmul of this run (" + ", ".join(f"{k} {v:.0f}" for k, v in report["matmul_gflops"].items())
             + "). `other` = step - stages - update.", ""]
    head = ["part", "input (CxHxW)", "GFLOP", "FLOP share"]
    rows = [(s["stage"], "x".join(map(str, s["input"])), f"{s['gflop']:.2f}", f"{100 * s['flop_share']:.1f}%")
            for s in report["stages"]]
    rows += [("update", "", "", ""), ("other", "", "", ""),
             ("step", f"1x{c['size']}x{c['size']}", f"{report['training_gflop']:.2f}", "100%")]

    def table(title, cell):
        out = [f"**{title}**", "", "| " + " | ".join(head + names) + " |", "|---|---|--:|--:|" + "--:|" * len(names)]
        for row in rows:
            out.append("| " + " | ".join([*row, *(cell(r, row[0]) for r in runs)]) + " |")
        return out + [""]

    def ms(r, p):
        return f"{r['other_ms'] if p == 'other' else r['ms'][p]:.1f}"

    def share(r, p):
        return f"{100 * r['share_of_step'][p]:.1f}%"

    def limit(r, p):
        return f"{100 * r['share_of_limit'][p]:.0f}%" if p in r["share_of_limit"] else ""

    lines += table("Median ms", ms)
    lines += table("Share of the step's time (compare with the FLOP share)", share)
    lines += table(f"GFLOP/s as a share of the matmul limit ({report['matmul_limit_gflops']:.0f} GFLOP/s)", limit)
    return "\n".join(lines).rstrip()


def _main(argv: list[str]) -> None:
    job = jobs.read(argv)
    jobs.write_result(job["out"], worker(job["backend"], ProfileConfig(**job["config"])))


if __name__ == "__main__":
    _main(sys.argv[1:])
