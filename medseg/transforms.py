"""Transform pipelines built from :class:`~medseg.config.TransformConfig`, from MONAI dict transforms.

Images are ``(C, X, Y, Z)`` float, reoriented to ``cfg.orientation`` (RAS by default); label maps are
``(1, X, Y, Z)`` label values until the last training/validation step, which turns them into
the network's target (``(R, X, Y, Z)`` multi-hot regions, or class indices for class tables).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai import transforms as mt
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.utils import SpaceKeys

from medseg.config import TransformConfig
from medseg.errors import ConfigError
from medseg.io import Image, read_image, require_finite, require_same_grid, stack_channels
from medseg.keys import IMAGE, LABEL
from medseg.labels import LabelTable


class LabelsToRegionsd(mt.MapTransform):
    """Label map ``(1, X, Y, Z)`` -> multi-hot regions ``(R, X, Y, Z)`` float, one channel per region
    of a region :class:`LabelTable` (BraTS: WT, TC, ET). Class tables pass through unchanged."""

    def __init__(self, keys: KeysCollection, table: LabelTable) -> None:
        super().__init__(keys)
        self.table = table

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.table.kind != "regions":
            return d
        for key in self.key_iterator(d):
            label = d[key][0]
            regions = [torch.isin(label, torch.as_tensor(r.labels, device=label.device)) for r in self.table.regions]
            d[key] = torch.stack(regions).to(torch.float32)
        return d


class LoadImagesd(mt.MapTransform):
    """Read each key's file(s) with :func:`medseg.io.read_image`, the reader prediction uses (NIfTI, NRRD,
    MHA/MHD, a DICOM series folder), into a float32 ``(C, X, Y, Z)`` :class:`~monai.data.MetaTensor` in
    file voxel order whose affine maps voxel indices to RAS mm, as the Predictor builds its input.

    A list of files under one key is stacked into channels (:func:`medseg.io.stack_channels`; a 4-D file
    gives all its channels). Every file of an item must lie on the grid of the first key's first file.
    Errors name the file: unreadable, off that grid, or holding NaN or infinite voxels.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first: Image | None = None
        for key in self.key_iterator(d):
            paths = [d[key]] if isinstance(d[key], (str, Path)) else list(d[key])
            image = stack_channels([read_image(p) for p in paths])
            if first is None:
                first = image
            require_same_grid(image.geometry, first.geometry, path=image.path, reference_path=first.path)
            for channel, path in zip(image.array, image.meta["channel_files"], strict=True):
                require_finite(channel, path=path)
            meta = {"filename_or_obj": str(paths[0]), "space": SpaceKeys.RAS}
            d[key] = MetaTensor(torch.from_numpy(image.array), affine=torch.as_tensor(image.geometry.affine), meta=meta)
        return d


def load_transforms(keys: Sequence[str]) -> list[mt.Transform]:
    """Read image files channel-first (:class:`LoadImagesd`)."""
    return [LoadImagesd(keys=list(keys))]


