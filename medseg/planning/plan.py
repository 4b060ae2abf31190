"""Dataset fingerprint and the preprocessing it suggests (``medseg plan``), as nnU-Net plans a dataset
before it trains on it.

:func:`fingerprint_dataset` reads every labelled case of a config's dataset as training reads it
(medseg's loader, reoriented to ``transforms.orientation``, cropped to the foreground box when the
config crops; not resampled) and has MONAI Auto3DSeg's ``DataAnalyzer`` measure it. Per case: the
voxel spacing in mm along each axis of that orientation, the shape in voxels, and each channel's
intensity inside the reference label (label > 0).

:func:`plan_transforms` turns a fingerprint into values for three ``transforms`` keys:

- ``spacing`` (mm), nnU-Net's rule (Isensee et al., Nature Methods 2021): the median spacing of each
  axis. When the coarsest axis is more than 3x coarser than the others and holds fewer than a third
  as many voxels (median shapes), it takes the 10th percentile of that axis's spacings instead (never
  finer than the other axes): thick-slice cases are then upsampled less along their slices. ``None``
  (no resampling) when every case already has that spacing.
- ``hu_window`` (HU; ``ct_window`` configs only): the 0.5th and 99.5th percentiles of the intensity
  inside the labels, of up to 10,000 voxels drawn from each case and pooled, the range nnU-Net's CT
  normalisation clips to. (Averaging each case's percentiles instead, as Auto3DSeg's summary does,
  leaves out the low end of cases scanned without contrast; measured in the README.)
- ``patch_size`` (voxels): the median shape at the suggested spacing, rounded up to a multiple of the
  network's size divisor; then, while it holds more than ``max_patch_voxels``, the axis longest in
  mm loses one divisor step. A BraTS case cropped to its brain (about 140 x 170 x 140 at 1 mm) gets
  128 x 128 x 128 under the default 128^3 voxels, nnU-Net's BraTS patch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config import Config, TransformConfig
from medseg.data.manifest import require_consistent
from medseg.errors import MedsegInputError, user_errors_unwrapped
from medseg.io import atomic_output, read_image
from medseg.keys import IMAGE, LABEL
from medseg.labels import LabelTable
from medseg.networks.registry import size_divisor
from medseg.parallel import map_in_processes
from medseg.progress import track
from medseg.training import load_dataset_manifest, resolve_label_table
from medseg.transforms import intensity_offset_transforms, load_transforms, spatial_transforms

MAX_PATCH_VOXELS = 128**3
FOREGROUND_SAMPLES_PER_CASE = 10_000
ANISOTROPY_RATIO = 3.0
FINGERPRINT_JSON = "fingerprint.json"
PLAN_JSON = "plan.json"
FINGERPRINT_PNG = "fingerprint.png"


@dataclass(frozen=True)
class IntensityRange:
    """One channel's intensity inside a case's reference label (label > 0), in the image's units
    (HU for CT): its 0.5th and 99.5th percentiles, mean and standard deviation."""

    p00_5: float
    p99_5: float
    mean: float
    std: float


@dataclass(frozen=True)
class CaseFingerprint:
    """One case as training sees it before resampling.

    Attributes:
        id: case identifier.
        spacing_mm: voxel size along each axis of the config's orientation (RAS: R, A, S).
        shape: voxels along those axes, after cropping to the foreground box when the config crops.
        labels: the label values its reference holds, background included.
        foreground: per channel, the intensity inside the reference label; empty when the reference
            holds background only.
    """

    id: str
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    labels: tuple[int, ...]
    foreground: tuple[IntensityRange, ...]


@dataclass(frozen=True)
class Fingerprint:
    """What :func:`fingerprint_dataset` measured.

    Attributes:
        orientation: the axis codes every case's spacing and shape follow (``transforms.orientation``).
        channels: the image channels' names, in the model's order.
        table: the label table the references follow.
        cases: every labelled case, in the dataset's order.
        auto3dseg_summary: MONAI's summary of them (``DataAnalyzer``'s ``stats_summary``).
        pooled_foreground: per channel, the intensity of voxels sampled inside the labels of every case
            together (:func:`pooled_foreground`); measured for ``ct_window`` configs, whose window
            needs it, and empty for others.
    """

    orientation: str
    channels: tuple[str, ...]
    table: LabelTable
    cases: tuple[CaseFingerprint, ...]
    auto3dseg_summary: dict[str, Any]
    pooled_foreground: tuple[IntensityRange, ...] = ()

    def spacings(self) -> np.ndarray:
        """``(N, 3)`` spacings in mm, one row per case."""
        return np.array([c.spacing_mm for c in self.cases], dtype=float)

    def shapes(self) -> np.ndarray:
        """``(N, 3)`` shapes in voxels, one row per case."""
        return np.array([c.shape for c in self.cases], dtype=float)


@dataclass(frozen=True)
class Suggestion:
    """A suggested value for one config key, beside the config's own and the reason."""

    key: str
    current: Any
    value: Any
    reason: str


