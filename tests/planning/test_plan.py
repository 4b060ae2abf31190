"""``medseg plan``: the dataset fingerprint (checked against nibabel and NumPy on hand-built files, one of
them stored on permuted, flipped axes), the suggestion rules (worked out by hand), the CLI and its errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.config import Config, config_from_dict, load_config
from medseg.errors import MedsegInputError
from medseg.labels import get_label_table
from medseg.planning.plan import (
    FINGERPRINT_JSON,
    FINGERPRINT_PNG,
    FOREGROUND_SAMPLES_PER_CASE,
    PLAN_JSON,
    CaseFingerprint,
    Fingerprint,
    IntensityRange,
    _foreground_sample,
    fingerprint_dataset,
    missing_labels,
    patch_size,
    plan_transforms,
    target_spacing,
    unusual_spacing,
    write_plan,
)
from medseg.training import validate_config

BODY_HU = -500.0
LABELS = {"0": "background", "1": "liver", "2": "spleen"}


def _case(rng: np.random.Generator, shape: tuple[int, int, int], *, labelled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Air (-1000 HU) around a box of soft tissue (random HU, -100..200) holding a liver and a spleen."""
    image = np.full(shape, -1000.0, dtype=np.float32)
    body = tuple(slice(2, s - 3) for s in shape)
    image[body] = rng.uniform(-100.0, 200.0, size=image[body].shape)
    label = np.zeros(shape, dtype=np.uint8)
    if labelled:
        label[3:6, 4:8, 3:5] = 1  # inside the body box of every shape below
        label[6:8, 9:12, 5:7] = 2
    return image, label


# (voxel -> mm) affines: an RAS one, and one whose array axes are S, L, P (so RAS spacing is reordered)
CASES = {
    "ras": (np.diag([0.8, 0.8, 2.5, 1.0]), (20, 18, 12), True),
    "permuted": (np.array([[0, -0.7, 0, 20], [0, 0, -0.9, 30], [3.0, 0, 0, -5], [0, 0, 0, 1]]), (12, 20, 18), True),
    "empty": (np.diag([0.8, 0.8, 2.0, 1.0]), (20, 18, 12), False),
}


@pytest.fixture
def ct_task(tmp_path: Path) -> Path:
    """A tiny MSD-layout CT task of the three :data:`CASES`."""
    root = tmp_path / "task"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(5)
    for name, (affine, shape, labelled) in CASES.items():
        image, label = _case(rng, shape, labelled=labelled)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{name}.nii.gz")
    training = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in CASES]
    dataset = {"name": "tiny", "modality": {"0": "CT"}, "labels": LABELS, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def _ct_config(root: Path, **transforms: object) -> Config:
    return config_from_dict(
        {
            "data": {"root": str(root), "layout": "msd", "num_folds": 3, "num_workers": 0},
            "transforms": {"intensity": "ct_window", "foreground_threshold": BODY_HU, **transforms},
            "network": {"name": "unet", "kwargs": {"channels": [8, 16, 32], "strides": [2, 2]}},
        }
    )


def _canonical(path: Path) -> np.ndarray:
    """The file's voxels on RAS axes, by nibabel (independent of MONAI's reorientation)."""
    return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)


def test_fingerprint_measures_each_case_on_ras_axes(ct_task: Path) -> None:
    fingerprint = fingerprint_dataset(_ct_config(ct_task))
    assert fingerprint.orientation == "RAS"
    assert fingerprint.channels == ("CT",)
    measured = {c.id: c for c in fingerprint.cases}
    assert set(measured) == set(CASES)
    expected_spacing = {"ras": (0.8, 0.8, 2.5), "permuted": (0.7, 0.9, 3.0), "empty": (0.8, 0.8, 2.0)}
    for name in CASES:
        case = measured[name]
        np.testing.assert_allclose(case.spacing_mm, expected_spacing[name], rtol=1e-5)
        image = _canonical(ct_task / "imagesTr" / f"{name}.nii.gz")
        label = _canonical(ct_task / "labelsTr" / f"{name}.nii.gz")
        body = np.argwhere(image > BODY_HU)
        assert case.shape == tuple(int(s) for s in body.max(axis=0) - body.min(axis=0) + 1)  # the crop's box
        assert case.labels == tuple(int(v) for v in np.unique(label))
        if name == "empty":
            assert case.foreground == ()
            continue
        inside = image[label > 0]
        (range_,) = case.foreground
        np.testing.assert_allclose([range_.p00_5, range_.p99_5], np.percentile(inside, [0.5, 99.5]), atol=1e-3)
        np.testing.assert_allclose([range_.mean, range_.std], [inside.mean(), inside.std()], atol=1e-3)


