"""``d2lres bench``: training and inference images/s of ResNet-18 per backend, d2lres's way
against the chapter's way, and both against this machine's float32 matmul limit; with
``--precision float32 bf16``, d2lres's way in bf16 too, against a bf16 matmul limit, with the
bf16 / float32 ratios.

Every (backend, way) runs in its own process (``python -m d2lres.perf.bench WORKER-JSON``) so
thread pools do not mix. The chapter's way runs with the framework's own settings but for what
importing d2lres sets up, which both ways share (``d2lres.host.process``: OpenMP's passive wait
policy; for MXNet, every core). Each figure is the median of ``repeats`` timed calls after
``warmup`` untimed ones."""
from __future__ import annotations

import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import data, spec
from ..core.precision import DEFAULT, MIXED_BACKENDS
from ..core.precision import check as check_precision
from ..core.presets import preset
from ..host import backends, isa
from ..util import jobs, signals, stamps

WAYS = ("d2lres", "chapter")

#: Each backend's training path without its accelerations (the reference of the tests) ...
PLAIN = {"torch": {"channels_last": False}, "tf": {"compile": False}, "mxnet": {"compile": False},
         "jax": {"compile": False}}
#: ... and the acceleration switches it offers; ``{}`` is d2lres's default. ``--variants``
#: times every non-default entry of both.
ACCELERATIONS = {
    "torch": [{}, {"channels_last": True}, {"compile": True}],
    "tf": [{}],
    "mxnet": [{}],
    "jax": [{}],
}


def variants(backend: str) -> list[dict]:
    """The option sets ``--variants`` adds to the default run of ``backend``."""
    return [o for o in [PLAIN[backend], *ACCELERATIONS[backend]] if o]


@dataclass(frozen=True)
class BenchConfig:
    size: int = 96
    batches: tuple[int, ...] = (256, 32)
    repeats: int = 5
    warmup: int = 1
    end_to_end_steps: int = 6
    rounds: int = 3
    matmul_n: int = 2048
    lr: float = preset("chapter").lr
    arch: str = "resnet18"  # a name of spec.ARCH_NAMES, in its default flavour

    @classmethod
    def quick(cls) -> "BenchConfig":
        """Seconds, not minutes: a smoke run of every path (numbers not meaningful)."""
        return cls(size=32, batches=(16, 4), repeats=2, warmup=1, end_to_end_steps=2, rounds=2, matmul_n=256)