def fingerprint_dataset(config: Config, *, device: str | torch.device = "cpu", workers: int = 0) -> Fingerprint:
    """Measure every labelled case of ``config``'s dataset (see the module docstring).

    Args:
        config: the experiment config; its ``data`` section names the dataset and its ``transforms``
            section the orientation and foreground crop.
        device: where MONAI computes the statistics.
        workers: processes reading cases besides this one (MONAI's DataLoader workers; 0: none), and
            for the CT window's sampling, processes sampling cases (0 or 1: this one).

    Raises:
        MedsegInputError: ``workers`` < 0, no labelled case, or a missing, unreadable or inconsistent
            file (one line naming it, as training says it).
        ConfigError: ``data.labels`` unknown or lacking the dataset's label values.
    """
    from monai.apps.auto3dseg import DataAnalyzer

    if workers < 0:
        raise MedsegInputError(f"workers must be >= 0, got {workers}")
    manifest, root = load_dataset_manifest(config)
    table = resolve_label_table(config, manifest)
    require_consistent(manifest, root=root)
    labelled = [c for c in manifest.cases if c.label is not None]
    if not labelled:
        raise MedsegInputError("the dataset has no labelled case to plan from", path=root)
    datalist = {"training": [{IMAGE: [str(root / p) for p in c.images], LABEL: str(root / c.label)} for c in labelled]}
    unresampled = dataclasses.replace(config.transforms, spacing=None)
    steps = [
        *load_transforms([IMAGE, LABEL]),
        *intensity_offset_transforms(unresampled),
        *spatial_transforms(unresampled, [IMAGE, LABEL]),
    ]
    # output_path "": the statistics are returned, not written
    analyzer = DataAnalyzer(datalist, output_path="", average=False, device=device, worker=workers, label_key=LABEL)
    stats = _quietly(analyzer.get_all_case_stats, transform_list=steps)
    by_image = {_first(case["image_filepath"]): case for case in stats["stats_by_cases"]}
    cases = []
    for case, items in zip(labelled, datalist["training"], strict=True):
        measured = by_image.get(items[IMAGE][0])
        if measured is None:  # DataAnalyzer logs a case it cannot measure and goes on without it
            raise MedsegInputError("MONAI's DataAnalyzer could not measure this case", path=items[IMAGE][0])
        cases.append(_case_fingerprint(case.id, measured))
    pooled: tuple[IntensityRange, ...] = ()
    if config.transforms.intensity == "ct_window":
        files = [(tuple(root / p for p in c.images), root / c.label) for c in labelled]
        pooled = pooled_foreground(files, workers=max(workers, 1), offset=config.transforms.intensity_offset)
    summary = stats["stats_summary"]
    return Fingerprint(config.transforms.orientation, manifest.channels, table, tuple(cases), summary, pooled)


def _foreground_sample(job: tuple[tuple[Path, ...], Path, int]) -> np.ndarray:
    """``(C, n)``: the intensity of up to :data:`FOREGROUND_SAMPLES_PER_CASE` voxels inside a case's label
    (label > 0), drawn without replacement with the job's seed, for each channel of its images."""
    images, label_path, seed = job
    label = read_image(label_path).array.reshape(-1)
    inside = np.flatnonzero(label > 0)
    if inside.size > FOREGROUND_SAMPLES_PER_CASE:
        inside = np.random.default_rng(seed).choice(inside, FOREGROUND_SAMPLES_PER_CASE, replace=False)
    return np.concatenate([read_image(p).array.reshape(-1, label.size)[:, inside] for p in images])


