from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.labels import BRATS2021, BRATS2023, LabelTable
from medseg.postprocessing import outputs_to_labels
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
    from medseg.postprocessing import suppress_small_regions

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
