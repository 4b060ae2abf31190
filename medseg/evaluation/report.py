"""The evaluation report: an HTML page with the per-region table, the training curve and overlays.

:func:`render_overlay` draws one axial slice with reference (green) and prediction (red) contours;
:func:`render_case_overlays` picks the best, median and worst cases by one region's Dice and renders
them; :func:`write_report` writes a self-contained ``report.html`` (images embedded as base64 PNG).

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend change).
Overlays are shown in the **radiological convention**: axial slices seen from the feet, anterior up,
patient left on the image right (patient right on the image left), with the voxel aspect ratio
taken from the spacing in mm.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from medseg.errors import MedsegInputError
from medseg.evaluation.evaluate import find_references, format_lesion_f1, format_mean_sd
from medseg.evaluation.files import read_metrics_csv
from medseg.io import atomic_output, read_image
from medseg.labels import BRATS_RELEASES

REFERENCE_COLOR = "lime"
PREDICTION_COLOR = "red"


class Overlay(NamedTuple):
    """One rendered overlay: the case, a caption (e.g. ``"best WT Dice 0.93"``) and the PNG path."""

    case: str
    caption: str
    png: Path


def reorient_to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Permute and flip a ``(X, Y, Z)`` array to the closest RAS+ axis order.

    Args:
        array: voxel data in file order, ``(X, Y, Z)``.
        affine: 4x4 voxel-to-RAS-mm affine (NIfTI convention).

    Returns:
        The array with axis 0 increasing toward patient Right, 1 toward Anterior, 2 toward Superior,
        and the voxel spacing in mm along those axes.
    """
    ornt = nib.orientations.io_orientation(affine)
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    ras = nib.orientations.apply_orientation(array, ornt)
    ras_spacing = [0.0, 0.0, 0.0]
    for axis, (target, _flip) in enumerate(ornt):
        ras_spacing[int(target)] = float(spacing[axis])
    return ras, (ras_spacing[0], ras_spacing[1], ras_spacing[2])


