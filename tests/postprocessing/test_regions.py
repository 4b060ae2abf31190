from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.labels import BRATS2021, BRATS2023, LABEL_TABLES, LabelTable, get_label_table
from medseg.postprocessing import outputs_to_labels, suppress_small_regions
from medseg.postprocessing.regions import enclosing_label
from medseg.transforms import LabelsToRegionsd


@pytest.mark.parametrize("table", [BRATS2021, BRATS2023])
def test_regions_and_back_reproduce_the_label_map(table: LabelTable) -> None:
    rng = np.random.default_rng(0)
    values = np.array(sorted(table.labels))
    labels = values[rng.integers(0, len(values), size=(6, 5, 4))]
    regions = LabelsToRegionsd("label", table)({"label": torch.as_tensor(labels[None])})["label"]
    assert regions.shape == (3, 6, 5, 4)
    et = max(table.labels)
    assert torch.equal(regions[0].bool(), torch.as_tensor(labels > 0))
    assert torch.equal(regions[1].bool(), torch.as_tensor(np.isin(labels, [1, et])))
    assert torch.equal(regions[2].bool(), torch.as_tensor(labels == et))
    np.testing.assert_array_equal(outputs_to_labels(regions, table), labels)


def test_class_outputs_take_the_argmax_in_table_values() -> None:
    table = LabelTable("organs", {0: "background", 1: "liver", 2: "spleen"})
    probs = torch.zeros(3, 2, 1, 1)
    probs[2, 0] = 1.0
    probs[0, 1] = 1.0
    np.testing.assert_array_equal(outputs_to_labels(probs, table)[:, 0, 0], [2, 0])


def test_small_regions_are_relabelled_as_their_enclosing_region() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:12, 2:12, 2:12] = 2  # ED: 1000 voxels
    labels[5:9, 5:9, 5:9] = 1  # NCR: 64 voxels
    labels[5:7, 5:7, 5:7] = 4  # ET: 8 voxels = 0.008 mL at 1 mm
    out = suppress_small_regions(labels, BRATS2021, voxel_ml=0.001, min_region_ml={"ET": 0.5})
    assert not (out == 4).any()
    assert (out == 1).sum() == 64  # ET became NCR: the tumour core is unchanged
    np.testing.assert_array_equal(out > 0, labels > 0)
    big = suppress_small_regions(labels, BRATS2021, voxel_ml=0.1, min_region_ml={"ET": 0.5})
    np.testing.assert_array_equal(big, labels)  # 8 voxels of 0.1 mL = 0.8 mL: kept
    with pytest.raises(Exception, match="not a region"):
        suppress_small_regions(labels, BRATS2021, voxel_ml=0.001, min_region_ml={"NET": 1.0})


REGION_TABLES = [t for t in LABEL_TABLES.values() if t.kind == "regions"]


@pytest.mark.parametrize("table", REGION_TABLES, ids=lambda t: t.name)
def test_every_region_table_goes_to_regions_and_back(table: LabelTable) -> None:
    """A label map with every value of the table, turned into the trained regions (one-hot, as a perfect
    network would output them) and painted back, is the label map again: the challenge's own numbers."""
    rng = np.random.default_rng(1)
    values = np.array(sorted(table.labels))
    labels = values[rng.integers(0, len(values), size=(7, 6, 5))]
    regions = LabelsToRegionsd("label", table)({"label": torch.as_tensor(labels[None])})["label"]
    assert regions.shape == (table.num_outputs, 7, 6, 5)
    for channel, region in enumerate(table.regions):
        assert torch.equal(regions[channel].bool(), torch.as_tensor(np.isin(labels, region.labels)))
    np.testing.assert_array_equal(outputs_to_labels(regions, table), labels)


def test_2024_region_channels_on_a_hand_built_map() -> None:
    gli = get_label_table("brats2024-gli")
    labels = np.array([0, 1, 2, 3, 4]).reshape(5, 1, 1)  # background, NETC, SNFH, ET, RC
    regions = LabelsToRegionsd("label", gli)({"label": torch.as_tensor(labels[None])})["label"][:, :, 0, 0]
    # WT, TC, ET, RC by voxel: the cavity is in no tumour region
    assert regions.T.tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]
    ped = get_label_table("brats2024-ped")
    labels = np.array([0, 1, 2, 3, 4]).reshape(5, 1, 1)  # background, ET, NETC, CC, ED
    regions = LabelsToRegionsd("label", ped)({"label": torch.as_tensor(labels[None])})["label"][:, :, 0, 0]
    # WT, TC, ET, CC
    assert regions.T.tolist() == [[0, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 1], [1, 0, 0, 0]]


def test_enclosing_labels_follow_containment() -> None:
    gli, ped = get_label_table("brats2024-gli"), get_label_table("brats2024-ped")
    assert [enclosing_label(BRATS2021, n) for n in ("WT", "TC", "ET")] == [0, 2, 1]
    assert [enclosing_label(gli, n) for n in ("WT", "TC", "ET", "RC")] == [0, 2, 1, 0]  # RC: background
    assert [enclosing_label(ped, n) for n in ("WT", "TC", "ET", "CC")] == [0, 4, 2, 2]  # ET, CC: NETC
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:6, 1:6, 1:6] = 2  # SNFH
    labels[2:5, 2:5, 2:5] = 3  # ET
    labels[8:10, 8:10, 8:10] = 4  # a cavity of 8 voxels
    out = suppress_small_regions(labels, gli, voxel_ml=0.001, min_region_ml={"RC": 0.5})
    assert not (out == 4).any() and (out[8:10, 8:10, 8:10] == 0).all()
    np.testing.assert_array_equal(out[:6, :6, :6], labels[:6, :6, :6])
