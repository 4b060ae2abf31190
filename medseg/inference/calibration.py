"""Temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017): one number ``T``
that a model's logits are divided by, fitted on validation cases so that its probabilities say how often it is
right. Dividing by ``T > 0`` keeps every softmax's argmax (and every sigmoid's side of 0.5) on the network's
grid, so the label maps do not change (but where probabilities resampled back to the input's grid change their
order); the probabilities and the uncertainty maps of :mod:`medseg.inference.uncertainty` do.

:func:`calibrate` (``medseg calibrate``) predicts the validation cases with the model's own inference settings
(mirroring included), samples voxels inside each case's foreground crop, finds the ``T`` that minimises their
mean negative log-likelihood against the reference labels (:func:`fit_temperature`), reports the NLL and the
expected calibration error (:mod:`medseg.evaluation.calibration`) of those voxels before and after, and writes
a copy of the checkpoint that holds ``T`` (:attr:`medseg.checkpoint.Checkpoint.calibration`). The Predictor
applies it under ``inference.temperature_scaling``. The copy also holds the threshold of the ``uncertain``
quality flag (:mod:`medseg.inference.quality`): the validation cases' 95th percentile of their uncertainty
score, without ``T`` (from the same passes as the logits) and with it (each case is predicted once more).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch.nn import functional

from medseg.checkpoint import save_checkpoint
from medseg.data.cases import discover_cases, read_cases_file
from medseg.errors import MedsegInputError
from medseg.evaluation import find_references
from medseg.evaluation.calibration import ECE_BINS, expected_calibration_error, output_channels
from medseg.inference.predictor import Prediction, Predictor, read_case
from medseg.inference.quality import UNCERTAINTY_PERCENTILE, UNCERTAINTY_SCORE, uncertainty_threshold
from medseg.inference.uncertainty import case_scores
from medseg.io import Image, check_label_map, read_image, require_same_grid
from medseg.labels import LabelTable

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The temperatures :func:`fit_temperature` searches."""


@dataclass(frozen=True, kw_only=True)
class CalibrationParams:
    """How :func:`calibrate` samples and scores.

    Attributes:
        voxels_per_case: voxels drawn per case, uniformly from those its foreground crop covers (all of
            them when it covers fewer).
        seed: the seed of that draw.
        ece_bins: equal-width bins of the expected calibration error it reports.
    """

    voxels_per_case: int = 100_000
    seed: int = 0
    ece_bins: int = ECE_BINS

    def __post_init__(self) -> None:
        if self.voxels_per_case < 1:
            raise MedsegInputError(f"calibration needs at least one voxel per case, got {self.voxels_per_case}")
        if self.ece_bins < 1:
            raise MedsegInputError(f"the expected calibration error needs at least one bin, got {self.ece_bins}")


def negative_log_likelihood(
    logits: torch.Tensor, targets: torch.Tensor, *, regions: bool, temperature: float = 1.0
) -> float:
    """Mean NLL (nats) of voxels' ``logits / temperature``: ``(N, C)`` against class indices ``(N,)`` (softmax),
    or for ``regions`` against ``(N, C)`` 0/1 targets (one sigmoid per region, averaged over voxels and regions)."""
    scaled = logits.double() / temperature
    if regions:
        return float(functional.binary_cross_entropy_with_logits(scaled, targets.double()))
    return float(functional.cross_entropy(scaled, targets.long()))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, *, regions: bool) -> float:
    """The temperature in :data:`TEMPERATURE_BOUNDS` that minimises :func:`negative_log_likelihood` (a
    bounded scalar search over ``log T``, SciPy's ``minimize_scalar``).

    Args:
        logits: ``(N, C)`` voxels' logits.
        targets: ``(N,)`` class indices, or for ``regions`` ``(N, C)`` 0/1.
        regions: sigmoid outputs rather than a softmax.
    """
    low, high = (math.log(t) for t in TEMPERATURE_BOUNDS)
    found = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, targets, regions=regions, temperature=math.exp(log_t)),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(math.exp(found.x))