def radiological_axial(volume_ras: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a RAS ``(X, Y, Z)`` volume as a ``(rows, cols)`` display array.

    Row 0 is the most anterior row (anterior up); column 0 is the patient's right, so the patient's
    left is on the image right (radiological convention).
    """
    return np.ascontiguousarray(volume_ras[::-1, ::-1, z].T)


def _largest_slice(ref: np.ndarray, pred: np.ndarray) -> int:
    areas = ref.reshape(-1, ref.shape[2]).sum(axis=0)
    if not areas.any():
        areas = pred.reshape(-1, pred.shape[2]).sum(axis=0)
    if not areas.any():
        return ref.shape[2] // 2
    return int(np.argmax(areas))


def render_overlay(
    *,
    image: np.ndarray,
    ref: np.ndarray,
    pred: np.ndarray,
    out: Path,
    title: str,
    affine: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> Path:
    """Draw the axial slice with the largest reference area, with reference and prediction contours.

    Args:
        image: intensity volume ``(X, Y, Z)`` (e.g. FLAIR).
        ref: reference label map or mask on the same grid; nonzero voxels are outlined in green
            (for BraTS this is the whole tumour).
        pred: prediction on the same grid; nonzero voxels are outlined in red.
        out: PNG path to write (atomically).
        title: figure title.
        affine: voxel-to-RAS-mm affine of the grid; the volumes are reoriented to RAS first. When
            ``None`` the arrays must already be in RAS order and ``spacing`` gives their voxel size.
        spacing: voxel size in mm along RAS X, Y, Z (only used when ``affine`` is ``None``).

    Returns:
        ``out``. The slice is shown radiologically: anterior up, patient left on the image right
        (the corners are marked A/P/R/L). If the reference is empty the largest predicted slice is
        shown, and the middle slice if both are empty.
    """
    image, ref, pred = np.asarray(image), np.asarray(ref) != 0, np.asarray(pred) != 0
    if not image.shape == ref.shape == pred.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape}, reference {ref.shape} and prediction {pred.shape} must be equal 3-D")
    if affine is not None:
        image, spacing = reorient_to_ras(image, affine)
        ref, _ = reorient_to_ras(ref, affine)
        pred, _ = reorient_to_ras(pred, affine)
    z = _largest_slice(ref, pred)
    img2d = radiological_axial(image, z).astype(np.float32)
    ref2d, pred2d = radiological_axial(ref, z), radiological_axial(pred, z)
    foreground = img2d[img2d != 0]
    lo, hi = np.percentile(foreground, (0.5, 99.5)) if foreground.size else (0.0, 1.0)

    rows, cols = img2d.shape
    aspect = float(spacing[1]) / float(spacing[0])  # row height (Y mm) over column width (X mm)
    fig = Figure(figsize=(5, 5 * rows * aspect / cols + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(img2d, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect, interpolation="nearest")
    for mask, color in ((ref2d, REFERENCE_COLOR), (pred2d, PREDICTION_COLOR)):
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=1.2)
    for text, x, y, ha, va in (
        ("A", 0.5, 0.98, "center", "top"),
        ("P", 0.5, 0.02, "center", "bottom"),
        ("R", 0.02, 0.5, "left", "center"),
        ("L", 0.98, 0.5, "right", "center"),
    ):
        ax.text(x, y, text, transform=ax.transAxes, color="yellow", ha=ha, va=va, fontsize=10, weight="bold")
    ax.legend(
        handles=[
            Line2D([], [], color=REFERENCE_COLOR, label="reference"),
            Line2D([], [], color=PREDICTION_COLOR, label="prediction"),
        ],
        loc="lower right",
        fontsize=8,
        framealpha=0.6,
    )
    ax.set_title(f"{title}\naxial slice {z}", fontsize=10)
    ax.set_axis_off()
    fig.tight_layout()
    out = Path(out)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def pick_cases(scores: Mapping[str, float]) -> list[tuple[str, str]]:
    """Best, median and worst case by a score (higher is better), without repeats.

    Args:
        scores: case id -> score (e.g. WT Dice).

    Returns:
        ``[("best", case), ("median", case), ("worst", case)]``, shorter when there are fewer cases.
        Ties break by case id.
    """
    ranked = sorted(scores, key=lambda case: (-scores[case], case))
    picks: list[tuple[str, str]] = []
    for label, index in (("best", 0), ("median", (len(ranked) - 1) // 2), ("worst", len(ranked) - 1)):
        if ranked and ranked[index] not in {case for _, case in picks}:
            picks.append((label, ranked[index]))
    return picks


def brats_image_path(ref_path: Path, case: str, *, channel: str = "FLAIR") -> Path:
    """The BraTS image of ``channel`` (``"FLAIR"``, ``"T2"``, ...) beside a case's reference segmentation."""
    for release in BRATS_RELEASES.values():
        if ref_path.name == release.file_name(case, "seg"):
            suffix = release.modalities[release.channel_names.index(channel)]
            return ref_path.parent / release.file_name(case, suffix)
    raise MedsegInputError(f"not a BraTS segmentation of case {case}; cannot locate its {channel} image", path=ref_path)


def render_case_overlays(
    *,
    metrics_csv: Path,
    pred_dir: Path,
    ref_dir: Path,
    out_dir: Path,
    region: str = "WT",
    channel: str = "FLAIR",
    image_path: Callable[[str, Path], Path] | None = None,
) -> list[Overlay]:
    """Render overlays of the best, median and worst case by ``region`` Dice.

    Args:
        metrics_csv: the ``metrics.csv`` that :func:`medseg.evaluation.evaluate_folder` wrote.
        pred_dir: folder of ``<case>.nii.gz`` predictions (a missing one is drawn as empty).
        ref_dir: the reference dataset folder (any layout :func:`find_references` knows).
        out_dir: the PNGs go to ``out_dir/overlays/<case>.png``.
        region: the region (or class) whose Dice ranks the cases.
        channel: BraTS channel name drawn underneath (``"FLAIR"``, ``"T2"``, ``"T1"``, ``"T1ce"``).
        image_path: ``(case, reference path) -> image path``; defaults to :func:`brats_image_path`
            with ``channel``. Pass one for non-BraTS layouts.

    Returns:
        The overlays in best, median, worst order.
    """
    scores = read_metrics_csv(metrics_csv).scores
    by_case = {case: s[region].dice for case, s in scores.items() if region in s}
    if not by_case:
        raise MedsegInputError(f"no {region} scores found", path=metrics_csv)
    refs = find_references(Path(ref_dir)).files
    locate = image_path or (lambda case, ref_path: brats_image_path(ref_path, case, channel=channel))
    overlays = []
    for label, case in pick_cases(by_case):
        if case not in refs:
            raise MedsegInputError(f"case {case} has no reference in {ref_dir}", path=metrics_csv)
        ref = read_image(refs[case])
        image = read_image(locate(case, refs[case]))
        pred_path = Path(pred_dir) / f"{case}.nii.gz"
        pred = read_image(pred_path).array if pred_path.is_file() else np.zeros(ref.array.shape, np.uint8)
        caption = f"{label} {region} Dice {by_case[case]:.3f}: {case}"
        png = render_overlay(
            image=image.array,
            ref=ref.array,
            pred=pred,
            out=Path(out_dir) / "overlays" / f"{case}.png",
            title=caption,
            affine=ref.geometry.affine,
        )
        overlays.append(Overlay(case, caption, png))
    return overlays


def _png_data_uri(path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise MedsegInputError("image not found", path=path)
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; every cell is escaped."""
    lines = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    return "<table>\n" + "\n".join(lines) + "\n</table>"


def _mean_sd_median(stats: Mapping[str, float], digits: int) -> tuple[str, str]:
    return format_mean_sd(stats, digits), f"{stats['median']:.{digits}f}"


def _summary_table(summary: Mapping[str, Any]) -> str:
    header = ["region", "Dice mean ± sd", "Dice median", "HD95 (mm) mean ± sd", "HD95 (mm) median"]
    header += ["NSD mean ± sd", "NSD median", "n"]
    rows = [
        [
            region,
            *_mean_sd_median(stats["dice"], 4),
            *_mean_sd_median(stats["hd95"], 2),
            *_mean_sd_median(stats["nsd"], 4),
            str(stats["n"]),
        ]
        for region, stats in summary["regions"].items()
    ]
    return _html_table(header, rows)


def _one_empty_hd95(summary: Mapping[str, Any]) -> str:
    """The HD95 of an empty mask under the summary's scoring, for a reader: ``"374 mm"`` or ``"the image's
    diagonal"`` (summaries written before scorings existed: 374 mm, what lesion-wise scores used then)."""
    if "scoring" not in summary:
        return "374 mm"
    constant = summary["one_empty_hd95_mm"]
    return "the image's diagonal" if constant is None else f"{constant:g} mm"


def _flags_table(flags: Mapping[str, Sequence[str]]) -> str:
    """The cases that raise quality flags, with them, or a line saying that none does."""
    flagged = sorted(case for case, raised in flags.items() if raised)
    intro = (
        f"<p>{len(flagged)} of {len(flags)} predicted case(s) raise quality flags (see medseg's predict guide,"
        " Quality flags): where to look first, not a verdict.</p>"
    )
    if not flagged:
        return intro
    return intro + _html_table(["case", "flags"], [[case, ", ".join(flags[case])] for case in flagged])


def _lesion_table(lesion_wise: Mapping[str, Any]) -> str:
    header = ["region", "Dice mean ± sd", "HD95 (mm) mean ± sd", "F1 mean ± sd", "TP", "FN", "FP"]
    rows = []
    for region, stats in lesion_wise["regions"].items():
        counts = (str(stats["tp"]), str(stats["fn"]), str(stats["fp"]))
        means = (format_mean_sd(stats["dice"], 4), format_mean_sd(stats["hd95"], 2), format_lesion_f1(stats))
        rows.append([region, *means, *counts])
    return _html_table(header, rows)


def _lesion_rules_text(lesion_wise: Mapping[str, Any], one_empty_hd95: str) -> str:
    """What the summary's lesion-wise rules score, in a sentence or two for the report."""
    penalties = (
        "every missed lesion (FN) and every predicted piece that matches no lesion (FP) scores Dice 0 and HD95"
        f" {one_empty_hd95}"
    )
    if "dilation" in lesion_wise:
        return (
            f"reference lesions joined by a {lesion_wise['dilation']}-voxel dilation, those of at most"
            f" {lesion_wise['min_volume_mm3']:g} mm³ left out; {penalties}"
        )
    matching = "each reference lesion matched with at most one predicted lesion (the pairs of largest Dice)"
    if lesion_wise.get("scored") == "matched_pairs":
        return (
            f"{matching}; Dice and HD95 are means over the matched pairs, missed lesions (FN) and predicted pieces"
            f" that match no lesion (FP) only counted; a case without a matched pair scores Dice 0 and HD95"
            f" {one_empty_hd95}, one without any lesion is left out"
        )
    return (
        f"{matching}, those under {lesion_wise['large_volume_mm3']:g} mm³ counted but not scored, cases without"
        f" a larger one left out; {penalties}"
    )


_CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; }
table { border-collapse: collapse; }
th, td { border: 1px solid #bbb; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
img { max-width: 100%; }
"""


def write_report(
    *,
    out_dir: Path,
    summary: Mapping[str, Any],
    curve_png: Path | None = None,
    scores_png: Path | None = None,
    overlays: Sequence[Overlay] = (),
    flags: Mapping[str, Sequence[str]] | None = None,
    title: str = "medseg evaluation report",
) -> Path:
    """Write a self-contained ``out_dir/report.html`` (images embedded as base64 PNG).

    Args:
        out_dir: output folder.
        summary: what :func:`medseg.evaluation.evaluate_folder` returned (or ``summary.json``).
        curve_png: a training-curve PNG to embed, if any.
        scores_png: the per-region score plot (``metrics.png`` of the evaluation) to embed, if any.
        overlays: overlays to embed, e.g. from :func:`render_case_overlays`.
        flags: each predicted case's quality flags (:mod:`medseg.inference.quality`; ``medseg predict``'s
            results or the ``flags`` column of its ``summary.csv``): the flagged cases are listed, and an
            overlay's caption names its case's flags. ``None``: not known, no section.
        title: page title.

    Returns:
        The path of ``report.html``.
    """
    missing = summary.get("missing_predictions") or []
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Label table <b>{html.escape(str(summary['label_table']))}</b>, {len(summary['cases'])} case(s)"
        + (f", {len(missing)} without prediction (scored as empty masks)" if missing else "")
        + ". Dice, 95th-percentile Hausdorff distance (HD95, mm) and normalised surface Dice (NSD) at"
        f" {summary['nsd_tolerance_mm']:g} mm per region; sd is the population standard deviation over"
        " cases.</p>",
        "<h2>Metrics</h2>",
        _summary_table(summary),
    ]
    lesion_wise = summary.get("lesion_wise")
    if lesion_wise:
        parts += [
            "<h2>Lesion-wise</h2>",
            f"<p>BraTS lesion-wise scores, {html.escape(lesion_wise['rules'])} rules:"
            f" {_lesion_rules_text(lesion_wise, _one_empty_hd95(summary))}. TP, FN and FP are lesion counts summed"
            " over cases; F1, 2 TP / (2 TP + FP + FN), is per case.</p>",
            _lesion_table(lesion_wise),
        ]
    if scores_png is not None:
        parts.append(f'<img src="{_png_data_uri(scores_png)}" alt="Dice, HD95 and NSD per region over cases">')
    if flags is not None:
        parts += ["<h2>Quality flags</h2>", _flags_table(flags)]
    if curve_png is not None:
        parts += ["<h2>Training</h2>", f'<img src="{_png_data_uri(curve_png)}" alt="training curve">']
    if overlays:
        parts.append("<h2>Cases</h2>")
        parts.append(
            "<p>Axial slice through the largest reference area, radiological view (anterior up, patient"
            " left on image right). Green: reference, red: prediction.</p>"
        )
        for overlay in overlays:
            raised = (flags or {}).get(overlay.case) or ()
            caption = html.escape(overlay.caption + (f" (flags: {', '.join(raised)})" if raised else ""))
            img = f'<img src="{_png_data_uri(overlay.png)}" alt="{caption}">'
            parts.append(f"<figure>{img}<figcaption>{caption}</figcaption></figure>")
    parts.append("</body></html>\n")
    path = Path(out_dir) / "report.html"
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
