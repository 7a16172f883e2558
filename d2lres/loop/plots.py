"""Training curves: live in a notebook, PNG when headless. One figure for one backend or
several overlaid (the comparison report)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def in_notebook() -> bool:
    """Whether this process is a notebook's kernel (IPython's shell with a kernel; importing
    ipykernel, as a notebook runner does, is not enough)."""
    if "ipykernel" not in sys.modules:
        return False
    from IPython import get_ipython
    return getattr(get_ipython(), "kernel", None) is not None


COLORS = {"torch": "tab:red", "tf": "tab:orange", "mxnet": "tab:blue", "jax": "tab:green"}


def curves_figure(histories: dict[str, dict], title: str | None = None):
    """Left: training loss; right: train accuracy (lines: running means over each epoch so far) and
    test accuracy (points, one per epoch), per backend, each with the device it ran on (its one
    spelling, ``d2lres.host.devices``); ``title`` (the network and settings) above both."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9.5, 4.2 if title else 3.6))
    if title:
        fig.suptitle(title, fontsize=9)
    for label, h in histories.items():
        color = COLORS.get(label)
        on = f" on {str(h['device']).split(' (')[0]}" if h.get("device") else ""
        if h["points"]:
            x, loss, acc = zip(*h["points"])
            ax_loss.plot(x, loss, color=color, label=f"{label}{on}: train loss")
            ax_acc.plot(x, acc, color=color, label=f"{label}{on}: train acc")
        if h["epochs"]:
            ax_acc.plot([e["epoch"] for e in h["epochs"]], [e["test_acc"] for e in h["epochs"]],
                        "o", linestyle="none", color=color, label=f"{label}{on}: test acc (end of epoch)")
    for ax, title in ((ax_loss, "train loss (running mean over the epoch)"),
                      (ax_acc, "accuracy (train: running mean over the epoch)")):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def show_or_save_curves(histories: dict[str, dict], path: str | Path | None = None, *,
                        title: str | None = None) -> None:
    """In a notebook: redraw the figure in place. Elsewhere: write it to ``path`` (if given)."""
    fig = curves_figure(histories, title)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    if in_notebook():
        from IPython import display
        display.clear_output(wait=True)
        display.display(fig)
    plt.close(fig)


