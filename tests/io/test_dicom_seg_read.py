"""DICOM-SEG read back: the label map ``write_label_map`` wrote, on the grid of its frames, placed on the
source series' grid; scored by ``medseg evaluate`` as a prediction; and the one-line refusal of a series
whose UIDs an anonymiser emptied."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medseg.errors import MedsegInputError
from medseg.evaluation import evaluate_folder, read_metrics_csv
from medseg.io import onto_grid, read_dicom_series, read_image, write_label_map
from medseg.labels import BRATS2021

SLICES, ROWS, COLUMNS = 9, 12, 10


def _series(folder: Path, ct_slices: Callable[..., list[Any]], modify: Callable[[Any], None] | None = None) -> Path:
    volume = np.random.default_rng(0).integers(0, 2000, size=(SLICES, ROWS, COLUMNS), dtype=np.uint16)
    folder.mkdir(parents=True)
    for k, ds in enumerate(ct_slices(volume)):
        if modify is not None:
            modify(ds)
        ds.save_as(str(folder / f"slice{k:03d}.dcm"), enforce_file_format=True)
    return folder


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    """BraTS 2021 values {1, 2, 4} on slices 2-6 only: the SEG omits the empty frames around them and slice 4."""
    labels = np.zeros(shape, np.uint8)
    labels[1:6, 2:9, 2:4] = 2
    labels[3:8, 4:7, 3:7] = 1
    labels[4:6, 5:6, 5:7] = 4
    labels[:, :, 4] = 0
    return labels


def test_a_dicom_seg_reads_back_onto_its_series_grid(tmp_path: Path, ct_slices: Callable[..., list[Any]]) -> None:
    image = read_dicom_series(_series(tmp_path / "ct", ct_slices))
    labels = _labels(image.geometry.shape)
    out = write_label_map(labels, image.geometry, tmp_path / "seg.dcm", table=BRATS2021, reference=image)
    seg = read_image(out)
    assert seg.meta["dicom_seg"] is True
    assert seg.array.shape != labels.shape  # the frames from slice 2 to 6 only
    placed, mapping = onto_grid(seg, image.geometry, reference_path=image.path, partial=True)
    np.testing.assert_array_equal(placed, labels)  # segment numbers 1-3 back to the label values 1, 2, 4
    assert mapping.offsets == (0, 0, 2)  # its first frame is slice 2
    assert sorted(np.unique(seg.array).tolist()) == [0, 1, 2, 4]


def test_a_dicom_seg_prediction_is_scored_against_a_nifti_reference(
    tmp_path: Path, ct_slices: Callable[..., list[Any]]
) -> None:
    image = read_dicom_series(_series(tmp_path / "ct", ct_slices))
    labels = _labels(image.geometry.shape)
    write_label_map(labels, image.geometry, tmp_path / "pred" / "ct.dcm", table=BRATS2021, reference=image)
    write_label_map(labels, image.geometry, tmp_path / "ref" / "ct.nii.gz", table=BRATS2021, reference=image)
    summary = evaluate_folder(
        pred_dir=tmp_path / "pred", ref_dir=tmp_path / "ref", out_dir=tmp_path / "out", labels="brats2021"
    )
    assert summary["cases"] == ["ct"]
    scores = read_metrics_csv(tmp_path / "out" / "metrics.csv").scores["ct"]
    assert {region: s.dice for region, s in scores.items()} == {"WT": 1.0, "TC": 1.0, "ET": 1.0}


def test_an_anonymised_series_without_uids_is_refused_in_one_line(
    tmp_path: Path, ct_slices: Callable[..., list[Any]]
) -> None:
    """Before: a bare ``KeyError: ''`` from deep inside the writer."""

    def blank(ds: Any) -> None:
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ""

    image = read_dicom_series(_series(tmp_path / "anon", ct_slices, blank))
    labels = _labels(image.geometry.shape)
    with pytest.raises(MedsegInputError) as err:
        write_label_map(labels, image.geometry, tmp_path / "seg.dcm", table=BRATS2021, reference=image)
    message = str(err.value)
    assert "\n" not in message and err.value.path == tmp_path / "anon"
    assert message.endswith(
        "no DICOM-SEG can reference series (synthetic CT): its StudyInstanceUID, SeriesInstanceUID is empty"
        " (anonymised?), and a DICOM-SEG names its source images by these UIDs; use --format nifti or seg.nrrd"
    )
    assert not (tmp_path / "seg.dcm").exists()
