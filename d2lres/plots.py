"""Training curves: live in a notebook, PNG when headless. One figure for one backend or
several overlaid (the comparison report)."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"torch": "tab:red", "tf": "tab:orange", "mxnet": "tab:blue"}


def curves_figure(histories: dict[str, dict]):
    """Left: training loss; right: train (solid) and test (markers) accuracy, per backend."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, h in histories.items():
        color = COLORS.get(label)
        if h["points"]:
            x, loss, acc = zip(*h["points"])
            ax_loss.plot(x, loss, color=color, label=f"{label} train loss")
            ax_acc.plot(x, acc, color=color, label=f"{label} train acc")
        if h["epochs"]:
            ax_acc.plot([e["epoch"] for e in h["epochs"]], [e["test_acc"] for e in h["epochs"]],
                        "o--", color=color, label=f"{label} test acc")
    for ax, title in ((ax_loss, "training loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def show_or_save_curves(histories: dict[str, dict], path: str | Path | None = None) -> None:
    """In a notebook: redraw the figure in place. Elsewhere: write it to ``path`` (if given)."""
    fig = curves_figure(histories)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    if "ipykernel" in sys.modules:
        from IPython import display
        display.clear_output(wait=True)
        display.display(fig)
    plt.close(fig)