def bench_figure(report: dict):
    """Left: end-to-end training images/s, d2lres vs the chapter's way, per backend; right:
    the training step's share of the matmul limit, per batch size (a way not run: no bar)."""
    runs = [r for r in report["runs"] if not r["options"]]
    names = list(dict.fromkeys(r["backend"] for r in runs))
    batches = list(runs[0]["train"])
    fig, (ax_e2e, ax_share) = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / 2
    for i, way in enumerate(("d2lres", "chapter")):
        rows = {r["backend"]: r for r in runs if r["way"] == way}
        xs = [k + (i - 0.5) * width for k in range(len(names))]
        ax_e2e.bar(xs, [rows[n]["end_to_end"]["images_per_s"] if n in rows else 0 for n in names], width, label=way,
                   color=[COLORS.get(n) for n in names], alpha=1.0 if way == "d2lres" else 0.45,
                   edgecolor="black", hatch="" if way == "d2lres" else "//")
    for k, name in enumerate(names):
        ratio = report["ratios"].get(name, {}).get("end_to_end")
        top = max(r["end_to_end"]["images_per_s"] for r in runs if r["backend"] == name)
        if ratio:
            ax_e2e.annotate(f"{ratio:.2f}x", (k, top), ha="center", va="bottom", fontsize=9)
    ax_e2e.set_xticks(range(len(names)), names)
    ax_e2e.set_ylabel("training images/s (data + step)")
    ax_e2e.set_title(f"end to end, batch {batches[0]}: d2lres (solid) vs chapter (hatched)", fontsize=9)
    width = 0.8 / (2 * len(batches))
    for j, (way, batch) in enumerate((w, b) for w in ("d2lres", "chapter") for b in batches):
        rows = {r["backend"]: r for r in runs if r["way"] == way}
        xs = [k + (j - len(batches) + 0.5) * width for k in range(len(names))]
        ax_share.bar(xs, [100 * rows[n]["train_share"][batch] if n in rows else 0 for n in names], width,
                     label=f"{way} b{batch}",
                     alpha=1.0 if way == "d2lres" else 0.45, hatch="" if way == "d2lres" else "//",
                     color=f"C{batches.index(batch)}", edgecolor="black")
    ax_share.axhline(70, color="gray", linestyle="--", linewidth=1)
    ax_share.set_xticks(range(len(names)), names)
    ax_share.set_ylabel("% of the matmul limit")
    ax_share.set_title(f"training step vs {report['matmul_limit_gflops']:.0f} GFLOP/s matmul", fontsize=9)
    ax_share.legend(fontsize=7)
    for ax in (ax_e2e, ax_share):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def profile_figure(report: dict):
    """Left: each backend's step as a stacked bar of its parts (ms), beside the time each part
    would take at the FLOP share of the fastest step; right: each part's GFLOP/s as a share of
    the matmul limit."""
    from ..host.isa import describe
    parts = [s["stage"] for s in report["stages"]] + ["update", "other"]
    runs = report["runs"]
    colors = {p: plt.get_cmap("tab10")(i) for i, p in enumerate(parts)}
    fig, (ax_ms, ax_eff) = plt.subplots(1, 2, figsize=(11, 4.2))
    fastest = min(r["ms"]["step"] for r in runs)
    flop_share = {s["stage"]: s["flop_share"] for s in report["stages"]}
    bars = [("FLOP share\n(x fastest step)", {p: flop_share.get(p, 0.0) * fastest for p in parts})]
    bars += [(r["backend"], {**{p: r["ms"][p] for p in parts if p != "other"}, "other": max(r["other_ms"], 0.0)})
             for r in runs]
    for k, (_, values) in enumerate(bars):
        bottom = 0.0
        for p in parts:
            ax_ms.bar(k, values[p], 0.6, bottom=bottom, color=colors[p], edgecolor="black", linewidth=0.5,
                      hatch="//" if k == 0 else "", label=p if k == 1 else None)
            bottom += values[p]
    for k, r in enumerate(runs, 1):
        ax_ms.hlines(r["ms"]["step"], k - 0.4, k + 0.4, color="black", linewidth=2,
                     label="the whole step" if k == 1 else None)
        ax_ms.annotate(f"step {r['ms']['step']:.0f} ms", (k, max(r["ms"]["step"], sum(bars[k][1].values()))),
                       ha="center", va="bottom", fontsize=8)
    ax_ms.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax_ms.set_ylabel("ms per training step")
    ax_ms.set_title("where the step's time goes (stages timed apart; other = step - parts)", fontsize=9)
    ax_ms.legend(fontsize=7, ncol=2)
    ax_ms.margins(y=0.12)
    stages = [s["stage"] for s in report["stages"]] + ["step"]
    width = 0.8 / len(runs)
    for j, r in enumerate(runs):
        xs = [k + (j - (len(runs) - 1) / 2) * width for k in range(len(stages))]
        ax_eff.bar(xs, [100 * r["share_of_limit"][p] for p in stages], width, label=r["backend"],
                   color=COLORS.get(r["backend"]), edgecolor="black", linewidth=0.5)
    ax_eff.set_xticks(range(len(stages)), stages)
    ax_eff.set_ylabel("% of the matmul limit")
    ax_eff.set_title(f"GFLOP/s vs the {report['matmul_limit_gflops']:.0f} GFLOP/s matmul limit", fontsize=9)
    ax_eff.legend(fontsize=7)
    for ax in (ax_ms, ax_eff):
        ax.grid(alpha=0.3, axis="y")
    c = report["config"]
    fig.suptitle(f"ResNet-18, batch {c['batch']} of {c['size']}x{c['size']}; {describe(report['cpu'])}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def save_report(out: Path, name: str, report: dict, figure, table: str) -> None:
    """A measurement's three files in ``out``: ``name.json`` (the report), ``name.png`` (its
    figure) and ``name.md`` (its table, the figure, then the date, commit, versions and machine
    of ``report["stamps"]``), each written whole or not at all."""
    from ..util import files, stamps
    files.atomic_write_text(out / f"{name}.json", json.dumps(report, indent=1))
    files.atomic_write(out / f"{name}.png", lambda f: figure.savefig(f, format="png", dpi=110))
    plt.close(figure)
    lines = stamps.describe(report["stamps"]) if "stamps" in report else []
    stamp = "".join(f"\n{line}" for line in lines) + ("\n" if lines else "")
    files.atomic_write_text(out / f"{name}.md", f"{table}\n\n![{name}]({name}.png)\n{stamp}")
