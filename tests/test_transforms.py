from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.labels import BRATS2021, BRATS2023, LabelTable
from medseg.transforms import LabelsToRegionsd, outputs_to_labels


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