def voxel_targets(labels: np.ndarray, table: LabelTable) -> np.ndarray:
    """What a network's outputs are trained towards, per voxel of a label map ``(...)``: the class index
    (``(...)`` int64, labels in ascending value) or, for region tables, ``(..., R)`` 0/1 per region."""
    if table.kind == "regions":
        return np.stack([np.isin(labels, r.labels) for r in table.regions], axis=-1).astype(np.float32)
    return np.searchsorted(np.asarray(sorted(table.labels)), labels).astype(np.int64)


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` found.

    Attributes:
        temperature: the fitted ``T``.
        nll_before, nll_after: mean NLL (nats) of the sampled voxels at ``T = 1`` and at ``T``.
        ece_before, ece_after: per scored label or region, the ECE of the sampled voxels
            (:mod:`medseg.evaluation.calibration`, ``ece_bins`` equal-width bins).
        uncertain_above: the ``uncertain`` flag's threshold
            (:func:`~medseg.inference.quality.uncertainty_threshold` of the validation cases' scores), for
            predictions ``"as_trained"`` and with ``"temperature_scaling"``; ``None`` where no case has a score.
        cases: the validation case ids.
        voxels: the voxels sampled in all.
        ece_bins: the bins of the ECEs.
        mirror_axes: the test-time mirroring the logits were averaged over.
        path: the calibrated checkpoint written.
    """

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: dict[str, float]
    ece_after: dict[str, float]
    uncertain_above: dict[str, float | None]
    cases: tuple[str, ...]
    voxels: int
    ece_bins: int
    mirror_axes: tuple[int, ...]
    path: Path

    def to_dict(self) -> dict[str, Any]:
        """What the checkpoint keeps (:attr:`~medseg.checkpoint.Checkpoint.calibration`)."""
        data = dataclasses.asdict(self)
        data.pop("path")
        return data | {"cases": list(self.cases), "mirror_axes": list(self.mirror_axes)}


def calibrate(
    *,
    model: str | Path,
    ref_dir: str | Path,
    out: str | Path,
    input_path: str | Path | None = None,
    cases_file: str | Path | None = None,
    device: str = "auto",
    backend: str = "auto",
    inference_overrides: Sequence[str] = (),
    params: CalibrationParams | None = None,
) -> CalibrationResult:
    """Fit a temperature for ``model`` on validation cases and write a copy of the checkpoint that holds it.

    Args:
        model: a medseg checkpoint (``.pt``).
        ref_dir: their reference label maps: a dataset folder or a manifest
            (:func:`~medseg.evaluation.find_references`); each case needs one, on its image's grid.
        out: the calibrated checkpoint to write (may be ``model`` itself).
        input_path: the validation cases' images (a file or folder, see
            :func:`~medseg.data.cases.discover_cases`); or ``cases_file``, a JSON list of cases.
        device, backend: as for :meth:`Predictor.from_checkpoint`.
        inference_overrides: ``inference.key=value`` settings to predict with (e.g. the mirroring that
            deployment will use; ``inference.temperature_scaling`` is ignored: the fit starts from ``T = 1``).
        params: sampling and scoring (:class:`CalibrationParams`).

    Raises:
        CheckpointError: ``model`` is not a readable medseg checkpoint.
        MedsegInputError: no cases, a case without a reference, a reference off its image's grid or
            holding values outside the model's labels.
    """
    params = params or CalibrationParams()
    overrides = [*inference_overrides, "inference.temperature_scaling=false"]
    predictor = Predictor.from_checkpoint(model, device=device, backend=backend, inference_overrides=overrides)
    table, regions = predictor.table, predictor.table.kind == "regions"
    if cases_file is not None:
        cases = read_cases_file(cases_file, channels=predictor.channels)
    elif input_path is not None:
        cases = discover_cases(input_path, channels=predictor.channels)
    else:
        raise MedsegInputError("give the validation cases' images (an input path or a cases file)")
    refs = find_references(Path(ref_dir))
    unreferenced = [case.id for case in cases if case.id not in refs.files]
    if unreferenced:
        raise MedsegInputError(f"case {unreferenced[0]!r} has no reference label map", path=Path(ref_dir))
    rng = np.random.default_rng(params.seed)
    all_logits, all_targets, scores_as_trained = [], [], []
    for case in cases:
        image = read_case(case)
        reference = read_image(refs.files[case.id])
        require_same_grid(reference.geometry, image.geometry, path=reference.path, reference_path=image.path)
        check_label_map(reference.array, table, path=reference.path)
        logits, inside, prediction = predictor.predict_logits_with_uncertainty(image)
        scores_as_trained.append(_case_scores(predictor, prediction, image))
        where = np.flatnonzero(inside)
        if where.size > params.voxels_per_case:
            where = np.sort(rng.choice(where, params.voxels_per_case, replace=False))
        all_logits.append(logits.reshape(len(logits), -1)[:, where].T)
        all_targets.append(voxel_targets(reference.array.reshape(-1)[where], table))
    logits_t = torch.from_numpy(np.concatenate(all_logits))
    targets_t = torch.from_numpy(np.concatenate(all_targets))
    if len(logits_t) == 0:
        raise MedsegInputError("the foreground crops of the validation cases hold no voxel", path=Path(ref_dir))
    temperature = fit_temperature(logits_t, targets_t, regions=regions)
    checkpoint = dataclasses.replace(predictor.checkpoint, calibration={"temperature": temperature}, training=None)
    scaled = Predictor(
        checkpoint,
        device=device,
        backend=backend,
        inference_overrides=[*inference_overrides, "inference.temperature_scaling=true"],
    )
    # One more prediction per case, with T: its uncertainty maps are no function of those at T = 1 or of the mean
    # logits (the entropy of the mean of the passes' probabilities at T needs each pass's logits, on the network's
    # grid, before the maps are resampled to the input's), and T is known only once every case's logits are in;
    # keeping every case's passes until then would hold the whole validation set's network outputs in memory.
    scores_scaled = []
    for case in cases:
        image = read_case(case)
        scores_scaled.append(_case_scores(scaled, scaled.predict_with_uncertainty(image), image))
    result = CalibrationResult(
        temperature=temperature,
        nll_before=negative_log_likelihood(logits_t, targets_t, regions=regions),
        nll_after=negative_log_likelihood(logits_t, targets_t, regions=regions, temperature=temperature),
        ece_before=_voxel_ece(logits_t, targets_t, table, 1.0, params.ece_bins),
        ece_after=_voxel_ece(logits_t, targets_t, table, temperature, params.ece_bins),
        uncertain_above={
            "as_trained": uncertainty_threshold(scores_as_trained),
            "temperature_scaling": uncertainty_threshold(scores_scaled),
        },
        cases=tuple(case.id for case in cases),
        voxels=len(logits_t),
        ece_bins=params.ece_bins,
        mirror_axes=tuple(predictor.inference.mirror_axes),
        path=Path(out),
    )
    save_checkpoint(dataclasses.replace(checkpoint, calibration=result.to_dict()), out)
    return result


def _case_scores(predictor: Predictor, prediction: Prediction, image: Image) -> dict[str, float]:
    """A case's uncertainty scores (:func:`~medseg.inference.uncertainty.case_scores`) from ``predictor``'s
    :meth:`~Predictor.predict_with_uncertainty` of ``image``, as ``medseg predict --save-uncertainty`` computes
    them."""
    labels = predictor.labels_from_probabilities(prediction.probabilities, image)
    assert prediction.uncertainty is not None
    band_mm = predictor.inference.uncertainty_band_mm
    return case_scores(prediction.uncertainty, labels, spacing=image.geometry.spacing, band_mm=band_mm)


def _voxel_ece(
    logits: torch.Tensor, targets: torch.Tensor, table: LabelTable, temperature: float, bins: int
) -> dict[str, float]:
    """Per scored name of ``table``, the ECE of voxels' ``logits / temperature`` ``(N, C)`` against their targets."""
    scaled = logits.double() / temperature
    regions = table.kind == "regions"
    probs = (torch.sigmoid(scaled) if regions else torch.softmax(scaled, 1)).numpy()
    out = {}
    for name, channel in output_channels(table).items():
        truth = targets[:, channel].numpy() > 0.5 if regions else targets.numpy() == channel
        out[name] = round(expected_calibration_error(probs[:, channel], truth, bins=bins), 6)
    return out


def format_calibration(result: CalibrationResult) -> str:
    """A few lines: the temperature, NLL and ECE per label or region before and after, and the ``uncertain``
    flag's thresholds."""
    lines = [
        f"temperature {result.temperature:.4f} fitted on {result.voxels} voxels of {len(result.cases)} case(s);"
        f" written to {result.path}",
        f"mean NLL {result.nll_before:.4f} -> {result.nll_after:.4f} nats",
    ]
    for name, before in result.ece_before.items():
        lines.append(f"ECE {name} ({result.ece_bins} bins) {before:.4f} -> {result.ece_after[name]:.4f}")
    shown = {key: "none" if value is None else f"{value:.4f}" for key, value in result.uncertain_above.items()}
    lines.append(
        f"the uncertain flag's threshold ({UNCERTAINTY_SCORE}, {UNCERTAINTY_PERCENTILE:g}th percentile of the"
        f" cases): {shown['as_trained']} as trained, {shown['temperature_scaling']} with the temperature"
    )
    return "\n".join(lines)
