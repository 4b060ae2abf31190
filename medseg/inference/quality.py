"""Quality flags: cheap per-case warnings that a prediction may be wrong, in ``summary.csv`` (``flags``), the
progress events and the evaluation report.

Training measures its cases once (:func:`measure_training_cases`) into a compact
:class:`TrainingFingerprint` that the checkpoint keeps; :func:`profile_case` measures an input case and its
predicted label map the same way, and :func:`quality_flags` compares the two. The flags, in
:data:`FLAGS` order:

- ``unlike_training``: the input is far from every training case. Intensities are compared as the network
  sees them, after the model's own normalisation (``ct_window``: clipped to ``hu_window`` and scaled to
  [0, 1], the voxels above the window's floor counted; ``zscore_nonzero``: z-scored over the nonzero
  voxels, which alone count): a channel's :data:`QUANTILE_LEVELS` quantiles differ from the training cases'
  median quantiles (mean absolute difference) by more than :data:`INTENSITY_FAR` times the farthest training
  case does (and at least by :data:`INTENSITY_FAR` x :data:`INTENSITY_SPREAD_FLOOR`); or the median
  intensity of the predicted foreground lies outside every training case's foreground (below the lowest
  1st percentile or above the highest 99th); or a voxel size (mm, axes sorted, so the orientation does not
  matter) is under half the smallest or over twice the largest of the training cases'. Measured on real
  scans: against 20 OpenKBP head-and-neck CTs, 10 others lie within 0.011-0.051 of them (threshold 0.2),
  an abdominal CT 0.097, and brain MRs (BraTS 2018 FLAIR, TotalSegmentator's example MR) 0.27-0.33:
  flagged.
- ``empty_label``: a label present in at least :data:`EXPECTED_PRESENCE` of the training cases that
  annotate it came out empty.
- ``touches_border``: a predicted structure (any label but 0) reaches the outermost voxel layer of the image:
  part of it may lie outside, so its volume is unreliable.
- ``volume_out_of_range``: a predicted label's volume (mL, > 0) lies outside the range of its volumes in the
  training cases that hold it.
- ``uncertain``: the case's :data:`UNCERTAINTY_SCORE` (``medseg predict --save-uncertainty``) is above the
  :data:`UNCERTAINTY_PERCENTILE` th percentile of the validation cases' that ``medseg calibrate`` stored.

A checkpoint without a fingerprint (written before medseg kept one) gets only ``touches_border`` and, when
calibrated and with uncertainty, ``uncertain``. The comparisons read at most :data:`MAX_PROFILE_VOXELS` voxels
of the image (a regular subsample), the label map's faces and the volumes already counted: no extra
full-resolution pass.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt

from medseg.checkpoint import Checkpoint
from medseg.config import TransformConfig
from medseg.data.cases import InputCase
from medseg.data.manifest import ManifestCase
from medseg.errors import CheckpointError
from medseg.inference.predictor import read_case
from medseg.io import Image, read_image
from medseg.keys import IMAGE
from medseg.labels import LabelTable
from medseg.progress import track
from medseg.transforms import intensity_offset_transforms, normalize_transforms

FLAGS = ("unlike_training", "empty_label", "touches_border", "volume_out_of_range", "uncertain")
"""Every flag, in the order a case lists them."""

QUANTILE_LEVELS = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
"""The quantiles of a channel's normalised intensities that describe its distribution."""

INTENSITY_FAR = 2.0
"""How many times the farthest training case's quantile distance makes an input's "far"."""

INTENSITY_SPREAD_FLOOR = 0.1
"""The least quantile distance (normalised units: standard deviations, or HU windows) taken as the training
cases' spread, so that a few near-identical training cases do not flag every other input."""

SPACING_FAR = 2.0
"""How many times finer or coarser than every training case a voxel axis must be to count as far."""

EXPECTED_PRESENCE = 0.95
"""The share of annotating training cases a label must be present in to be expected in every case."""

UNCERTAINTY_SCORE = "entropy_boundary"
"""The case score (:data:`~medseg.inference.uncertainty.CASE_SCORES`) the ``uncertain`` flag thresholds."""

