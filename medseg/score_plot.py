"""The per-region score plot that :func:`~medseg.evaluation.evaluate_folder` writes beside ``metrics.csv``.

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend change).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medseg.io.atomic import atomic_output

if TYPE_CHECKING:
    from medseg.metrics import RegionScore


def plot_scores(scores: Mapping[str, Mapping[str, RegionScore]], path: str | Path) -> Path:
    """Dice (left) and HD95 in mm (right) per region over cases, as a PNG written atomically: a box per
    region (median, quartiles, whiskers at 1.5 IQR) with every case drawn as a dot beside it.

    Args:
        scores: case -> region -> score, as :func:`~medseg.evaluation.read_metrics_csv` returns;
            every case has the same regions.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    regions = list(next(iter(scores.values())))
    fig = Figure(figsize=(3 + 1.6 * len(regions), 4), dpi=100)
    FigureCanvasAgg(fig)
    offsets = np.linspace(-0.2, 0.2, len(scores)) if len(scores) > 1 else np.zeros(1)
    for column, (metric, label) in enumerate((("dice", "Dice"), ("hd95", "HD95 (mm)")), start=1):
        ax = fig.add_subplot(1, 2, column)
        values = [[getattr(case[region], metric) for case in scores.values()] for region in regions]
        ax.boxplot(values, widths=0.6, showfliers=False)
        for position, column_values in enumerate(values, start=1):
            ax.scatter(position + offsets, column_values, s=12, alpha=0.6, color="tab:blue", zorder=3)
        ax.set_xticks(range(1, len(regions) + 1), regions)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        if metric == "dice":
            ax.set_ylim(0.0, 1.02)
    fig.suptitle(f"{len(scores)} case(s)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
