"""``d2lres compare``: train every backend from the same initial weights and batch order (one
process per backend, so thread pools and memory do not mix), then write ``report.md`` with
the results table, overlaid curves and the cross-backend checks."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

from . import backends, data
from . import weights as neutral
from .plots import curves_figure
from .presets import TrainConfig

#: What the report requires of every pair of backends after training.
FIRST_STEP_TOLERANCE = 1e-4
TEST_ACC_SPREAD = 0.015


def _train_in_subprocess(backend: str, config: TrainConfig, init: Path, out: Path, data_dir, limit) -> dict:
    done = out / "metrics.json"
    if done.exists():
        metrics = json.loads(done.read_text())
        if metrics["config"] == config.to_dict():
            print(f"{backend}: already trained ({done}), reusing it")
            return metrics
    cmd = [sys.executable, "-m", "d2lres", "train", "--backend", backend, "--init", str(init), "--out", str(out),
           "--resume", "--epochs", str(config.epochs), "--lr", str(config.lr), "--batch-size", str(config.batch_size),
           "--momentum", str(config.momentum), "--weight-decay", str(config.weight_decay),
           "--schedule", config.schedule, "--seed", str(config.seed)]
    if config.resize:
        cmd += ["--resize", str(config.resize)]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    if limit:
        cmd += ["--limit", str(limit)]
    print(f"== {backend}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(done.read_text())


def compare_training(config: TrainConfig, out: str | Path, names=tuple(backends.BACKENDS), *,
                     data_dir=None, limit: int | None = None, checks: bool = True) -> Path:
    """Train each backend, then write ``out/report.md``, ``out/curves.png``, ``out/report.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    print(f"data: {data.fetch_fashion_mnist(data_dir).source}")
    init = out / "init.npz"
    if not init.exists():
        neutral.save_npz(init, neutral.init_weights(seed=config.seed))
    results = {n: _train_in_subprocess(n, config, init, out / n, data_dir, limit) for n in names}
    check_md = ""
    if checks:
        subprocess.run([sys.executable, "-m", "d2lres", "compare", "--check", "--json", str(out / "checks.json"),
                        "--backends", *names], check=True, stdout=subprocess.DEVNULL)
        check_md = json.loads((out / "checks.json").read_text())["table"]
    fig = curves_figure({n: r["history"] for n, r in results.items()})
    fig.savefig(out / "curves.png", dpi=110)
    summary = parity(results)
    summary["wall_seconds"] = time.perf_counter() - tic
    (out / "report.json").write_text(json.dumps({"config": config.to_dict(), "parity": summary,
                                                 "results": {n: {k: v for k, v in r.items() if k != "history"}
                                                             for n, r in results.items()}}, indent=1))
    (out / "report.md").write_text(render(config, results, summary, check_md))
    return out / "report.md"


def parity(results: dict[str, dict]) -> dict:
    pairs = list(itertools.combinations(results, 2))
    first = max((abs(results[a]["first_step_loss"] - results[b]["first_step_loss"]) for a, b in pairs), default=0.0)
    accs = [r["test_acc"] for r in results.values()]
    spread = max(accs) - min(accs)
    return {"first_step_loss_max_diff": first, "test_acc_spread": spread,
            "ok": first <= FIRST_STEP_TOLERANCE and spread <= TEST_ACC_SPREAD}


def render(config: TrainConfig, results: dict[str, dict], summary: dict, check_md: str) -> str:
    c = config
    lines = ["# d2lres: ResNet-18 on Fashion-MNIST in three backends", "",
             f"Settings: {c.epochs} epoch(s), batch {c.batch_size}, resize {c.resize}, lr {c.lr} "
             f"({c.schedule}), momentum {c.momentum}, weight decay {c.weight_decay}, seed {c.seed}. "
             "Every backend starts from the same weights (`init.npz`) and sees the same batch order.", "",
             "| backend | device | train loss | train acc | test acc | images/s (training) | wall time (s) | first-step loss |",
             "|---|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        lines.append(f"| {n} | {r['device']} | {r['train_loss']:.4f} | {r['train_acc']:.4f} | {r['test_acc']:.4f} | "
                     f"{r['images_per_s']:.1f} | {r['wall_seconds']:.0f} | {r['first_step_loss']:.6f} |")
    lines += ["", "![training curves](curves.png)", "", "## Parity", "",
              f"- first-step loss, largest difference between backends: {summary['first_step_loss_max_diff']:.2e} "
              f"(required <= {FIRST_STEP_TOLERANCE:g})",
              f"- test accuracy spread: {100 * summary['test_acc_spread']:.2f} points "
              f"(required <= {100 * TEST_ACC_SPREAD:g})",
              f"- result: {'PASS' if summary['ok'] else 'FAIL'}", ""]
    if check_md:
        lines += ["## Cross-backend checks (random weights)", "", check_md, ""]
    return "\n".join(lines)