def pooled_foreground(
    cases: Sequence[tuple[tuple[Path, ...], Path]], *, workers: int = 1, seed: int = 0, offset: float = 0.0
) -> tuple[IntensityRange, ...]:
    """Per channel, the intensity inside the labels of all ``cases`` together: up to
    :data:`FOREGROUND_SAMPLES_PER_CASE` voxels drawn from each case (as nnU-Net's fingerprint draws
    them), then their 0.5th and 99.5th percentiles, mean and standard deviation. Empty when no case
    has a labelled voxel. This reads each case a second time (MONAI's ``DataAnalyzer`` keeps no
    voxels), so :func:`fingerprint_dataset` does it only for ``ct_window`` configs, whose window needs it.

    Args:
        cases: each case's image files (one per channel, or one multi-channel file) and label map.
        workers: cases read at once, each in its own process (1: in this process).
        seed: the draws' seed (case ``i`` draws with ``seed + i``).
        offset: added to every voxel as read (``transforms.intensity_offset``: HU for a set stored in HU + 1000).
    """
    jobs = [(images, label, seed + i) for i, (images, label) in enumerate(cases)]
    samples = np.concatenate(map_in_processes(_foreground_sample, jobs, workers=workers, what="sampling"), axis=1)
    samples = samples + offset
    if samples.shape[1] == 0:
        return ()
    low, high = np.percentile(samples, [0.5, 99.5], axis=1)
    return tuple(
        IntensityRange(float(a), float(b), float(m), float(s))
        for a, b, m, s in zip(low, high, samples.mean(axis=1), samples.std(axis=1), strict=True)
    )


def _first(paths: str | Sequence[str]) -> str:
    """The first image file of a case, as DataAnalyzer records it (one path, or a list of them)."""
    return paths if isinstance(paths, str) else paths[0]


def _quietly(run: Any, **kwargs: Any) -> Any:
    """Call ``run`` with MONAI's info-level logging hidden, the DataAnalyzer's progress bar shown as ours
    (:func:`~medseg.progress.track`: plain lines in a log) and our own errors unwrapped."""
    from monai.apps.auto3dseg import data_analyzer

    logger = logging.getLogger("monai.apps.auto3dseg.data_analyzer")
    level, bar = logger.level, data_analyzer.tqdm
    logger.setLevel(logging.WARNING)
    data_analyzer.tqdm = functools.partial(track, desc="fingerprint", unit="case")
    try:
        with user_errors_unwrapped():
            return run(**kwargs)
    finally:
        logger.setLevel(level)
        data_analyzer.tqdm = bar


def _case_fingerprint(case_id: str, measured: dict[str, Any]) -> CaseFingerprint:
    image = measured["image_stats"]
    labels = tuple(sorted(int(v) for v in measured["label_stats"]["labels"]))
    # MONAI reports zeros for the intensity inside an empty label; such a case has none
    foreground = tuple(
        IntensityRange(float(s["percentile_00_5"]), float(s["percentile_99_5"]), float(s["mean"]), float(s["stdev"]))
        for s in measured["image_foreground_stats"]["intensity"]
        if any(labels)
    )
    spacing = tuple(float(s) for s in image["spacing"])
    shape = tuple(int(s) for s in image["shape"][0])
    return CaseFingerprint(case_id, spacing, shape, labels, foreground)  # type: ignore[arg-type]


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[tuple[float, float, float], int | None]:
    """nnU-Net's target spacing (mm) of cases with ``spacings`` (``(N, 3)`` mm) and ``shapes``
    (``(N, 3)`` voxels), see the module docstring; rounded to 0.001 mm.

    Returns:
        ``(spacing, coarse_axis)``: ``coarse_axis`` is the axis that took its 10th percentile (an
        anisotropic dataset), else ``None``.
    """
    target = np.median(spacings, axis=0)
    sizes = np.median(shapes, axis=0)
    coarse = int(np.argmax(target))
    others = [axis for axis in range(3) if axis != coarse]
    finest_other = max(target[others])
    anisotropic = target[coarse] > ANISOTROPY_RATIO * finest_other and sizes[coarse] * ANISOTROPY_RATIO < min(
        sizes[others]
    )
    if anisotropic:
        target[coarse] = max(float(np.percentile(spacings[:, coarse], 10)), finest_other)
    spacing = tuple(round(float(s), 3) for s in target)
    return spacing, coarse if anisotropic else None  # type: ignore[return-value]


