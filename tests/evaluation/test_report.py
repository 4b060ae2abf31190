from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from medseg.evaluation import evaluate_folder
from medseg.evaluation.report import (
    brats_image_path,
    pick_cases,
    radiological_axial,
    render_case_overlays,
    render_overlay,
    reorient_to_ras,
    write_report,
)
from medseg.io import Geometry, write_nifti
from medseg.labels import BRATS_RELEASES

SHAPE = (48, 56, 20)
SPACING = (1.0, 0.8, 3.0)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lps_geometry() -> Geometry:
    """File axes run toward patient Left, Posterior, Superior (as DICOM-derived data often do)."""
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = (24.0, 22.0, -30.0)
    return Geometry(SHAPE, affine)


def _head(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A FLAIR-like ellipsoid head and a tumour label map on the patient's right, anterior side."""
    idx = np.indices(SHAPE).astype(float)
    centre = np.array(SHAPE) / 2
    r = np.sqrt(sum(((idx[i] - centre[i]) * SPACING[i] / (20.0, 21.0, 28.0)[i]) ** 2 for i in range(3)))
    flair = np.where(r < 1.0, 300.0 + 20 * rng.standard_normal(SHAPE), 0.0).astype(np.float32)
    # LPS file order: small i = patient right, small j = anterior
    t = np.sqrt(((idx[0] - 15) * SPACING[0]) ** 2 + ((idx[1] - 17) * SPACING[1]) ** 2 + ((idx[2] - 10) * 3.0) ** 2)
    seg = np.zeros(SHAPE, np.uint8)
    seg[t < 9] = 2
    seg[t < 5] = 4
    seg[t < 2.5] = 1
    flair[seg > 0] += 250.0
    return flair, seg


def _dataset(root: Path, n: int = 4) -> tuple[Path, Path]:
    rel = BRATS_RELEASES["2021"]
    rng = np.random.default_rng(0)
    geometry = _lps_geometry()
    for i in range(n):
        case = rel.case_id(i + 1)
        flair, seg = _head(rng)
        write_nifti(seg, geometry, root / "ref" / case / rel.file_name(case, "seg"))
        write_nifti(flair, geometry, root / "ref" / case / rel.file_name(case, "flair"))
        pred = np.roll(seg, i, axis=0)  # case 1 perfect, later ones increasingly shifted
        write_nifti(pred, geometry, root / "pred" / f"{case}.nii.gz")
    return root / "pred", root / "ref"


def _assert_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    return pixels


def test_radiological_orientation_from_lps_file() -> None:
    marker = np.zeros(SHAPE, bool)
    marker[2, 3, 10] = True  # LPS file order: near patient right, anterior
    ras, spacing = reorient_to_ras(marker, _lps_geometry().affine)
    assert spacing == pytest.approx(SPACING)
    assert ras[SHAPE[0] - 3, SHAPE[1] - 4, 10]  # RAS: high X = right, high Y = anterior
    view = radiological_axial(ras, 10)
    assert view.shape == (SHAPE[1], SHAPE[0])  # rows follow A->P, columns R->L
    rows, cols = np.nonzero(view)
    # anterior at the top, patient right on the image left
    assert (rows[0], cols[0]) == (3, 2)


def test_render_overlay_writes_a_png(tmp_path: Path) -> None:
    flair, seg = _head(np.random.default_rng(1))
    out = render_overlay(
        image=flair,
        ref=seg,
        pred=np.roll(seg, 3, axis=1),
        out=tmp_path / "o" / "overlay.png",
        title="case 1",
        affine=_lps_geometry().affine,
    )
    pixels = _assert_png(out)
    # green reference and red prediction contours are both drawn
    rgb = pixels[..., :3]
    assert np.any((rgb[..., 1] > 0.8) & (rgb[..., 0] < 0.3) & (rgb[..., 2] < 0.3))
    assert np.any((rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3))
    # empty masks still render (middle slice, no contours)
    empty = np.zeros(SHAPE, np.uint8)
    _assert_png(render_overlay(image=flair, ref=empty, pred=empty, out=tmp_path / "empty.png", title="empty"))


def test_pick_cases() -> None:
    assert pick_cases({"a": 0.5, "b": 0.9, "c": 0.1, "d": 0.7, "e": 0.3}) == [
        ("best", "b"),
        ("median", "a"),
        ("worst", "c"),
    ]
    assert pick_cases({"a": 0.5, "b": 0.9}) == [("best", "b"), ("worst", "a")]
    assert pick_cases({"only": 0.4}) == [("best", "only")]
    assert pick_cases({}) == []


def test_report_with_case_overlays(tmp_path: Path) -> None:
    pred_dir, ref_dir = _dataset(tmp_path)
    eval_dir = tmp_path / "eval"
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=eval_dir)
    rel = BRATS_RELEASES["2021"]
    case1 = rel.case_id(1)
    assert brats_image_path(ref_dir / case1 / rel.file_name(case1, "seg"), case1, channel="T2").name == (
        f"{case1}_t2.nii.gz"
    )

    report_dir = tmp_path / "report"
    overlays = render_case_overlays(
        metrics_csv=eval_dir / "metrics.csv", pred_dir=pred_dir, ref_dir=ref_dir, out_dir=report_dir
    )
    assert [o.case for o in overlays] == [rel.case_id(1), rel.case_id(2), rel.case_id(4)]
    assert [o.caption.split()[0] for o in overlays] == ["best", "median", "worst"]
    for overlay in overlays:
        assert overlay.png.parent == report_dir / "overlays"
        _assert_png(overlay.png)

    curve = tmp_path / "curve.png"
    curve.write_bytes(overlays[0].png.read_bytes())  # any PNG stands in for the training curve
    path = write_report(out_dir=report_dir, summary=summary, curve_png=curve, overlays=overlays)
    assert path == report_dir / "report.html"
    text = path.read_text(encoding="utf-8")

    # table values equal the summary
    rows = re.findall(
        r"<tr><td>(\w+)</td><td>([^<]+)</td><td>[^<]+</td><td>([^<]+)</td><td>[^<]+</td>"
        r"<td>([^<]+)</td><td>([^<]+)</td><td>(\d+)</td>",
        text,
    )
    assert [r[0] for r in rows] == ["WT", "TC", "ET"]
    for region, dice_cell, hd_cell, nsd_cell, nsd_median, n in rows:
        stats = summary["regions"][region]
        assert dice_cell == f"{stats['dice']['mean']:.4f} ± {stats['dice']['std']:.4f}"
        assert hd_cell == f"{stats['hd95']['mean']:.2f} ± {stats['hd95']['std']:.2f}"
        assert nsd_cell == f"{stats['nsd']['mean']:.4f} ± {stats['nsd']['std']:.4f}"
        assert nsd_median == f"{stats['nsd']['median']:.4f}"
        assert int(n) == stats["n"]
    assert "(NSD) at 1 mm" in text

    # self-contained: every image is an embedded PNG (curve + 3 overlays)
    images = re.findall(r'<img src="([^"]+)"', text)
    assert len(images) == 4
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    for overlay in overlays:
        assert overlay.caption in text