def test_plan_suggests_the_window_and_a_patch_the_network_takes(ct_task: Path) -> None:
    config = _ct_config(ct_task)
    fingerprint = fingerprint_dataset(config)
    suggestions = {s.key: s for s in plan_transforms(fingerprint, config)}
    assert list(suggestions) == [
        "transforms.spacing",
        "transforms.hu_window",
        "transforms.patch_size",
        "inference.roi_size",
    ]
    # every voxel inside the labels (under 10,000 per case), of all cases together
    images = [_canonical(ct_task / "imagesTr" / f"{n}.nii.gz") for n in CASES]
    labels = [_canonical(ct_task / "labelsTr" / f"{n}.nii.gz") for n in CASES]
    inside = np.concatenate([image[label > 0] for image, label in zip(images, labels, strict=True)])
    window = suggestions["transforms.hu_window"]
    assert window.value == [round(v) for v in np.percentile(inside, [0.5, 99.5])]
    assert window.reason == "0.5th and 99.5th percentiles inside the labels of 2 cases together"
    assert window.current == [-175.0, 250.0]
    spacing = suggestions["transforms.spacing"].value
    assert spacing == [0.8, 0.8, 2.5]  # per-axis medians of (0.8, 0.7, 0.8), (0.8, 0.9, 0.8), (2.5, 3, 2)
    patch = suggestions["transforms.patch_size"].value
    assert all(p % 4 == 0 for p in patch)  # the U-Net's two stride-2 steps
    roi = suggestions["inference.roi_size"]  # the config's default window is not that patch
    assert (roi.current, roi.value) == ([96, 96, 96], patch)
    validate_config(dataclasses.replace(config, transforms=dataclasses.replace(config.transforms, patch_size=patch)))


def test_mr_configs_get_no_window(brats_root: Path, tmp_path: Path) -> None:
    config = config_from_dict({"data": {"root": str(brats_root), "num_workers": 0}})
    fingerprint = fingerprint_dataset(config)
    assert fingerprint.channels == ("T1", "T1ce", "T2", "FLAIR")
    assert all(len(c.foreground) == 4 for c in fingerprint.cases)
    suggestions = plan_transforms(fingerprint, config)
    keys = [s.key for s in suggestions]
    assert keys[:2] == ["transforms.spacing", "transforms.patch_size"]
    assert keys[2:] == ([] if suggestions[1].value == config.inference.roi_size else ["inference.roi_size"])
    assert suggestions[0].value is None  # the phantoms all have 4 mm voxels: nothing to resample
    assert suggestions[0].reason == "every case is already at 4 x 4 x 4 mm: no resampling"
    write_plan(fingerprint, suggestions, tmp_path / "plan", config_path="brats.yaml")
    assert json.loads((tmp_path / "plan" / PLAN_JSON).read_text())["set"][0] == "transforms.spacing=null"
    assert (tmp_path / "plan" / FINGERPRINT_PNG).is_file()


@pytest.mark.parametrize(
    ("spacings", "shapes", "expected"),
    [
        # medians per axis
        ([[1, 1, 1], [1, 1, 2], [1.2, 1.2, 1.5]], [[100, 100, 100]] * 3, ((1.0, 1.0, 1.5), None)),
        # thick slices, few of them: S takes its 10th percentile, 1.5 + 0.9 * (2 - 1.5)
        ([[0.8, 0.8, z] for z in [1.5, 2] + [5] * 8], [[512, 512, 60]] * 10, ((0.8, 0.8, 1.95), 2)),
        # thick slices, but as many of them as the other axes hold voxels: the median stays
        ([[0.8, 0.8, z] for z in [1.5, 2] + [5] * 8], [[100, 100, 90]] * 10, ((0.8, 0.8, 5.0), None)),
        # a 10th percentile finer than the other axes: never finer than them
        ([[0.8, 0.8, z] for z in [0.5, 0.5] + [5] * 8], [[512, 512, 60]] * 10, ((0.8, 0.8, 0.8), 2)),
        # the coarse axis can be any axis
        ([[z, 0.7, 0.7] for z in [1.5, 2] + [5] * 8], [[60, 512, 512]] * 10, ((1.95, 0.7, 0.7), 0)),
    ],
)
def test_target_spacing_follows_nnunets_rule(spacings: list, shapes: list, expected: tuple) -> None:
    assert target_spacing(np.array(spacings, dtype=float), np.array(shapes, dtype=float)) == expected