def median_rate(fn, items: int, repeats: int, warmup: int) -> float:
    """Median ``items / seconds`` of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - tic)
    return items / statistics.median(seconds)


def matmul_gflops(matmul, n: int, repeats: int = 5) -> float:
    """Median GFLOP/s of ``matmul()``, one ``n x n`` product (2 n^3 FLOPs)."""
    return median_rate(matmul, 2 * n ** 3, repeats, warmup=1) / 1e9


def numpy_matmul(n: int):
    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    return lambda: a @ b


class D2lresWay:
    """d2lres's training path: the backend's ``Trainer`` (with ``options``) and the data
    resized once in memory, served by slicing."""

    def __init__(self, mod, net, lr: float, options: dict):
        self.trainer, self.lr = mod.Trainer(net, device=mod.try_gpu(), **options), lr

    def loader(self, images, labels, batch_size, size):
        X = data.resize_images(images, size)[:, None]
        return data.ArrayBatches(X, labels.astype(np.int64), batch_size, shuffle=True, convert=self.trainer.convert)

    def inputs(self, X, y):
        return self.trainer.convert(X, y)

    def step(self, X, y) -> None:
        self.trainer.step(X, y, self.lr)

    def predict(self, X) -> None:
        self.trainer.predict(X)


def end_to_end_rate(way, images, labels, batch_size: int, size: int, steps: int, warmup: int) -> dict:
    """Images/s of the data path and the step together over ``steps`` batches, after ``warmup``
    (total time: a loader's stalls count). Building the loader (for d2lres: resizing the
    images once) is timed apart, per 1,000 images."""
    n = (steps + warmup) * batch_size
    tic = time.perf_counter()
    loader = way.loader(images[:n], labels[:n], batch_size, size)
    prepare = time.perf_counter() - tic
    batches = iter(loader)
    for _ in range(warmup):
        way.step(*next(batches))
    tic = time.perf_counter()
    for X, y in batches:
        way.step(X, y)
    return {"images_per_s": steps * batch_size / (time.perf_counter() - tic),
            "prepare_seconds_per_1k": 1000 * prepare / n}


def worker(backend: str, way: str, config: BenchConfig, options: dict, data_dir=None,
           parts=("steps", "end_to_end")) -> dict:
    """Measure one backend's way (``parts``: fixed-batch steps and inference, end to end); runs
    in its own process."""
    framework = backends.BACKENDS[backend][1]
    if way == "chapter":
        if backend == "mxnet":
            from ..host.mxnet_compat import prepare_numpy
            prepare_numpy()  # MXNet cannot import on numpy 1.24+ without it
        importlib.import_module(framework)  # before d2lres sets any thread counts
    mod = backends.load(backend)
    fw_bench = importlib.import_module(f"d2lres.{backend}.bench")
    arch = spec.get_arch(config.arch)
    net = mod.resnet(arch.name, arch.version, flavour=arch.flavour)
    mod.init_weights(net, 0)
    runner = fw_bench.ChapterWay(net, config.lr) if way == "chapter" else D2lresWay(mod, net, config.lr, options)
    result = {"backend": backend, "way": way, "options": options, "device": str(mod.try_gpu()),
              "precision": options.get("precision", DEFAULT)}
    if "steps" in parts:
        rng = np.random.default_rng(0)
        result.update(matmul_gflops=matmul_gflops(fw_bench.matmul(config.matmul_n, result["precision"]),
                                                  config.matmul_n), train={}, infer={})
        for batch in config.batches:
            X, y = runner.inputs(rng.random((batch, 1, config.size, config.size), dtype=np.float32),
                                 rng.integers(0, 10, batch))
            result["train"][str(batch)] = median_rate(lambda X=X, y=y: runner.step(X, y), batch, config.repeats,
                                                      config.warmup)
            result["infer"][str(batch)] = median_rate(lambda X=X: runner.predict(X), batch, config.repeats,
                                                      config.warmup)
    if "end_to_end" in parts:
        images, labels = data.FashionMNIST.load(data_dir).raw[True]
        result["end_to_end"] = end_to_end_rate(runner, images, labels, config.batches[0], config.size,
                                               config.end_to_end_steps, config.warmup)
    return result


def _run_worker(backend, way, config, options, data_dir, parts, out: Path, held: str = "native") -> dict:
    job = {"backend": backend, "way": way, "config": asdict(config), "options": options,
           "data_dir": str(data_dir) if data_dir else None, "parts": parts, "out": str(out)}
    label = f"{backend} {way}{' ' + json.dumps(options) if options else ''}: {' + '.join(parts)}"
    return jobs.run_worker("d2lres.perf.bench", job, label, isa.timed_process_env(held),
                           launcher=("-W", "ignore:This DataLoader will create"))


def chapter_way_fits(backend: str, arch: str) -> bool:
    """Whether the chapter's way of ``backend`` trains ``arch``: JAX's is the book's own linen
    ResNet-18 (``jax/bench.py``); the others train d2lres's network of any variant."""
    return backend != "jax" or spec.get_arch(arch) == spec.get_arch("resnet18")


def _backend_runs(name, config: BenchConfig, data_dir, with_variants: bool, out: Path, held: str,
                  precisions_: tuple[str, ...] = (DEFAULT,)) -> list[dict]:
    """Both ways and d2lres's way in each other precision (steps, then ``config.rounds``
    end-to-end rounds alternating them so that all see the same machine), then the variants' steps."""
    plans = {way: (way, {}) for way in WAYS if way == "d2lres" or chapter_way_fits(name, config.arch)}
    plans.update({f"d2lres-{p}": ("d2lres", {"precision": p}) for p in precisions_
                  if p != DEFAULT and name in MIXED_BACKENDS})
    runs = {key: _run_worker(name, way, config, options, data_dir, ["steps", "end_to_end"], out / f"{name}-{key}.json",
                             held) for key, (way, options) in plans.items()}
    for run in runs.values():
        run["end_to_end"]["rounds"] = [run["end_to_end"]["images_per_s"]]
    for i in range(1, config.rounds):
        for key, run in runs.items():
            way, options = plans[key]
            extra = _run_worker(name, way, config, options, data_dir, ["end_to_end"], out / f"{name}-{key}-{i}.json",
                                held)
            run["end_to_end"]["rounds"].append(extra["end_to_end"]["images_per_s"])
    for run in runs.values():
        run["end_to_end"]["images_per_s"] = statistics.median(run["end_to_end"]["rounds"])
    extra = [_run_worker(name, "d2lres", config, options, data_dir, ["steps"], out / f"{name}-variant-{i}.json", held)
             for i, options in enumerate(variants(name) if with_variants else [])]
    return [*runs.values(), *extra]


