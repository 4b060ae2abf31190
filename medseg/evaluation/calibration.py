"""Calibration of predicted probabilities: the expected calibration error (ECE) of each label or region.

Each output is scored one against the rest, as a binary prediction per voxel: the probability of the label
(softmax channel, class tables) or of the region (sigmoid channel, region tables) against whether the
reference holds it. Voxels are put in ``bins`` equal-width bins of that probability, ``[b / B, (b + 1) / B)``
(the last one closed at 1), and

    ECE = sum_b (n_b / N) |acc_b - conf_b| = sum_b |sum of truth in b - sum of probability in b| / N,

where ``acc_b`` is the share of bin ``b``'s voxels that hold the label and ``conf_b`` their mean probability
(Naeini et al., AAAI 2015; Guo et al., ICML 2017, with 15 bins). Every voxel of the image counts, so a
large, surely empty background lowers the ECE of a case; compare ECEs on the same cases (before and after
temperature scaling, :mod:`medseg.inference.calibration`), not across datasets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.labels import LabelTable

ECE_BINS = 15
"""The default number of equal-width bins (Guo et al., ICML 2017)."""


@dataclass(frozen=True)
class Bins:
    """Per-bin sums of voxels scored as one binary prediction: enough to pool cases into one ECE.

    Attributes:
        count: ``(B,)`` voxels per bin.
        probability: ``(B,)`` their summed probability.
        truth: ``(B,)`` how many of them hold the label.
    """

    count: np.ndarray
    probability: np.ndarray
    truth: np.ndarray

    def __add__(self, other: Bins) -> Bins:
        return Bins(self.count + other.count, self.probability + other.probability, self.truth + other.truth)

    @property
    def ece(self) -> float:
        """The expected calibration error of the voxels binned (NaN when there are none)."""
        total = float(self.count.sum())
        return float(np.abs(self.truth - self.probability).sum() / total) if total else float("nan")


def calibration_bins(probability: np.ndarray, truth: np.ndarray, *, bins: int = ECE_BINS) -> Bins:
    """Bin voxels of ``probability`` (any shape, values in [0, 1]) with their ``truth`` (bool, same shape)
    into ``bins`` equal-width bins (see the module docstring).

    Raises:
        ValueError: fewer than one bin, or shapes that differ.
    """
    if bins < 1:
        raise ValueError(f"the ECE needs at least one bin, got {bins}")
    p = np.asarray(probability, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=bool).ravel()
    if p.shape != t.shape:
        raise ValueError(f"probabilities and truth differ in size: {np.shape(probability)} and {np.shape(truth)}")
    index = np.minimum((np.clip(p, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
    return Bins(
        np.bincount(index, minlength=bins).astype(np.float64),
        np.bincount(index, weights=p, minlength=bins),
        np.bincount(index, weights=t.astype(np.float64), minlength=bins),
    )


def expected_calibration_error(probability: np.ndarray, truth: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """The ECE of ``probability`` against bool ``truth`` (same shape) with ``bins`` equal-width bins."""
    return calibration_bins(probability, truth, bins=bins).ece


def output_channels(table: LabelTable) -> dict[str, int]:
    """Each scored name of ``table`` (:attr:`~medseg.labels.LabelTable.evaluation_names`) -> its channel in
    the network's outputs: a region's own channel, or a foreground label's softmax channel (labels in
    ascending value, background first)."""
    if table.kind == "regions":
        return {name: i for i, name in enumerate(table.output_names)}
    values = sorted(table.labels)
    return {table.labels[v]: values.index(v) for v in table.foreground_labels}


def calibration_of_case(
    probabilities: np.ndarray, reference: np.ndarray, *, table: LabelTable, bins: int = ECE_BINS
) -> dict[str, Bins]:
    """Per scored name of ``table``, the :class:`Bins` of a case.

    Args:
        probabilities: ``(C_out, X, Y, Z)`` predicted probabilities (``medseg predict --save-probabilities``).
        reference: ``(X, Y, Z)`` reference label map on the same grid.
        table: the label table (its output channels and evaluation sets).
        bins: equal-width bins.

    Raises:
        ValueError: ``probabilities`` has another number of channels than ``table`` has outputs, or another grid.
    """
    if probabilities.ndim != 4 or probabilities.shape[0] != table.num_outputs:
        raise ValueError(f"expected {table.num_outputs} probability channels, got shape {probabilities.shape}")
    if probabilities.shape[1:] != reference.shape:
        raise ValueError(f"probabilities of grid {probabilities.shape[1:]} for a reference of {reference.shape}")
    sets = table.evaluation_sets()
    return {
        name: calibration_bins(probabilities[channel], np.isin(reference, sets[name]), bins=bins)
        for name, channel in output_channels(table).items()
    }
