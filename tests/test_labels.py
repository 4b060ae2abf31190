from __future__ import annotations

import subprocess
import sys

import pytest

from medseg.labels import BRATS2021, BRATS2023, LabelTable, get_brats_release, get_label_table


def test_brats_regions_follow_each_release() -> None:
    assert {r.name: set(r.labels) for r in BRATS2021.regions} == {"WT": {1, 2, 4}, "TC": {1, 4}, "ET": {4}}
    assert {r.name: set(r.labels) for r in BRATS2023.regions} == {"WT": {1, 2, 3}, "TC": {1, 3}, "ET": {3}}
    assert BRATS2021.regions_class_order == (2, 1, 4)
    assert BRATS2023.regions_class_order == (2, 1, 3)


def test_release_file_names() -> None:
    r21, r23 = get_brats_release("2021"), get_brats_release("2023")
    assert r21.file_name(r21.case_id(7), "t1ce") == "BraTS2021_00007_t1ce.nii.gz"
    assert r23.file_name(r23.case_id(7), "t2f") == "BraTS-GLI-00007-000-t2f.nii.gz"


def test_table_round_trips_through_dict() -> None:
    for table in (BRATS2021, BRATS2023):
        assert LabelTable.from_dict(table.to_dict()) == table


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(KeyError, match="brats2021"):
        get_label_table("brats2019")


def test_labels_and_config_do_not_import_torch() -> None:
    code = "import sys, medseg.labels, medseg.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