def bench(names, out, config: BenchConfig = BenchConfig(), *, data_dir=None, with_variants: bool = False,
          held: str = "native", precisions: tuple[str, ...] = ("float32",)) -> dict:
    """Run every backend both ways (and its :func:`variants` if asked; d2lres's way also in each
    of ``precisions`` besides float32, where the backend trains in it), every timed process held
    to the instruction set ``held`` (``native`` or ``avx2``, see ``d2lres.host.isa``); write
    ``bench.json``, ``bench.md`` and ``bench.png`` in ``out`` and return the report."""
    precisions_ = tuple(check_precision(p) for p in precisions)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data.fetch_fashion_mnist(data_dir)
    shape, arch = (1, config.size, config.size), spec.get_arch(config.arch)
    numpy_gflops = numpy_matmul_gflops(config.matmul_n, held)
    runs = [run for name in names
            for run in _backend_runs(name, config, data_dir, with_variants, out, held, precisions_)]
    report = {"cpu": isa.cpu_info(held), "config": asdict(config), "runs": runs,
              "forward_macs": spec.forward_macs(shape, arch=arch),
              "training_flops": spec.training_flops(shape, arch=arch)}
    plain = [r for r in runs if r["precision"] == DEFAULT]
    report["matmul_gflops"] = {"numpy": numpy_gflops, **{
        name: statistics.median(r["matmul_gflops"] for r in plain if r["backend"] == name) for name in names}}
    report["matmul_limit_gflops"] = max(report["matmul_gflops"].values())
    report["matmul_gflops_by_precision"] = {
        p: {name: statistics.median(r["matmul_gflops"] for r in group) for name in names
            if (group := [r for r in runs if r["backend"] == name and r["precision"] == p])}
        for p in precisions_ if p != DEFAULT}
    report["matmul_limit_by_precision"] = {DEFAULT: report["matmul_limit_gflops"], **{
        p: max(v.values()) for p, v in report["matmul_gflops_by_precision"].items() if v}}
    report["stamps"] = stamps.stamps(names, data.data_stamp(data_dir), held)
    summarize(report)
    from ..loop import plots
    table = format_table(report)
    plots.save_report(out, "bench", report, plots.bench_figure(report), table)
    report["table"] = table
    return report


def numpy_matmul_gflops(n: int, held: str) -> float:
    """numpy's float32 matmul GFLOP/s, in a process held to ``held`` (OpenBLAS reads its core
    type when it loads)."""
    code = f"from d2lres.perf.bench import matmul_gflops, numpy_matmul; print(matmul_gflops(numpy_matmul({n}), {n}))"
    with tempfile.TemporaryFile("w+") as f:
        status = signals.run_child([sys.executable, "-c", code], forward=False, env=isa.timed_process_env(held),
                                   stdout=f)
        signals.check("the numpy matmul", "its timed process was ended; no report written")
        if status:
            raise subprocess.CalledProcessError(status, "numpy matmul")
        f.seek(0)
        return float(f.read().strip().splitlines()[-1])


def summarize(report: dict) -> None:
    """Add achieved GFLOP/s and the share of the matmul limit to each run, and the d2lres /
    chapter ratios per backend."""
    flops, macs = report["training_flops"], report["forward_macs"]
    limits = report.get("matmul_limit_by_precision", {DEFAULT: report["matmul_limit_gflops"]})
    for r in report["runs"]:
        limit = limits[r.get("precision", DEFAULT)]
        r["train_gflops"] = {b: v * flops / 1e9 for b, v in r["train"].items()}
        r["train_share"] = {b: g / limit for b, g in r["train_gflops"].items()}
        r["infer_share"] = {b: v * 2 * macs / 1e9 / limit for b, v in r["infer"].items()}
    report["ratios"] = {}
    for name in dict.fromkeys(r["backend"] for r in report["runs"]):
        ways = {r["way"]: r for r in report["runs"] if r["backend"] == name and not r["options"]}
        mixed = [r for r in report["runs"] if r["backend"] == name and r["way"] == "d2lres"
                 and set(r["options"]) == {"precision"} and "end_to_end" in r]
        if "d2lres" in ways:
            report.setdefault("precision_ratios", {})[name] = {
                r["precision"]: {"end_to_end": statistics.median(
                    a / b for a, b in zip(r["end_to_end"]["rounds"], ways["d2lres"]["end_to_end"]["rounds"])),
                    **{f"train_{b}": r["train"][b] / ways["d2lres"]["train"][b] for b in r["train"]}}
                for r in mixed}
        if set(WAYS) <= set(ways):
            mine, theirs = ways["d2lres"], ways["chapter"]
            report["ratios"][name] = {
                "end_to_end": statistics.median(a / b for a, b in zip(mine["end_to_end"]["rounds"],
                                                                     theirs["end_to_end"]["rounds"])),
                **{f"train_{b}": mine["train"][b] / theirs["train"][b] for b in mine["train"]}}


