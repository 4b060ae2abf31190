"""The training log: one CSV row per epoch and a PNG of the curves, both rewritten atomically."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.io.atomic import atomic_output


def write_metrics_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` (one dict per epoch; columns are the union of keys, first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with atomic_output(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(rows: Sequence[dict[str, Any]], path: Path, *, region_names: Sequence[str]) -> None:
    """Training loss and validation Dice per region against epoch, side by side, as a PNG.

    Drawn on matplotlib's Agg canvas directly: no pyplot, so a notebook's own backend and figures
    are left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_dice = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], color="tab:blue")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    val = [r for r in rows if r.get("val_mean_dice") not in (None, "")]
    for name in ["mean", *region_names]:
        key = f"val_{name}_dice"
        ax_dice.plot(
            [r["epoch"] for r in val],
            [r[key] for r in val],
            marker="o",
            label=name,
            linewidth=2.5 if name == "mean" else 1.2,
        )
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="Validation Dice (sliding window)", ylim=(0, 1))
    ax_dice.legend(loc="lower right")
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