def patch_size(
    shape: Sequence[float], spacing_mm: Sequence[float], *, divisor: int, max_voxels: int = MAX_PATCH_VOXELS
) -> list[int]:
    """The training patch (voxels) for cases of median ``shape`` (voxels at ``spacing_mm``): see the
    module docstring. Never smaller than ``divisor`` on an axis, even if that exceeds ``max_voxels``."""
    patch = [max(divisor, divisor * math.ceil(s / divisor)) for s in shape]
    while math.prod(patch) > max_voxels:
        shrinkable = [axis for axis in range(3) if patch[axis] > divisor]
        if not shrinkable:
            break
        longest = max(shrinkable, key=lambda axis: patch[axis] * spacing_mm[axis])  # first of equals
        patch[longest] -= divisor
    return patch


def check_max_patch_voxels(max_patch_voxels: int) -> None:
    """Raise :class:`MedsegInputError` unless ``max_patch_voxels`` >= 1."""
    if max_patch_voxels < 1:
        raise MedsegInputError(f"the largest patch must hold at least 1 voxel, got {max_patch_voxels}")


def plan_transforms(
    fingerprint: Fingerprint, config: Config, *, max_patch_voxels: int = MAX_PATCH_VOXELS
) -> list[Suggestion]:
    """Suggested ``transforms.spacing``, ``transforms.hu_window`` (``ct_window`` configs) and
    ``transforms.patch_size`` for ``config``'s network, with the config's own values beside them.

    Raises:
        MedsegInputError: ``max_patch_voxels`` < 1.
    """
    check_max_patch_voxels(max_patch_voxels)
    cfg: TransformConfig = config.transforms
    spacings, shapes = fingerprint.spacings(), fingerprint.shapes()
    spacing, coarse_axis = target_spacing(spacings, shapes)
    median_shape = np.median(shapes * spacings / np.array(spacing), axis=0)
    reason = f"median of {len(fingerprint.cases)} cases ({', '.join(fingerprint.orientation)})"
    if coarse_axis is not None:
        reason += f"; {fingerprint.orientation[coarse_axis]} at its 10th percentile (anisotropic)"
    planned: list[float] | None = list(spacing)
    if np.allclose(spacings, spacing, rtol=1e-3, atol=0):
        planned, reason = None, f"every case is already at {' x '.join(f'{s:g}' for s in spacing)} mm: no resampling"
    suggestions = [Suggestion("transforms.spacing", cfg.spacing, planned, reason)]
    if cfg.intensity == "ct_window":
        if not fingerprint.pooled_foreground:
            raise MedsegInputError("no reference label of the dataset holds a labelled voxel")
        low = min(r.p00_5 for r in fingerprint.pooled_foreground)  # one window for every channel
        high = max(r.p99_5 for r in fingerprint.pooled_foreground)
        window = [float(round(low)), float(round(high))]
        if window[0] >= window[1]:
            window[1] = window[0] + 1.0  # a label on uniform intensity: any window holds it
        with_labels = sum(bool(c.foreground) for c in fingerprint.cases)
        reason = f"0.5th and 99.5th percentiles inside the labels of {with_labels} cases together"
        suggestions.append(Suggestion("transforms.hu_window", cfg.hu_window, window, reason))
    divisor = size_divisor(config.network.name, config.network.kwargs)
    patch = patch_size(median_shape, spacing, divisor=divisor, max_voxels=max_patch_voxels)
    shape_text = " x ".join(f"{s:.0f}" for s in median_shape)
    reason = f"median shape {shape_text} at that spacing, multiples of {divisor}, at most {max_patch_voxels} voxels"
    suggestions.append(Suggestion("transforms.patch_size", cfg.patch_size, patch, reason))
    if list(config.inference.roi_size) != patch:
        reason = "the sliding window of inference as large as the training patch"
        suggestions.append(Suggestion("inference.roi_size", config.inference.roi_size, patch, reason))
    return suggestions