UNCERTAINTY_PERCENTILE = 95.0
"""The percentile of the validation cases' scores above which a case is ``uncertain``."""

MAX_PROFILE_VOXELS = 2_000_000
"""The most voxels per channel :func:`profile_case` reads (a regular subsample of larger images)."""

MAX_INTENSITY_CASES = 50
"""The most training cases whose images :func:`measure_training_cases` reads (evenly spread over them);
every case's label map and voxel size count."""


COUNT_CHUNK = 2**24
"""Voxels counted at once by :func:`volumes_ml`."""


def volumes_ml(labels: np.ndarray, spacing: Sequence[float], names: Mapping[int, str]) -> dict[str, float]:
    """Volume in mL (rounded to 0.001) of each foreground label of ``names`` (value -> name) in ``(X, Y, Z)``
    ``labels`` with voxels of ``spacing`` mm."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    flat = np.ravel(labels)
    counts = np.zeros(max(names) + 1, dtype=np.int64)
    for start in range(0, flat.size, COUNT_CHUNK):  # bincount needs int64: a chunk's copy at a time
        chunk = np.bincount(flat[start : start + COUNT_CHUNK].astype(np.int64), minlength=len(counts))
        counts += chunk[: len(counts)]
    return {names[v]: round(float(counts[v]) * voxel_ml, 3) for v in sorted(names) if v != 0}


def touches_border(labels: np.ndarray) -> bool:
    """Whether any foreground voxel of ``(X, Y, Z)`` ``labels`` lies on one of the image's six faces."""
    faces = [np.take(labels, index, axis=axis) for axis in range(labels.ndim) for index in (0, -1)]
    return any(bool(np.any(face != 0)) for face in faces)


@dataclass(frozen=True)
class CaseProfile:
    """One case measured as :func:`quality_flags` compares it.

    Attributes:
        quantiles: ``(C, Q)`` each channel's normalised intensities at :data:`QUANTILE_LEVELS`.
        foreground: ``(C, 3)`` each channel's normalised intensity inside the label map's foreground:
            1st percentile, median, 99th percentile; NaN without foreground.
        spacing_mm: the voxel size in mm, axes sorted from finest to coarsest.
        volumes_ml: volume in mL of each label the label map annotates, by name.
        touches_border: whether the foreground reaches the image's faces (:func:`touches_border`).
    """

    quantiles: np.ndarray
    foreground: np.ndarray
    spacing_mm: tuple[float, float, float]
    volumes_ml: dict[str, float]
    touches_border: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (NaN as ``None``) that :meth:`from_dict` turns back into this profile exactly."""
        return {
            "quantiles": self.quantiles.tolist(),
            "foreground": [[None if math.isnan(v) else v for v in row] for row in self.foreground.tolist()],
            "spacing_mm": list(self.spacing_mm),
            "volumes_ml": self.volumes_ml,
            "touches_border": self.touches_border,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseProfile:
        """Inverse of :meth:`to_dict`.

        Raises:
            KeyError, TypeError, ValueError: a malformed mapping.
        """
        spacing = tuple(float(s) for s in data["spacing_mm"])
        if len(spacing) != 3:
            raise ValueError(f"a voxel size needs three axes, got {spacing}")
        return cls(
            quantiles=np.array(data["quantiles"], dtype=np.float64),
            foreground=np.array(data["foreground"], dtype=np.float64),  # None -> NaN
            spacing_mm=spacing,  # type: ignore[arg-type]
            volumes_ml={str(name): float(v) for name, v in data["volumes_ml"].items()},
            touches_border=bool(data["touches_border"]),
        )


def network_intensities(array: np.ndarray, transforms: TransformConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(C, X, Y, Z)`` image intensities as the network sees them (``transforms.intensity_offset`` and the
    normalisation of :func:`~medseg.transforms.normalize_transforms`), and ``(C, X, Y, Z)`` bool: the voxels
    that describe the image's content: under ``zscore_nonzero`` the nonzero ones (those it normalises), under
    ``ct_window`` those above the window's floor (not air or padding, which every CT holds in different
    amounts and the window maps alike)."""
    data = {IMAGE: torch.as_tensor(np.asarray(array, dtype=np.float32))}
    offset = mt.Compose(intensity_offset_transforms(transforms))(data)
    raw = np.asarray(offset[IMAGE])
    counted = raw != 0 if transforms.intensity == "zscore_nonzero" else raw > transforms.hu_window[0]
    normalised = np.asarray(mt.Compose(normalize_transforms(transforms))(offset)[IMAGE])
    return normalised, counted