@pytest.mark.parametrize(
    ("shape", "spacing", "divisor", "max_voxels", "expected"),
    [
        # a BraTS brain at 1 mm: 144 x 176 x 144 shrinks to nnU-Net's 128^3
        ((140, 170, 140), (1, 1, 1), 16, 128**3, [128, 128, 128]),
        # small cases: rounded up to the divisor, not shrunk
        ((40, 50, 20), (1, 1, 1), 16, 128**3, [48, 64, 32]),
        # 3 mm slices: S (longest in mm) shrinks first, to 64 (192 mm), then R, A, R by turns
        ((200, 200, 200), (1, 1, 3), 32, 128**3, [160, 192, 64]),
        # never below the divisor
        ((100, 100, 100), (1, 1, 1), 32, 1, [32, 32, 32]),
    ],
)
def test_patch_size_by_hand(shape: tuple, spacing: tuple, divisor: int, max_voxels: int, expected: list) -> None:
    assert patch_size(shape, spacing, divisor=divisor, max_voxels=max_voxels) == expected


def _digests(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_writes_the_plan_and_a_train_command_that_loads(
    ct_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = tmp_path / "ct.yaml"
    config_path.write_text(json.dumps(_ct_config(tmp_path / "elsewhere").to_dict()))  # JSON is YAML
    before = _digests(ct_task)
    out = tmp_path / "plan"
    root_override = f"data.root={ct_task}"
    assert main(["plan", "--config", str(config_path), "--set", root_override, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert _digests(ct_task) == before  # inputs untouched
    assert "medseg: note: label 1 (liver) is absent from 1 of 3 cases: empty" in captured.err
    plan = json.loads((out / PLAN_JSON).read_text())
    assert [s["key"] for s in plan["suggestions"]] == [
        "transforms.spacing",
        "transforms.hu_window",
        "transforms.patch_size",
        "inference.roi_size",  # the config's 96³ window is not the planned patch
    ]
    assert plan["suggestions"][3]["value"] == plan["suggestions"][2]["value"] != [96, 96, 96]
    record = json.loads((out / FINGERPRINT_JSON).read_text())
    assert [c["id"] for c in record["cases"]] == list(CASES)
    assert record["auto3dseg_summary"]["n_cases"] == 3
    assert (out / FINGERPRINT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    command = next(line for line in captured.out.splitlines() if line.startswith("train with: "))
    words = shlex.split(command.removeprefix("train with: "))
    sets = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    assert sets == [root_override, *plan["set"]]  # the data planned on, then the suggestions
    planned = load_config(config_path, sets)  # what the printed command trains with
    assert Path(planned.data.root) == ct_task
    assert planned.transforms.hu_window == plan["suggestions"][1]["value"]
    assert planned.inference.roi_size == planned.transforms.patch_size == plan["suggestions"][2]["value"]
    validate_config(planned)


def _write_config(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "ct.yaml"
    path.write_text(json.dumps(_ct_config(root).to_dict()))
    return path


def test_cli_names_an_inconsistent_file_and_writes_nothing(
    ct_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = ct_task / "labelsTr" / "ras.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 18, 11), np.uint8), np.diag([0.8, 0.8, 2.5, 1.0])), bad)
    out = tmp_path / "plan"
    assert main(["plan", "--config", str(_write_config(tmp_path, ct_task)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"medseg: error: {bad}: not on the grid of ") and ": shape (20, 18, 11), not" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-patch-voxels", "0"], "the largest patch must hold at least 1 voxel, got 0"),
        (["--workers", "-1"], "workers must be >= 0, got -1"),
    ],
)
def test_cli_refuses_bad_arguments(
    ct_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "plan"
    assert main(["plan", "--config", str(_write_config(tmp_path, ct_task)), "--out", str(out), *args]) == 2
    assert capsys.readouterr().err.strip() == f"medseg: error: {message}"
    assert not out.exists()


def test_a_dataset_whose_labels_are_all_empty_has_no_window(ct_task: Path) -> None:
    for name, (affine, shape, _) in CASES.items():
        nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine), ct_task / "labelsTr" / f"{name}.nii.gz")
    config = _ct_config(ct_task)
    with pytest.raises(MedsegInputError, match="no reference label of the dataset holds a labelled voxel"):
        plan_transforms(fingerprint_dataset(config), config)


@pytest.mark.parametrize("workers", [0, 1])
def test_cli_names_an_image_with_nan_voxels_from_any_process(
    ct_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: int
) -> None:
    bad = ct_task / "imagesTr" / "permuted.nii.gz"
    image = nib.load(bad)
    voxels = np.asarray(image.dataobj).copy()
    voxels[5, 5, 5] = np.nan
    nib.save(nib.Nifti1Image(voxels, image.affine), bad)
    config = str(_write_config(tmp_path, ct_task))
    assert main(["plan", "--config", config, "--out", str(tmp_path / "plan"), "--workers", str(workers)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after MONAI's progress bar
    assert last == f"medseg: error: {bad}: 1 voxel is NaN or infinite"


def _fingerprint(*cases: CaseFingerprint, pooled: tuple[IntensityRange, ...] = ()) -> Fingerprint:
    return Fingerprint("RAS", ("CT",), get_label_table("msd_spleen"), cases, {}, pooled)


def _hand_case(name: str, spacing: tuple, labels: tuple, window: tuple | None) -> CaseFingerprint:
    foreground = () if window is None else (IntensityRange(window[0], window[1], 0.0, 1.0),)
    return CaseFingerprint(name, spacing, (100, 100, 50), labels, foreground)


def test_window_notes_and_their_edge_cases_on_a_hand_built_fingerprint(tmp_path: Path) -> None:
    fingerprint = _fingerprint(
        _hand_case("a", (1.0, 1.0, 2.0), (0, 1), (-10.4, 100.6)),
        _hand_case("b", (1.0, 1.0, 2.0), (0,), None),  # empty reference: no window of its own
        _hand_case("c", (1.0, 1.0, 4.5), (0, 1), (20.0, 150.0)),  # 4.5 mm slices: over twice the median
        _hand_case("d", (0.45, 1.0, 2.0), (0, 1), (5.0, 120.0)),  # 0.45 mm: under half the median
        pooled=(IntensityRange(-12.4, 149.5, 0.0, 1.0), IntensityRange(3.0, 180.2, 0.0, 1.0)),
    )
    config = config_from_dict({"transforms": {"intensity": "ct_window"}, "network": {"name": "unet"}})
    window = {s.key: s for s in plan_transforms(fingerprint, config)}["transforms.hu_window"]
    assert window.value == [-12.0, 180.0]  # one window for both channels, rounded
    assert window.reason.endswith("of 3 cases together")
    assert unusual_spacing(fingerprint) == [
        "c: spacing 1 x 1 x 4.5 mm, far from the median 1 x 1 x 2",
        "d: spacing 0.45 x 1 x 2 mm, far from the median 1 x 1 x 2",
    ]
    assert missing_labels(fingerprint) == ["label 1 (spleen) is absent from 1 of 4 cases: b"]
    one_value = (IntensityRange(40.0, 40.0, 40.0, 0.0),)
    uniform = _fingerprint(_hand_case("u", (1.0, 1.0, 1.0), (0, 1), (40.0, 40.0)), pooled=one_value)
    assert {s.key: s for s in plan_transforms(uniform, config)}["transforms.hu_window"].value == [40.0, 41.0]


def test_each_case_gives_at_most_10000_distinct_voxels_inside_its_label(tmp_path: Path) -> None:
    shape = (60, 50, 40)
    label = np.zeros(shape, np.uint8)
    label[5:55, 5:45, 10:30] = 1  # 40,000 voxels
    image = np.arange(label.size, dtype=np.float32).reshape(shape)  # each voxel's value is its index
    for name, data in (("image", image), ("label", label)):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"{name}.nii.gz")
    sample = _foreground_sample(((tmp_path / "image.nii.gz",), tmp_path / "label.nii.gz", 7))
    assert sample.shape == (1, FOREGROUND_SAMPLES_PER_CASE)
    drawn = sample[0].astype(int)
    assert len(set(drawn)) == FOREGROUND_SAMPLES_PER_CASE
    assert label.reshape(-1)[drawn].all()
    again = _foreground_sample(((tmp_path / "image.nii.gz",), tmp_path / "label.nii.gz", 7))
    np.testing.assert_array_equal(again, sample)  # seeded
