"""How sure a prediction is, per voxel and per case.

A prediction averages one or more *passes*: the members of an ensemble (the folds of a configuration) and,
with ``inference.mirror_axes``, each member's mirror images; with ``inference.dropout_samples``, each member's
Monte Carlo dropout samples. Each pass ``k`` gives probabilities ``p_k``
(softmax over classes, or one sigmoid per region). Per voxel, in nats:

- ``entropy``: the entropy of the mean probabilities, ``H(mean_k p_k)``, the total uncertainty (Gal 2016,
  "Uncertainty in deep learning", section 3.3; Lakshminarayanan et al., NeurIPS 2017, for ensembles);
- ``mutual_information``: ``H(mean_k p_k) - mean_k H(p_k)``, the part on which the passes disagree
  (Depeweg et al., ICML 2018): 0 for a single pass, and for passes that agree.

Classes take the entropy of the categorical distribution, ``-sum_c p_c log p_c`` (at most ``log C``); regions,
whose outputs are independent Bernoulli variables, the sum of each region's binary entropy (at most
``R log 2``).

Per case, :func:`case_scores` averages both maps over the predicted foreground and over a band around its
surface: means, so a larger image (more certain background) or a larger organ (more certain interior) does
not raise them. The band holds the voxels on either side of the surface within ``band_mm`` of the other side,
and always the layer on each side that touches it, whatever the spacing; the image's edge counts as surface.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage

UNCERTAINTY_MAPS = ("entropy", "mutual_information")
"""The channels of an uncertainty map, in order."""

CASE_SCORES = tuple(f"{m}_{where}" for m in UNCERTAINTY_MAPS for where in ("foreground", "boundary"))
"""The per-case scores of :func:`case_scores` (columns of ``summary.csv``), in order."""


def entropy(probs: torch.Tensor, *, regions: bool) -> torch.Tensor:
    """Entropy in nats per voxel of probabilities ``(B, C, X, Y, Z)`` -> ``(B, 1, X, Y, Z)``: of the
    categorical distribution over the ``C`` classes, or for regions the sum of the ``C`` binary entropies."""
    h = -torch.special.xlogy(probs, probs)
    if regions:
        h = h - torch.special.xlogy(1 - probs, 1 - probs)
    return h.sum(1, keepdim=True)


def pass_statistics(passes: Iterable[torch.Tensor], *, regions: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean logits and the uncertainty maps of a prediction's passes.

    Args:
        passes: each pass's logits ``(B, C, X, Y, Z)`` (at least one).
        regions: sigmoid outputs (regions) rather than a softmax (classes).

    Returns:
        ``(logits, maps)``: the passes' mean logits ``(B, C, X, Y, Z)`` (what the label map comes from) and
        ``(B, 2, X, Y, Z)`` :data:`UNCERTAINTY_MAPS` (nats; see the module docstring).
    """
    total_logits = total_probs = total_entropy = None
    count = 0
    for logits in passes:
        probs = torch.sigmoid(logits) if regions else torch.softmax(logits, 1)
        h = entropy(probs, regions=regions)
        if total_logits is None:
            total_logits, total_probs, total_entropy = logits.clone(), probs, h
        else:
            total_logits += logits
            total_probs = total_probs + probs
            total_entropy = total_entropy + h
        count += 1
    if total_logits is None or total_probs is None or total_entropy is None:
        raise ValueError("a prediction needs at least one pass")
    total = entropy(total_probs / count, regions=regions)
    information = (total - total_entropy / count).clamp_min(0)  # >= 0 up to rounding (H is concave)
    return total_logits / count, torch.cat([total, information], 1)


def boundary_band(foreground: np.ndarray, *, spacing: Sequence[float], band_mm: float) -> np.ndarray:
    """The voxels of ``(X, Y, Z)`` bool ``foreground`` within ``band_mm`` (mm, along ``spacing``) of the other
    side of its surface, on both sides, with every voxel whose 6-connected neighbour lies across it.

    Outside the image is background: a structure that touches the image's edge has a surface there."""
    padded = np.pad(np.asarray(foreground, dtype=bool), 1)  # one layer of background all round
    touching = ndimage.binary_dilation(padded) & ~ndimage.binary_erosion(padded)
    inside = ndimage.distance_transform_edt(padded, sampling=spacing)
    outside = ndimage.distance_transform_edt(~padded, sampling=spacing)
    band = touching | (padded & (inside <= band_mm)) | (~padded & (outside <= band_mm))
    return band[1:-1, 1:-1, 1:-1]


def case_scores(maps: np.ndarray, labels: np.ndarray, *, spacing: Sequence[float], band_mm: float) -> dict[str, float]:
    """A case's :data:`CASE_SCORES`: each uncertainty map's mean over the predicted foreground (every label
    but 0) and over its :func:`boundary_band`.

    Args:
        maps: ``(2, X, Y, Z)`` :data:`UNCERTAINTY_MAPS` on the label map's grid.
        labels: ``(X, Y, Z)`` predicted label map.
        spacing: voxel size in mm per axis.
        band_mm: the band's half-width in mm (``inference.uncertainty_band_mm``).

    Returns:
        Score name -> mean in nats, rounded to 6 decimals; empty when nothing is predicted (no foreground).
    """
    foreground = np.asarray(labels) != 0
    if not foreground.any():
        return {}
    band = boundary_band(foreground, spacing=spacing, band_mm=band_mm)
    scores = {}
    for name, values in zip(UNCERTAINTY_MAPS, maps, strict=True):
        scores[f"{name}_foreground"] = round(float(values[foreground].mean()), 6)
        scores[f"{name}_boundary"] = round(float(values[band].mean()), 6)
    return {name: scores[name] for name in CASE_SCORES}