def profile_case(
    image: Image, labels: np.ndarray, *, transforms: TransformConfig, volumes: dict[str, float]
) -> CaseProfile:
    """Measure a case: its image (``(C, X, Y, Z)`` or ``(X, Y, Z)``, subsampled to at most
    :data:`MAX_PROFILE_VOXELS` voxels) and its label map ``(X, Y, Z)`` on the same grid (a reference at
    training, the prediction at inference), whose label volumes (:func:`volumes_ml`) are ``volumes``."""
    array = image.array if image.array.ndim == 4 else image.array[None]
    step = max(1, math.ceil((math.prod(array.shape[1:]) / MAX_PROFILE_VOXELS) ** (1 / 3)))
    normalised, counted = network_intensities(array[:, ::step, ::step, ::step], transforms)
    foreground = np.asarray(labels)[::step, ::step, ::step] != 0
    quantiles = np.array(
        [
            np.quantile(ch[c], QUANTILE_LEVELS) if c.any() else np.zeros(len(QUANTILE_LEVELS))
            for ch, c in zip(normalised, counted, strict=True)
        ]
    )
    inside = np.array(
        [np.percentile(ch[foreground], (1, 50, 99)) if foreground.any() else np.full(3, np.nan) for ch in normalised]
    )
    spacing = tuple(sorted(float(s) for s in image.geometry.spacing))
    return CaseProfile(
        quantiles=quantiles,
        foreground=inside,
        spacing_mm=spacing,  # type: ignore[arg-type]
        volumes_ml=volumes,
        touches_border=touches_border(np.asarray(labels)),
    )


@dataclass(frozen=True)
class LabelRange:
    """One label over the training cases that annotate it.

    Attributes:
        presence: the share of them in which it is present (volume > 0).
        volume_ml: ``(min, max)`` of its volume in mL over those in which it is present; ``None`` when in none.
    """

    presence: float
    volume_ml: tuple[float, float] | None