class AboveThreshold:
    """``x > threshold``: a picklable ``select_fn`` for :class:`monai.transforms.CropForegroundd`
    (e.g. the body in CT: ``AboveThreshold(-500.0)`` in HU)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x > self.threshold

    def __repr__(self) -> str:
        return f"AboveThreshold({self.threshold})"


class ClipNonzeroPercentilesd(mt.MapTransform):
    """Clip each channel's nonzero voxels to the ``[low, high]`` percentiles of that channel's own
    nonzero voxels; zeros (background outside a skull-stripped brain) stay zero. Makes the z-score that
    follows robust to a few hot voxels (BraTS 2018 FLAIRs hold some at 32767)."""

    def __init__(self, keys: KeysCollection, low: float, high: float) -> None:
        super().__init__(keys)
        self.low, self.high = float(low), float(high)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            for channel in image:
                nonzero = channel != 0
                if not bool(nonzero.any()):
                    continue
                values = channel[nonzero].float()
                low, high = torch.quantile(values, torch.tensor([self.low, self.high]) / 100.0).tolist()
                channel[nonzero] = channel[nonzero].clamp(low, high)
        return d


def intensity_offset_transforms(cfg: TransformConfig | None) -> list[mt.Transform]:
    """Add ``cfg.intensity_offset`` to every image voxel (e.g. -1000 for CT stored as HU + 1000), before
    the foreground crop and the HU window, which are then in true units. Nothing when the offset is 0."""
    if cfg is None or not cfg.intensity_offset:
        return []
    return [mt.ShiftIntensityd(keys=IMAGE, offset=cfg.intensity_offset)]


def spatial_transforms(cfg: TransformConfig, keys: Sequence[str]) -> list[mt.Transform]:
    """Reorient, optionally resample to ``cfg.spacing`` mm (image linear or cubic spline, label
    nearest) and crop to the foreground box: nonzero voxels of any channel, or voxels above
    ``cfg.foreground_threshold`` (in the image's units, e.g. HU) when set. All steps are invertible."""
    # axis codes in RAS terms (L->R, P->A, I->S), named so MONAI's notice of a changing default stays quiet
    ras = (("L", "R"), ("P", "A"), ("I", "S"))
    steps: list[mt.Transform] = [mt.Orientationd(keys=list(keys), axcodes=cfg.orientation, labels=ras)]
    image_mode: str | int = "bilinear" if cfg.interpolation == "linear" else 3
    modes = [image_mode if k == IMAGE else "nearest" for k in keys]
    if cfg.spacing is not None:
        steps.append(mt.Spacingd(keys=list(keys), pixdim=cfg.spacing, mode=modes, dtype=torch.float32))
    if cfg.crop_foreground:
        select = AboveThreshold(cfg.foreground_threshold) if cfg.foreground_threshold is not None else None
        extra = {"select_fn": select} if select is not None else {}
        steps.append(mt.CropForegroundd(keys=list(keys), source_key=IMAGE, allow_smaller=True, **extra))
    return steps


def normalize_transforms(cfg: TransformConfig | None = None) -> list[mt.Transform]:
    """Intensity normalisation of ``cfg.intensity``:

    - ``zscore_nonzero`` (default, MRI): per-channel z-score over nonzero voxels; background stays 0;
      with ``cfg.clip_percentiles``, the nonzero voxels are first clipped (:class:`ClipNonzeroPercentilesd`);
    - ``ct_window``: clip to ``cfg.hu_window`` ``[a_min, a_max]`` HU and scale linearly to [0, 1].
    """
    if cfg is not None and cfg.intensity == "ct_window":
        a_min, a_max = cfg.hu_window
        return [mt.ScaleIntensityRanged(keys=IMAGE, a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)]
    low_high = None if cfg is None else cfg.clip_percentiles
    clip = [] if low_high is None else [ClipNonzeroPercentilesd(IMAGE, *low_high)]
    return [*clip, mt.NormalizeIntensityd(keys=IMAGE, nonzero=True, channel_wise=True)]


def patch_sampler(cfg: TransformConfig, table: LabelTable | None = None) -> mt.Transform:
    """The random patch crop of ``cfg.sampling``.

    ``pos_neg``: centres on foreground with probability ``pos_fraction``, else on background inside
    the image (``image > 0``). ``class_balanced`` (class tables): centres drawn per label value
    ``0..max`` with ``class_ratios`` (background first; equal ratios when unset), so that small organs
    are seen as often as large ones.

    Raises:
        ConfigError: ``class_balanced`` with a region table or with a ``class_ratios`` of the wrong length.
    """
    keys = [IMAGE, LABEL]
    if cfg.sampling == "pos_neg":
        return mt.RandCropByPosNegLabeld(
            keys=keys,
            label_key=LABEL,
            spatial_size=cfg.patch_size,
            pos=cfg.pos_fraction,
            neg=1.0 - cfg.pos_fraction,
            num_samples=cfg.samples_per_case,
            image_key=IMAGE,
            image_threshold=0.0,
        )
    if table is None or table.kind != "classes":
        name = table.name if table is not None else "none"
        raise ConfigError(f"transforms.sampling=class_balanced needs a class label table, got {name!r}")
    num_classes = max(table.labels) + 1
    ratios = cfg.class_ratios if cfg.class_ratios is not None else [1.0] * num_classes
    if len(ratios) != num_classes:
        raise ConfigError(
            f"transforms.class_ratios has {len(ratios)} values; label table {table.name} needs {num_classes}"
            f" (label values 0..{num_classes - 1}, background first)"
        )
    return mt.RandCropByLabelClassesd(
        keys=keys,
        label_key=LABEL,
        spatial_size=cfg.patch_size,
        ratios=list(ratios),
        num_classes=num_classes,
        num_samples=cfg.samples_per_case,
        image_key=IMAGE,
        image_threshold=0.0,
        warn=False,
    )


def augmentation_transforms(cfg: TransformConfig, table: LabelTable | None = None) -> list[mt.Transform]:
    """Random patch crops (:func:`patch_sampler`), then :func:`random_augmentation`."""
    keys = [IMAGE, LABEL]
    return [
        mt.SpatialPadd(keys=keys, spatial_size=cfg.patch_size),
        patch_sampler(cfg, table),
        *random_augmentation(cfg, keys),
    ]


def random_augmentation(cfg: TransformConfig, keys: Sequence[str]) -> list[mt.Transform]:
    """Flips, small rotation/scaling (images linear, labels nearest), intensity jitter of the image."""
    angle = math.radians(cfg.rotate_deg)
    return [
        *[mt.RandFlipd(keys=list(keys), prob=cfg.flip_prob, spatial_axis=axis) for axis in range(3)],
        mt.RandAffined(
            keys=list(keys),
            prob=cfg.affine_prob,
            rotate_range=(angle, angle, angle),
            scale_range=(cfg.scale_range,) * 3,
            mode=["bilinear" if k == IMAGE else "nearest" for k in keys],
            padding_mode="zeros",
        ),
        mt.RandScaleIntensityd(keys=IMAGE, factors=cfg.intensity_scale, prob=cfg.intensity_prob),
        mt.RandShiftIntensityd(keys=IMAGE, offsets=cfg.intensity_shift, prob=cfg.intensity_prob),
    ]


def _cached_steps(cfg: TransformConfig, keys: Sequence[str] = (IMAGE, LABEL)) -> list[mt.Transform]:
    return [
        *load_transforms(keys),
        *intensity_offset_transforms(cfg),
        *spatial_transforms(cfg, keys),
        *normalize_transforms(cfg),
    ]


def training_pipeline(cfg: TransformConfig, table: LabelTable) -> mt.Compose:
    """Load -> reorient -> crop -> normalise (deterministic, cached by MONAI's CacheDataset up to the
    first random transform) -> random patches and augmentation -> network target."""
    return mt.Compose(
        [
            *_cached_steps(cfg),
            *augmentation_transforms(cfg, table),
            LabelsToRegionsd(LABEL, table),
            mt.ToTensord([IMAGE, LABEL], track_meta=False),
        ]
    )


def unlabelled_pipeline(cfg: TransformConfig) -> mt.Compose:
    """:func:`training_pipeline` for images without a label: the same cached steps, then
    ``cfg.samples_per_case`` patches at random places (there is no label to centre them on) and
    :func:`random_augmentation`; items hold ``image`` patches ``(C, *patch_size)`` only."""
    return mt.Compose(
        [
            *_cached_steps(cfg, [IMAGE]),
            mt.SpatialPadd(keys=IMAGE, spatial_size=cfg.patch_size),
            mt.RandSpatialCropSamplesd(
                keys=IMAGE, roi_size=cfg.patch_size, num_samples=cfg.samples_per_case, random_size=False
            ),
            *random_augmentation(cfg, [IMAGE]),
            mt.ToTensord(IMAGE, track_meta=False),
        ]
    )


def validation_pipeline(cfg: TransformConfig, table: LabelTable) -> mt.Compose:
    """The deterministic part of :func:`training_pipeline` on whole cases, then the network target."""
    return mt.Compose(
        [*_cached_steps(cfg), LabelsToRegionsd(LABEL, table), mt.ToTensord([IMAGE, LABEL], track_meta=False)]
    )


def inference_transforms(cfg: TransformConfig) -> mt.Compose:
    """For an in-memory image (a MetaTensor carrying its affine); invertible with :class:`monai.transforms.Invertd`."""
    steps = [*intensity_offset_transforms(cfg), *spatial_transforms(cfg, [IMAGE]), *normalize_transforms(cfg)]
    return mt.Compose(steps)