def test_report_without_curve_or_overlays(tmp_path: Path) -> None:
    summary = {
        "label_table": "brats2023",
        "cases": ["x"],
        "missing_predictions": ["x"],
        "nsd_tolerance_mm": 2.0,
        "regions": {
            r: {
                "n": 1,
                "dice": {"mean": 0.0, "std": 0.0, "median": 0.0},
                "hd95": {"mean": 1.5, "std": 0, "median": 1.5},
                "nsd": {"mean": 0.25, "std": 0, "median": 0.25},
            }
            for r in ("WT", "TC", "ET")
        },
    }
    text = write_report(out_dir=tmp_path, summary=summary).read_text(encoding="utf-8")
    assert "<img" not in text
    assert "1 without prediction" in text
    assert text.count("0.0000 ± 0.0000") == 3
    assert text.count("0.2500 ± 0.0000") == 3 and "(NSD) at 2 mm" in text
    assert "Lesion-wise" not in text

    summary["lesion_wise"] = {
        "rules": "MET",
        "dilation": 1,
        "min_volume_mm3": 2.0,
        "regions": {
            r: {
                "n": 1,
                "dice": {"mean": 0.125, "std": 0.0},
                "hd95": {"mean": 93.5, "std": 0.0},
                "tp": 1,
                "fn": 2,
                "fp": 5,
            }
            for r in ("WT", "TC", "ET")
        },
    }
    text = write_report(out_dir=tmp_path, summary=summary).read_text(encoding="utf-8")
    assert "MET rules" in text and "at most 2 mm³" in text
    # a summary written before medseg reported the lesion F1 has none to show
    row = "<tr><td>ET</td><td>0.1250 ± 0.0000</td><td>93.50 ± 0.00</td><td>-</td><td>1</td><td>2</td><td>5</td></tr>"
    assert row in text
    summary["lesion_wise"]["regions"]["ET"]["f1"] = {"mean": 2 / 9, "std": 0.0}
    text = write_report(out_dir=tmp_path, summary=summary).read_text(encoding="utf-8")
    assert "<td>93.50 ± 0.00</td><td>0.2222 ± 0.0000</td><td>1</td>" in text
    assert "Quality flags" not in text  # not known: no section

    flags = {"a": (), "b": ("unlike_training", "empty_label"), "c": ("touches_border",)}
    text = write_report(out_dir=tmp_path, summary=summary, flags=flags).read_text(encoding="utf-8")
    assert "2 of 3 predicted case(s) raise quality flags" in text
    assert "<tr><td>b</td><td>unlike_training, empty_label</td></tr>" in text and "<td>a</td>" not in text
    text = write_report(out_dir=tmp_path, summary=summary, flags={"a": ()}).read_text(encoding="utf-8")
    assert "0 of 1 predicted case(s) raise quality flags" in text and "<th>flags</th>" not in text