def format_table(report: dict) -> str:
    """Markdown: one row per (backend, way or variant)."""
    batches = list(report["runs"][0]["train"])
    head = (["backend", "way"] + [f"train b{b} img/s" for b in batches] + [f"infer b{b} img/s" for b in batches]
            + ["end to end img/s", "ratio to chapter (end to end)", f"train b{batches[0]} GFLOP/s",
               "share of matmul limit"])
    lines = [f"CPU: {isa.describe(report['cpu'])}. "
             f"{spec.get_arch(report['config'].get('arch'))}, 1x{report['config']['size']}x{report['config']['size']} "
             "(grouped convolutions counted by their own MACs): "
             f"{report['forward_macs'] / 1e9:.3f} GMAC forward, {report['training_flops'] / 1e9:.2f} GFLOP per "
             f"training image. Matmul limit {report['matmul_limit_gflops']:.0f} GFLOP/s, the best of float32 "
             f"{report['config']['matmul_n']}x{report['config']['matmul_n']} matmuls measured in this run ("
             + ", ".join(f"{k} {v:.0f}" for k, v in report["matmul_gflops"].items())
             + f"). Steps: medians of {report['config']['repeats']} runs. End to end (data included): "
             f"median of {report['config']['rounds']} rounds of {report['config']['end_to_end_steps']} steps, "
             "the ways alternating; the ratio is the median of the rounds' ratios.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    limits = report.get("matmul_limit_by_precision", {})
    if len(limits) > 1:
        lines[0] += (" Other precisions against their own matmul limit, the best of the backends' "
                     + "; ".join(f"{p} {v:.0f} GFLOP/s" for p, v in limits.items() if p != DEFAULT) + ".")
    for r in report["runs"]:
        way = r["way"] + (" " + ", ".join(f"{k}={v}" for k, v in r["options"].items()) if r["options"] else "")
        e2e = r.get("end_to_end")
        ratio = (report["ratios"].get(r["backend"], {}).get("end_to_end")
                 if r["way"] == "d2lres" and not r["options"] and e2e else None)
        cells = ([r["backend"], way] + [f"{r['train'][b]:.1f}" for b in batches]
                 + [f"{r['infer'][b]:.1f}" for b in batches]
                 + [f"{e2e['images_per_s']:.1f}" if e2e else "", f"{ratio:.2f}x" if ratio else "",
                    f"{r['train_gflops'][batches[0]]:.1f}", f"{100 * r['train_share'][batches[0]]:.0f}%"])
        lines.append("| " + " | ".join(cells) + " |")
    ratios = {(name, p): v for name, by in report.get("precision_ratios", {}).items() for p, v in by.items()}
    if ratios:
        lines += ["", "| backend | precision | " + " | ".join(f"train b{b} / float32" for b in batches)
                  + " | end to end / float32 (median of rounds) |", "|" + "---|" * (3 + len(batches))]
        for (name, p), v in ratios.items():
            lines.append(f"| {name} | {p} | " + " | ".join(f"{v[f'train_{b}']:.2f}x" for b in batches)
                         + f" | {v['end_to_end']:.2f}x |")
    return "\n".join(lines)


def _main(argv: list[str]) -> None:
    job = jobs.read(argv)
    config = BenchConfig(**{**job["config"], "batches": tuple(job["config"]["batches"])})
    result = worker(job["backend"], job["way"], config, job["options"], job["data_dir"], job["parts"])
    jobs.write_result(job["out"], result)


if __name__ == "__main__":
    _main(sys.argv[1:])
