"""Tests of the BraTS-like phantom generator: layout, determinism, anatomy, contrast and lesion variety."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg.cli import main
from medseg.errors import MedsegInputError
from medseg.io import read_nifti
from medseg.phantoms import _anatomy as anatomy
from medseg.phantoms.brats import BratsPhantom, generate_brats_dataset, make_brats_phantom

SHAPE = (64, 64, 48)
SPACING = 3.0


def _phantom(index: int, seed: int = 0, release: str = "2021") -> BratsPhantom:
    return make_brats_phantom(index, seed=seed, release=release, shape=SHAPE, spacing=SPACING)


@pytest.fixture(scope="module")
def cases() -> list[BratsPhantom]:
    """Six cases at 3 mm, for contrast and structure checks."""
    return [_phantom(i, seed=7) for i in range(6)]


@pytest.fixture(scope="module")
def batch() -> list[BratsPhantom]:
    """Twenty coarse (4 mm) cases of one dataset, for the variety of lesions."""
    return [make_brats_phantom(i, seed=7, shape=(48, 48, 40), spacing=4.0) for i in range(20)]


@pytest.mark.parametrize(
    ("release", "folder", "suffixes", "labels"),
    [
        ("2021", "BraTS2021_00003", ("t1", "t1ce", "t2", "flair"), {0, 1, 2, 4}),
        ("2023", "BraTS-GLI-00003-000", ("t1n", "t1c", "t2w", "t2f"), {0, 1, 2, 3}),
        ("2024", "BraTS-GLI-00003-000", ("t1n", "t1c", "t2w", "t2f"), {0, 1, 2, 3, 4}),
    ],
)
def test_release_layout_labels_and_grid(tmp_path: Path, release, folder, suffixes, labels) -> None:
    paths = generate_brats_dataset(
        tmp_path, cases=1, seed=1, release=release, shape=SHAPE, spacing=SPACING, workers=1, start_index=3
    )
    assert paths == [tmp_path / folder]
    sep = "_" if release == "2021" else "-"
    names = sorted(p.name for p in paths[0].iterdir())
    assert names == sorted(f"{folder}{sep}{s}.nii.gz" for s in (*suffixes, "seg"))
    seg = read_nifti(paths[0] / f"{folder}{sep}seg.nii.gz", dtype=None)
    assert seg.array.dtype == np.uint8
    assert set(np.unique(seg.array)) <= labels
    images = [read_nifti(paths[0] / f"{folder}{sep}{s}.nii.gz", dtype=None) for s in suffixes]
    brain = images[0].array > 0
    for image in images:
        assert image.array.dtype == np.int16
        assert image.geometry.same_grid(seg.geometry)
        assert np.array_equal(image.array > 0, brain), "all modalities share one skull-stripping mask"
    assert not seg.array[~brain].any(), "no tumour label outside the brain"
    # BraTS-style LPS voxel order: RAS needs a flip of the first two axes.
    np.testing.assert_allclose(np.diag(seg.geometry.affine)[:3], [-SPACING, -SPACING, SPACING])
    assert seg.geometry.shape == SHAPE


def test_deterministic_for_a_seed() -> None:
    a, b, c = _phantom(2, seed=5), _phantom(2, seed=5), _phantom(2, seed=6)
    for key in a.images:
        assert np.array_equal(a.images[key], b.images[key])
        assert not np.array_equal(a.images[key], c.images[key])
    assert np.array_equal(a.seg, b.seg)


def test_parallel_output_equals_serial(tmp_path: Path) -> None:
    kwargs = {"cases": 2, "seed": 3, "shape": SHAPE, "spacing": SPACING}
    serial = generate_brats_dataset(tmp_path / "serial", workers=1, **kwargs)
    parallel = generate_brats_dataset(tmp_path / "parallel", workers=2, **kwargs)
    assert [p.name for p in serial] == [p.name for p in parallel]
    for s_dir, p_dir in zip(serial, parallel, strict=True):
        for s_file in sorted(s_dir.iterdir()):
            s_img = read_nifti(s_file, dtype=None)
            p_img = read_nifti(p_dir / s_file.name, dtype=None)
            assert np.array_equal(s_img.array, p_img.array), s_file.name
            assert np.array_equal(s_img.geometry.affine, p_img.geometry.affine)


def test_anatomy_is_defined_in_mm() -> None:
    """The same case on a finer grid shows a brain of the same physical size."""
    coarse = _phantom(4)
    fine = make_brats_phantom(4, seed=0, shape=(96, 96, 72), spacing=2.0)
    volume = [np.count_nonzero(p.tissue) * s**3 for p, s in ((coarse, SPACING), (fine, 2.0))]
    assert volume[0] == pytest.approx(volume[1], rel=0.05)
    assert 0.9e6 < volume[1] < 2.2e6, "a brain of about 1.0-2.0 litres"


def _mean(image: np.ndarray, mask: np.ndarray) -> float:
    return float(image[mask].mean())


def test_tissue_contrast_follows_mri(cases: list[BratsPhantom]) -> None:
    for p in cases:
        healthy = p.seg == 0
        wm, gm, csf = ((p.tissue == t) & healthy for t in (anatomy.WM, anatomy.GM, anatomy.CSF))
        t1, _, t2, flair = (p.images[k].astype(float) for k in ("t1", "t1ce", "t2", "flair"))
        assert _mean(t1, wm) > _mean(t1, gm) > _mean(t1, csf)
        assert _mean(t2, csf) > _mean(t2, gm) > _mean(t2, wm)
        assert _mean(flair, csf) < _mean(flair, wm) < _mean(flair, gm)


def test_lesion_contrast_follows_mri(cases: list[BratsPhantom]) -> None:
    checked = 0
    for p in cases:
        ncr, ed, et = (p.seg == v for v in (1, 2, 4))
        if min(ncr.sum(), ed.sum(), et.sum()) < 5:
            continue
        t1, t1ce, t2, flair = (p.images[k].astype(float) for k in ("t1", "t1ce", "t2", "flair"))
        wm = (p.tissue == anatomy.WM) & (p.seg == 0)
        assert _mean(t1ce, et) > _mean(t1ce, ncr)
        assert _mean(t1ce, et) > _mean(t1ce, ed)
        assert _mean(t1ce, et) > _mean(t1ce, wm), "the enhancing rim is visible on T1ce"
        assert _mean(flair, ed) > _mean(flair, wm), "oedema is bright on FLAIR"
        assert _mean(t2, ed) > _mean(t2, wm), "oedema is bright on T2"
        assert _mean(t1, ed | ncr | et) < _mean(t1, wm), "tumour is hypointense on T1"
        checked += 1
    assert checked >= 3


def test_tumour_structure_nests(cases: list[BratsPhantom]) -> None:
    shells = 0
    for p in cases:
        wt, ncr, et = p.seg > 0, p.seg == 1, p.seg == 4
        assert wt.any()
        assert not (p.tissue[wt] == 0).any()
        if ncr.sum() >= 5 and et.sum() >= 5:
            # ET is a shell around NCR: almost every voxel next to necrosis is necrosis or enhancing.
            ring = ndimage.binary_dilation(ncr) & ~ncr
            assert np.mean(et[ring]) > 0.6, "necrosis is wrapped in enhancing tumour"
            shells += 1
    assert shells >= 3


def _ellipsoid_iou(mask: np.ndarray) -> float:
    """IoU between a mask and the ellipsoid with the same centre and second moments."""
    points = np.argwhere(mask).astype(float)
    centre = points.mean(axis=0)
    cov = np.cov((points - centre).T)
    grid = np.indices(mask.shape).reshape(3, -1).T - centre
    # A solid ellipsoid with semi-axes a has covariance a^2 / 5 along each axis.
    inside = np.einsum("ni,ij,nj->n", grid, np.linalg.inv(5 * cov), grid) <= 1
    inside = inside.reshape(mask.shape)
    return float((inside & mask).sum() / (inside | mask).sum())


def test_lesions_are_not_spheres(cases: list[BratsPhantom]) -> None:
    big = [p for p in cases if (p.seg > 0).sum() > 300]
    assert big
    ious = [_ellipsoid_iou(p.seg > 0) for p in big]
    assert max(ious) < 0.9
    assert np.median(ious) < 0.8


def test_dataset_has_varied_cases(batch: list[BratsPhantom]) -> None:
    without_et = [p for p in batch if not (p.seg == 4).any()]
    assert without_et and all(not p.enhancing for p in without_et)
    components = [ndimage.label(p.seg > 0)[1] for p in batch]
    assert max(components) >= 2, "some cases have two lesions"
    volumes_ml = [(p.seg > 0).sum() * 4.0**3 / 1000 for p in batch]
    assert min(volumes_ml) < 10 < max(volumes_ml), "small and large tumours"
    assert any(p.lesion_count == 2 for p in batch)
    assert any(p.small for p in batch)


def test_invalid_arguments_raise_medseg_errors(tmp_path: Path) -> None:
    with pytest.raises(MedsegInputError, match="release"):
        generate_brats_dataset(tmp_path, cases=1, seed=0, release="2019")
    with pytest.raises(MedsegInputError, match="spacing"):
        generate_brats_dataset(tmp_path, cases=1, seed=0, spacing=0)


def test_cli_writes_a_tiny_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "brats"
    argv = ["phantoms", "brats", "--out", str(out), "--cases", "1", "--seed", "2", "--release", "2023"]
    code = main([*argv, "--shape", "48", "48", "40", "--spacing", "4", "--workers", "1"])
    assert code == 0
    assert "wrote 1 BraTS 2023 phantom cases" in capsys.readouterr().out
    assert (out / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t2f.nii.gz").is_file()


def test_an_existing_case_is_never_replaced_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = tmp_path / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz"  # e.g. the user's own download
    real.parent.mkdir()
    real.write_bytes(b"a real scan")
    argv = ["phantoms", "brats", "--out", str(tmp_path), "--cases", "2", "--shape", "32", "32", "24", "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"medseg: error: {real.parent}: already exists; phantoms do not replace files" + (
        " (choose an empty folder, or --overwrite)\n"
    )
    assert real.read_bytes() == b"a real scan"
    assert not (tmp_path / "BraTS2021_00000").exists()  # refused before writing anything

    assert main([*argv, "--overwrite"]) == 0
    assert nib.load(real).shape == (32, 32, 24)


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_log(
    tmp_path: Path, terminal_stderr: Callable[[], io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = terminal_stderr()
    generate_brats_dataset(tmp_path / "a", cases=2, seed=0, shape=(32, 32, 24), spacing=6.0, workers=1)
    assert "BraTS 2021 phantoms: 100%" in terminal.getvalue() and "2/2" in terminal.getvalue()
    log = io.StringIO()  # a log file or a pipe: a line per case here, no bar
    monkeypatch.setattr(sys, "stderr", log)
    generate_brats_dataset(tmp_path / "b", cases=2, seed=0, shape=(32, 32, 24), spacing=6.0, workers=1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [line.split(",")[0] for line in lines] == [
        "BraTS 2021 phantoms: 1/2 case(s)",
        "BraTS 2021 phantoms: 2/2 case(s)",
    ]


@pytest.mark.parametrize("index", [1, 3, 7])  # enhancing lesions, not of the small class (seed 4)
def test_2024_cases_have_a_fluid_resection_cavity_beside_residual_tumour(index: int) -> None:
    """Release 2024 (brats2024-gli: 1 NETC, 2 SNFH, 3 ET, 4 RC): the cavity takes part of the largest lesion,
    residual tumour and oedema lie around it, and it holds fluid (CSF-like: dark on T1c, bright on T2). (A
    small lesion may be resected whole, as in a gross total resection: those are not checked here.)"""
    post, pre = _phantom(index, seed=4, release="2024"), _phantom(index, seed=4, release="2023")
    assert post.enhancing and not post.small
    assert set(np.unique(post.seg)) == {0, 1, 2, 3, 4}
    cavity = post.seg == 4
    cavity_ml = cavity.sum() * SPACING**3 / 1000
    tumour_ml = np.isin(post.seg, (1, 3)).sum() * SPACING**3 / 1000
    assert 0.5 < cavity_ml < 200 and tumour_ml > 0.5, (cavity_ml, tumour_ml)
    assert (post.tissue[cavity] > 0).all(), "the cavity is inside the brain"
    touching = ndimage.binary_dilation(cavity) & np.isin(post.seg, (1, 2, 3))
    assert touching.any(), "the cavity lies beside the residual tumour"
    # away from the cavity's border the case is the one drawn without treatment
    away = ~ndimage.binary_dilation(cavity, iterations=2)
    np.testing.assert_array_equal(post.seg[away], pre.seg[away])
    np.testing.assert_array_equal(post.tissue, pre.tissue)
    white = (post.tissue == anatomy.WM) & (post.seg == 0)
    inner = ndimage.binary_erosion(cavity)
    assert inner.sum() >= 5
    for channel, darker in (("t1c", True), ("t1n", True), ("t2w", False)):
        image = post.images[channel].astype(float)
        assert (image[inner].mean() < image[white].mean()) == darker, channel
    assert post.images["t1c"][inner].mean() < post.images["t1c"][post.seg == 3].mean()
