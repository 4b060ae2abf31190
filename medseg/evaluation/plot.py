"""The per-region score plot that :func:`~medseg.evaluation.evaluate_folder` writes beside ``metrics.csv``
(one model) and :func:`~medseg.evaluation.comparison.compare_evaluations` beside ``comparison.csv`` (several).

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
    from medseg.evaluation.metrics import RegionScore

Scores = Mapping[str, Mapping[str, "RegionScore"]]
"""One model's scores: case -> region -> score, as :func:`~medseg.evaluation.files.read_metrics_csv` reads them."""


def plot_scores(models: Mapping[str, Scores], path: str | Path, *, nsd_tolerance_mm: float) -> Path:
    """Dice (left), HD95 in mm (middle) and NSD (right) per region over cases, as a PNG written
    atomically: for each region a box per model (median, quartiles, whiskers at 1.5 IQR) with every
    case drawn as a dot beside it. Several models stand side by side within each region, one colour
    each, with a legend.

    Args:
        models: model name -> its :data:`Scores`; every case of every model has the same regions, in
            the same order.
        path: the PNG to write.
        nsd_tolerance_mm: the tolerance the NSDs were computed at, for the axis label.

    Returns:
        ``path``.
    """
    first = next(iter(models.values()))
    regions = list(dict.fromkeys(region for case in first.values() for region in case))  # some may skip a label
    slot = 0.8 / len(models)  # the width of one model's box and dots within a region
    panels = (("dice", "Dice"), ("hd95", "HD95 (mm)"), ("nsd", f"NSD at {nsd_tolerance_mm:g} mm"))
    fig = Figure(figsize=(3 + 2.4 * len(regions) * max(1.0, len(models) / 2), 4), dpi=100)
    FigureCanvasAgg(fig)
    for column, (metric, label) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), column)
        for index, (name, scores) in enumerate(models.items()):
            centres = np.arange(1, len(regions) + 1) + (index - (len(models) - 1) / 2) * slot
            values = [[getattr(c[region], metric) for c in scores.values() if region in c] for region in regions]
            ax.boxplot(values, positions=centres, widths=0.75 * slot, showfliers=False, manage_ticks=False)
            for centre, region_values in zip(centres, values, strict=True):
                offsets = np.linspace(-0.25, 0.25, len(region_values)) * slot if len(region_values) > 1 else 0.0
                ax.scatter(centre + offsets, region_values, s=12, alpha=0.6, color=f"C{index}", zorder=3)
            if len(models) > 1:
                ax.scatter([], [], s=12, color=f"C{index}", label=name)  # one legend entry per model
        ax.set_xticks(range(1, len(regions) + 1), regions)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        if metric != "hd95":
            ax.set_ylim(0.0, 1.02)
        if len(models) > 1 and column == 1:
            ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{len(first)} case(s)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
