"""The one ``dataset.json`` parser: both styles, told apart by their labels, every error naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medseg.data.dataset_json import read_dataset_json
from medseg.errors import MedsegInputError

MSD = {"name": "Liver", "modality": {"1": "ADC", "0": "T2"}, "labels": {"0": "background", "2": "tumour", "1": "liver"}}
NNUNET = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"}


def _write(folder: Path, data: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(data))
    return folder / "dataset.json"


def test_both_styles_read_alike(tmp_path: Path) -> None:
    msd = read_dataset_json(_write(tmp_path / "Task03_Liver", MSD))
    assert (msd.style, msd.name, msd.channels) == ("msd", "Liver", ("T2", "ADC"))
    assert list(msd.labels.items()) == [(0, "background"), (1, "liver"), (2, "tumour")]
    nnunet = read_dataset_json(_write(tmp_path / "Dataset001_Liver", NNUNET).parent)  # the folder holding it
    assert (nnunet.style, nnunet.name, nnunet.channels) == ("nnunet", "Dataset001_Liver", ("CT",))
    assert nnunet.labels == {0: "background", 1: "liver"} and nnunet.data["file_ending"] == ".nii.gz"
    assert nnunet.cases("training") == []


@pytest.mark.parametrize(
    ("data", "style", "match"),
    [
        ([1, 2], None, "must hold a JSON object"),
        ({"modality": {"0": "CT"}}, None, 'non-empty "labels"'),
        ({"labels": {"1": "liver"}}, None, "no background value 0"),
        ({"labels": {"0": "background", "01": "liver", "1": "spleen"}}, None, "share value 1"),
        ({"labels": {"0": "background", "1": 7.5}}, None, "must map to a name"),
        ({"labels": {"background": 0, "liver": True}}, None, "keys must be integer label values"),
        (NNUNET, "msd", r"keys must be integer label values \(MSD: value -> name\)"),
        (MSD, "nnunet", r"must map to an integer value \(nnU-Net: name -> value\)"),
        ({**NNUNET, "labels": {"background": 0, "tumour": [1, 2]}}, None, "region-based label 'tumour'"),
        ({**NNUNET, "labels": {"background": 0, "a": 1, "b": 1}}, None, "share value 1"),
    ],
)
def test_malformed_labels_name_the_file(tmp_path: Path, data: Any, style: str | None, match: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(MedsegInputError, match=match) as info:
        read_dataset_json(path, style=style)  # type: ignore[arg-type]
    assert info.value.path == path


@pytest.mark.parametrize(
    ("channels", "match"),
    [(None, 'non-empty "modality"'), ({"a": "CT"}, "must be integers"), ({"0": "T2", "2": "ADC"}, r"must be 0\.\.1")],
)
def test_malformed_channels_name_the_file(tmp_path: Path, channels: Any, match: str) -> None:
    path = _write(tmp_path, {"labels": MSD["labels"], **({"modality": channels} if channels else {})})
    with pytest.raises(MedsegInputError, match=match) as info:
        read_dataset_json(path).channels  # noqa: B018  (the property checks)
    assert info.value.path == path


def test_missing_file_or_folder_and_case_lists(tmp_path: Path) -> None:
    with pytest.raises(MedsegInputError, match="dataset folder not found") as info:
        read_dataset_json(tmp_path / "nowhere")
    assert info.value.path == tmp_path / "nowhere"
    with pytest.raises(MedsegInputError, match=r"dataset\.json not found") as info:
        read_dataset_json(tmp_path)
    assert info.value.path == tmp_path / "dataset.json"
    path = _write(tmp_path, {**MSD, "training": {"image": "a.nii.gz"}})
    with pytest.raises(MedsegInputError, match='"training" must be a list') as info:
        read_dataset_json(path).cases("training")
    assert info.value.path == path