def unusual_spacing(fingerprint: Fingerprint, *, factor: float = 2.0) -> list[str]:
    """Cases whose spacing on some axis is over ``factor`` times larger or smaller than the median,
    one line each: worth a look at their headers before training."""
    median = np.median(fingerprint.spacings(), axis=0)
    lines = []
    for case in fingerprint.cases:
        ratio = np.array(case.spacing_mm) / median
        if np.any(ratio > factor) or np.any(ratio < 1 / factor):
            sizes = " x ".join(f"{s:g}" for s in case.spacing_mm)
            lines.append(f"{case.id}: spacing {sizes} mm, far from the median {' x '.join(f'{s:g}' for s in median)}")
    return lines


def missing_labels(fingerprint: Fingerprint) -> list[str]:
    """Foreground labels of the fingerprint's table that some cases' references do not hold, one line
    each naming those cases."""
    lines = []
    for value in fingerprint.table.foreground_labels:
        name = fingerprint.table.labels[value]
        absent = [c.id for c in fingerprint.cases if value not in c.labels]
        if absent:
            listed = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
            lines.append(
                f"label {value} ({name}) is absent from {len(absent)} of {len(fingerprint.cases)} cases: {listed}"
            )
    return lines


def set_arguments(suggestions: Sequence[Suggestion]) -> list[str]:
    """The ``medseg train --set`` arguments that apply ``suggestions``, e.g.
    ``transforms.spacing=[1.5, 1.5, 2.0]``."""
    return [f"{s.key}={json.dumps(s.value)}" for s in suggestions]


def train_command(config_path: str | Path, *, overrides: Sequence[str], suggestions: Sequence[Suggestion]) -> str:
    """The ``medseg train`` command line that trains what was planned: the ``--set`` ``overrides`` the plan
    was given (e.g. ``data.root=...``, so it trains on the data planned on), then the suggestions' (which
    win where both set a key), each quoted for a POSIX shell."""
    words = ["medseg", "train", "--config", str(config_path)]
    for argument in [*overrides, *set_arguments(suggestions)]:
        words += ["--set", argument]
    return shlex.join(words)


def write_plan(
    fingerprint: Fingerprint, suggestions: Sequence[Suggestion], out_dir: str | Path, *, config_path: str | Path
) -> Path:
    """Write ``fingerprint.json`` (every case, and MONAI's summary), ``plan.json`` (the suggestions,
    their ``--set`` arguments and unusual cases) and ``fingerprint.png`` into ``out_dir``, each
    atomically. Returns ``out_dir``."""
    from medseg.planning.plot import plot_fingerprint

    out = Path(out_dir)
    record = {
        "orientation": fingerprint.orientation,
        "channels": list(fingerprint.channels),
        "labels": fingerprint.table.to_dict(),
        "cases": [dataclasses.asdict(c) for c in fingerprint.cases],
        "pooled_foreground": [dataclasses.asdict(r) for r in fingerprint.pooled_foreground],
        "auto3dseg_summary": fingerprint.auto3dseg_summary,
    }
    plan = {
        "config": str(config_path),
        "suggestions": [dataclasses.asdict(s) for s in suggestions],
        "set": set_arguments(suggestions),
        "unusual_spacing": unusual_spacing(fingerprint),
        "missing_labels": missing_labels(fingerprint),
    }
    for name, data in ((FINGERPRINT_JSON, record), (PLAN_JSON, plan)):
        with atomic_output(out / name) as tmp:
            tmp.write_text(json.dumps(data, indent=2, default=_plain) + "\n")
    plot_fingerprint(fingerprint, suggestions, out / FINGERPRINT_PNG)
    return out


def _plain(value: Any) -> Any:
    """JSON for the NumPy and torch numbers in MONAI's summary."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def format_suggestions(suggestions: Sequence[Suggestion]) -> str:
    """A line per key: the config's value, the suggested one and why."""
    lines = []
    for s in suggestions:
        lines.append(f"{s.key}: {json.dumps(s.current)} -> {json.dumps(s.value)}  ({s.reason})")
    return "\n".join(lines)
