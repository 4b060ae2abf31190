"""The picture of a dataset fingerprint that ``medseg plan`` writes beside ``plan.json``.

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend change).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medseg.io.atomic import atomic_output

if TYPE_CHECKING:
    from medseg.planning.plan import Fingerprint, Suggestion


def plot_fingerprint(fingerprint: Fingerprint, suggestions: Sequence[Suggestion], path: str | Path) -> Path:
    """Three panels, one dot or bar per case, written atomically as a PNG:

    - spacing (mm) along each axis of the fingerprint's orientation, the suggested spacing as a bar;
    - extent (mm: shape x spacing) along each axis, the suggested patch's extent as a bar;
    - each channel's intensity inside the labels, a case's 0.5th to 99.5th percentile as a vertical
      line (none for a case whose reference is empty), with the config's and the suggested
      ``hu_window`` when there is one.

    Returns:
        ``path``.
    """
    suggested = {s.key: s for s in suggestions}
    spacings, shapes = fingerprint.spacings(), fingerprint.shapes()
    axes = list(fingerprint.orientation)
    n = len(fingerprint.cases)
    jitter = np.linspace(-0.2, 0.2, n) if n > 1 else np.zeros(1)
    fig = Figure(figsize=(13, 4), dpi=100)
    FigureCanvasAgg(fig)

    planned = suggested["transforms.spacing"].value  # None: the cases' own, shared spacing
    spacing = np.median(spacings, axis=0) if planned is None else np.array(planned)
    patch_mm = np.array(suggested["transforms.patch_size"].value) * spacing
    for column, (values, mark, title, mark_label) in enumerate(
        (
            (spacings, spacing, "voxel spacing (mm)", "suggested spacing"),
            (shapes * spacings, patch_mm, "extent (mm)", "suggested patch"),
        ),
        start=1,
    ):
        ax = fig.add_subplot(1, 3, column)
        for axis in range(3):
            ax.scatter(axis + jitter, values[:, axis], s=12, alpha=0.6, color="C0", zorder=3)
            ax.hlines(mark[axis], axis - 0.35, axis + 0.35, color="C3", label=mark_label if axis == 0 else None)
        ax.set_xticks(range(3), axes)
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="best", fontsize="small")

    ax = fig.add_subplot(1, 3, 3)
    with_labels = [index for index, case in enumerate(fingerprint.cases) if case.foreground]
    for channel in range(len(fingerprint.channels)):
        lows = [fingerprint.cases[i].foreground[channel].p00_5 for i in with_labels]
        highs = [fingerprint.cases[i].foreground[channel].p99_5 for i in with_labels]
        ax.vlines(channel + jitter[with_labels], lows, highs, color=f"C{channel % 10}", alpha=0.7)
    window = suggested.get("transforms.hu_window")
    if window is not None:
        for values, style, label in ((window.current, ":", "config's window"), (window.value, "--", "suggested")):
            ax.axhline(values[0], color="k", linestyle=style, label=label)
            ax.axhline(values[1], color="k", linestyle=style)
        ax.legend(loc="best", fontsize="small")
    ax.set_xticks(range(len(fingerprint.channels)), fingerprint.channels)
    ax.set_ylabel("intensity inside the labels (0.5-99.5 %)")
    ax.grid(axis="y", alpha=0.3)

    fig.suptitle(f"{n} labelled cases, {fingerprint.orientation} axes")
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