@dataclass(frozen=True)
class TrainingFingerprint:
    """What a checkpoint keeps of its training cases to flag inputs unlike them (:func:`quality_flags`).

    Attributes:
        cases: training cases measured (label maps and voxel sizes).
        intensity_cases: of those, the cases whose images were measured (at most :data:`MAX_INTENSITY_CASES`).
        intensity: the normalisation the intensities below follow (``transforms.intensity``).
        quantiles: per channel name, the training cases' median of each :data:`QUANTILE_LEVELS` quantile.
        spread: per channel name, the farthest training case's quantile distance from them (mean absolute
            difference, normalised units).
        foreground: per channel name, ``(low, high)``: the lowest 1st and highest 99th percentile of the
            normalised intensity inside a training case's labels.
        spacing_mm: ``(finest, coarsest)``: per sorted axis, the smallest and the largest voxel size (mm).
        labels: per foreground label name, its :class:`LabelRange`.
    """

    cases: int
    intensity_cases: int
    intensity: str
    quantiles: dict[str, list[float]]
    spread: dict[str, float]
    foreground: dict[str, tuple[float, float]]
    spacing_mm: tuple[tuple[float, ...], tuple[float, ...]]
    labels: dict[str, LabelRange]

    @classmethod
    def from_profiles(
        cls, profiles: Sequence[CaseProfile], *, channels: Sequence[str], intensity: str, with_images: int
    ) -> TrainingFingerprint:
        """Summarise training cases' profiles; the first ``with_images`` were measured with their images
        (the others hold label maps and voxel sizes only)."""
        imaged = profiles[:with_images]
        quantiles = np.median(np.stack([p.quantiles for p in imaged]), axis=0)  # (C, Q)
        distances = np.stack([np.abs(p.quantiles - quantiles).mean(axis=1) for p in imaged])  # (N, C)
        inside = np.stack([p.foreground for p in imaged])  # (N, C, 3)
        spacings = np.array([p.spacing_mm for p in profiles])
        names = list(dict.fromkeys(name for p in profiles for name in p.volumes_ml))  # the table's order
        labels = {}
        for name in names:
            volumes = [p.volumes_ml[name] for p in profiles if name in p.volumes_ml]
            present = [v for v in volumes if v > 0]
            labels[name] = LabelRange(
                presence=round(len(present) / len(volumes), 4),
                volume_ml=(min(present), max(present)) if present else None,
            )
        with warnings.catch_warnings():  # a channel no case has foreground in: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanmin(inside[:, :, 0], axis=0), np.nanmax(inside[:, :, 2], axis=0)
        return cls(
            cases=len(profiles),
            intensity_cases=len(imaged),
            intensity=intensity,
            quantiles={c: [round(float(q), 4) for q in quantiles[i]] for i, c in enumerate(channels)},
            spread={c: round(float(distances[:, i].max()), 4) for i, c in enumerate(channels)},
            foreground={c: (round(float(low[i]), 4), round(float(high[i]), 4)) for i, c in enumerate(channels)},
            spacing_mm=(tuple(spacings.min(axis=0).tolist()), tuple(spacings.max(axis=0).tolist())),
            labels=labels,
        )

    def to_dict(self) -> dict[str, Any]:
        """What the checkpoint stores (plain JSON types)."""
        return {
            "cases": self.cases,
            "intensity_cases": self.intensity_cases,
            "intensity": self.intensity,
            "quantile_levels": list(QUANTILE_LEVELS),
            "quantiles": self.quantiles,
            "spread": self.spread,
            "foreground": {c: list(v) for c, v in self.foreground.items()},
            "spacing_mm": [list(self.spacing_mm[0]), list(self.spacing_mm[1])],
            "labels": {
                name: {"presence": r.presence, "volume_ml": None if r.volume_ml is None else list(r.volume_ml)}
                for name, r in self.labels.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingFingerprint:
        """Inverse of :meth:`to_dict`.

        Raises:
            KeyError, TypeError, ValueError: a malformed mapping (the checkpoint loader names the file).
        """
        if list(data["quantile_levels"]) != list(QUANTILE_LEVELS):
            raise ValueError(f"quantile levels {data['quantile_levels']} are not {list(QUANTILE_LEVELS)}")
        return cls(
            cases=int(data["cases"]),
            intensity_cases=int(data["intensity_cases"]),
            intensity=str(data["intensity"]),
            quantiles={str(c): [float(q) for q in v] for c, v in data["quantiles"].items()},
            spread={str(c): float(v) for c, v in data["spread"].items()},
            foreground={str(c): (float(v[0]), float(v[1])) for c, v in data["foreground"].items()},
            spacing_mm=(tuple(map(float, data["spacing_mm"][0])), tuple(map(float, data["spacing_mm"][1]))),
            labels={
                str(name): LabelRange(
                    presence=float(r["presence"]),
                    volume_ml=None if r["volume_ml"] is None else (float(r["volume_ml"][0]), float(r["volume_ml"][1])),
                )
                for name, r in data["labels"].items()
            },
        )

    def describe(self) -> str:
        """One line for ``medseg info``."""
        finest, coarsest = self.spacing_mm
        sizes = " x ".join(f"{a:g}-{b:g}" for a, b in zip(finest, coarsest, strict=True))
        expected = [n for n, r in self.labels.items() if r.presence >= EXPECTED_PRESENCE]
        volumes = "; ".join(
            f"{n} {r.volume_ml[0]:g}-{r.volume_ml[1]:g} mL" for n, r in self.labels.items() if r.volume_ml is not None
        )
        return (
            f"training fingerprint of {self.cases} case(s) ({self.intensity_cases} with intensities,"
            f" {self.intensity}): voxel sizes {sizes} mm (sorted axes); expected labels"
            f" {', '.join(expected) or 'none'}; volumes {volumes or 'none'}"
        )


def _names_of(case: ManifestCase, table: LabelTable) -> dict[int, str]:
    annotated = case.annotated(table)
    return {v: n for v, n in table.labels.items() if v in annotated}


def measure_training_cases(
    cases: Sequence[ManifestCase],
    *,
    root: Path,
    table: LabelTable,
    channels: Sequence[str],
    transforms: TransformConfig,
) -> TrainingFingerprint:
    """Read training cases (from ``root``) into a :class:`TrainingFingerprint`: every case's label map and
    voxel size, and the images of at most :data:`MAX_INTENSITY_CASES` of them, evenly spread.

    Raises:
        MedsegInputError: a file is missing or unreadable.
    """
    count = min(len(cases), MAX_INTENSITY_CASES)
    imaged = {i * len(cases) // count for i in range(count)}  # distinct: len(cases) >= count
    ordered = [c for i, c in enumerate(cases) if i in imaged] + [c for i, c in enumerate(cases) if i not in imaged]
    profiles = []
    for number, case in enumerate(track(ordered, desc="training fingerprint", unit="case", leave=False)):
        names = _names_of(case, table)
        label = read_image(root / str(case.label))
        volumes = volumes_ml(label.array, label.geometry.spacing, names)
        if number < count:
            image = read_case(InputCase(case.id, tuple(root / p for p in case.images)))
            profiles.append(profile_case(image, label.array, transforms=transforms, volumes=volumes))
        else:
            spacing = tuple(sorted(float(s) for s in label.geometry.spacing))
            profiles.append(
                CaseProfile(
                    quantiles=np.zeros(0),
                    foreground=np.zeros(0),
                    spacing_mm=spacing,  # type: ignore[arg-type]
                    volumes_ml=volumes,
                    touches_border=False,
                )
            )
    return TrainingFingerprint.from_profiles(
        profiles, channels=channels, intensity=transforms.intensity, with_images=count
    )


def quality_flags(
    profile: CaseProfile,
    *,
    fingerprint: TrainingFingerprint | None,
    channels: Sequence[str],
    uncertainty: Mapping[str, float],
    uncertain_above: float | None,
) -> tuple[str, ...]:
    """The :data:`FLAGS` that a predicted case raises (see the module docstring for each rule).

    Args:
        profile: the input and its predicted label map (:func:`profile_case`).
        fingerprint: the checkpoint's training fingerprint; ``None`` skips the flags that need it.
        channels: the input's channel names, in ``profile``'s order.
        uncertainty: the case's uncertainty scores (empty when not computed or nothing was predicted).
        uncertain_above: the validation cases' :data:`UNCERTAINTY_PERCENTILE` th percentile of
            :data:`UNCERTAINTY_SCORE`; ``None`` skips ``uncertain``.
    """
    flags = set()
    if fingerprint is not None:
        if unlike_training(profile, fingerprint, channels=channels):
            flags.add("unlike_training")
        for name, expected in fingerprint.labels.items():
            volume = profile.volumes_ml.get(name)
            if volume is None:
                continue
            if volume == 0 and expected.presence >= EXPECTED_PRESENCE:
                flags.add("empty_label")
            if volume > 0 and expected.volume_ml is not None:
                low, high = expected.volume_ml
                if not low <= volume <= high:
                    flags.add("volume_out_of_range")
    if profile.touches_border:
        flags.add("touches_border")
    score = uncertainty.get(UNCERTAINTY_SCORE)
    if uncertain_above is not None and score is not None and score > uncertain_above:
        flags.add("uncertain")
    return tuple(flag for flag in FLAGS if flag in flags)


def unlike_training(profile: CaseProfile, fingerprint: TrainingFingerprint, *, channels: Sequence[str]) -> bool:
    """Whether ``profile``'s intensities (``channels`` in order) or voxel size are far from the training
    cases' (the ``unlike_training`` rule of the module docstring)."""
    finest, coarsest = fingerprint.spacing_mm
    for size, low, high in zip(profile.spacing_mm, finest, coarsest, strict=True):
        if size < low / SPACING_FAR or size > high * SPACING_FAR:
            return True
    for i, channel in enumerate(channels):
        if channel not in fingerprint.quantiles:
            continue
        distance = float(np.abs(profile.quantiles[i] - np.asarray(fingerprint.quantiles[channel])).mean())
        if distance > INTENSITY_FAR * max(fingerprint.spread[channel], INTENSITY_SPREAD_FLOOR):
            return True
        low, high = fingerprint.foreground[channel]
        median = profile.foreground[i, 1]
        if np.isfinite(median) and math.isfinite(low) and not low <= median <= high:
            return True
    return False


def uncertainty_threshold(scores: Sequence[Mapping[str, float]]) -> float | None:
    """The :data:`UNCERTAINTY_PERCENTILE` th percentile of :data:`UNCERTAINTY_SCORE` over validation cases'
    scores (those with one); ``None`` when none has."""
    values = [s[UNCERTAINTY_SCORE] for s in scores if UNCERTAINTY_SCORE in s]
    return round(float(np.percentile(values, UNCERTAINTY_PERCENTILE)), 6) if values else None


def training_fingerprint(checkpoint: Checkpoint) -> TrainingFingerprint | None:
    """The :class:`TrainingFingerprint` that ``checkpoint`` keeps; ``None`` for one written before medseg kept it.

    Raises:
        CheckpointError: the stored fingerprint is malformed.
    """
    if checkpoint.training_fingerprint is None:
        return None
    try:
        return TrainingFingerprint.from_dict(checkpoint.training_fingerprint)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"its training fingerprint is malformed ({exc!r})", path=checkpoint.source) from None


@dataclass(frozen=True)
class QualityReference:
    """What a model's predictions are flagged against: its training fingerprint, preprocessing and channels,
    and the uncertainty threshold for its inference settings.

    Attributes:
        fingerprint: the checkpoint's :class:`TrainingFingerprint` (of an ensemble, its first member's);
            ``None`` for a checkpoint written before medseg kept one.
        transforms: the checkpoint's preprocessing (its intensity normalisation).
        channels: the input channel names, in order.
        uncertain_above: the ``uncertain`` threshold (:func:`uncertainty_threshold`) that ``medseg calibrate``
            stored for predictions with or without temperature scaling, as predicted; ``None`` when not stored.
    """

    fingerprint: TrainingFingerprint | None
    transforms: TransformConfig
    channels: tuple[str, ...]
    uncertain_above: float | None

    @classmethod
    def of(cls, checkpoint: Checkpoint, *, temperature_scaling: bool) -> QualityReference:
        """The reference of ``checkpoint`` for predictions with(out) ``temperature_scaling``.

        Raises:
            CheckpointError: its stored training fingerprint is malformed.
        """
        thresholds = (checkpoint.calibration or {}).get("uncertain_above") or {}
        above = thresholds.get("temperature_scaling" if temperature_scaling else "as_trained")
        return cls(
            fingerprint=training_fingerprint(checkpoint),
            transforms=checkpoint.section("transforms", TransformConfig),
            channels=tuple(checkpoint.channels),
            uncertain_above=None if above is None else float(above),
        )

    def profile(self, image: Image, labels: np.ndarray, *, volumes: dict[str, float]) -> CaseProfile:
        """:func:`profile_case` of a predicted case, as this model normalises it: ``image`` ``(C, X, Y, Z)``, its
        label map ``labels`` ``(X, Y, Z)`` with label volumes ``volumes`` (mL, by name)."""
        return profile_case(image, labels, transforms=self.transforms, volumes=volumes)

    def flags(self, profile: CaseProfile, *, uncertainty: Mapping[str, float]) -> tuple[str, ...]:
        """:func:`quality_flags` of a predicted case measured as :meth:`profile`, with its uncertainty scores
        (may be empty)."""
        return quality_flags(
            profile,
            fingerprint=self.fingerprint,
            channels=self.channels,
            uncertainty=uncertainty,
            uncertain_above=self.uncertain_above,
        )
