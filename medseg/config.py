"""Typed experiment configuration, loaded from YAML with dotted ``--set`` overrides.

Every hyperparameter lives here and in ``configs/*.yaml``. Unknown keys and wrong types are
:class:`~medseg.errors.ConfigError` naming the key (with a "did you mean" where one is close).
This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from medseg.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The values a number may take (every number, in a list; every value, in a mapping): from ``low``
    to ``high``, each end included unless ``open_low``/``open_high``; ``None`` leaves that end
    unbounded. NaN and infinity are never in range."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.open_high and value == self.high))

    def __str__(self) -> str:
        if self.low is None and self.high is None:
            return "a finite number"
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.open_high else '<='} {self.high:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


def _ranged(default: Any, low: float | None = None, high: float | None = None, **open_ends: bool) -> Any:
    """A dataclass field whose value (or every item of a list, or every value of a mapping) must lie in
    :class:`Range`."""
    metadata = {"range": Range(low, high, **open_ends)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _check_ranges(section: Any, name: str) -> None:
    """Raise :class:`ConfigError` for the first field of ``section`` outside its :class:`Range`."""
    for f in dataclasses.fields(section):
        allowed = f.metadata.get("range")
        value = getattr(section, f.name)
        if allowed is None or value is None:
            continue
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        if not all(v in allowed for v in items):
            each = " (each)" if isinstance(value, (list, dict)) else ""
            raise ConfigError(f"{name}.{f.name} must be {allowed}{each}, got {value!r}")


@dataclass
class DataConfig:
    """Where cases come from and how they are split.

    ``root`` and ``manifest`` are resolved relative to the config file's folder when relative.
    With no manifest, one is built from ``root`` with ``layout`` on the fly. A manifest may be a
    hand-written file list (see :mod:`medseg.data.manifest`) naming its own root: ``root: null``
    then takes that one. ``labels``: ``auto`` (the layout's or manifest's table) or a registered
    table's name (``brats2024-gli``, ``brats2024-ped``, ... :data:`medseg.labels.LABEL_TABLES`), needed
    where the layout cannot tell (BraTS PED cases are labelled as in 2023 or as in 2024).
    """

    root: str | None = "data"
    manifest: str | None = None
    layout: Literal["brats", "msd", "nnunet", "openkbp"] = "brats"
    labels: str = "auto"
    fold: int = _ranged(0, 0)
    num_folds: int = _ranged(5, 2)
    cache_rate: float = _ranged(1.0, 0, 1)
    num_workers: int = _ranged(2, 0)

    def __post_init__(self) -> None:
        _check_ranges(self, "data")


@dataclass
class TransformConfig:
    """Preprocessing and augmentation (MONAI dictionary transforms). Sizes in voxels, angles in degrees.

    The defaults are BraTS's: z-score over nonzero voxels, crop to the nonzero box, patches balanced
    between tumour and background. CT configs set ``intensity: ct_window`` (clip ``hu_window``
    ``[a_min, a_max]`` HU and scale it to [0, 1]), ``foreground_threshold`` (crop to the box of voxels
    above that HU, e.g. -500 for the body), ``spacing`` in mm with ``interpolation`` for the image
    (``linear`` or ``spline``, cubic; labels always nearest) and ``sampling: class_balanced`` (patch
    centres drawn per label value with ``class_ratios``, background first; equal when unset).
    """

    orientation: str = "RAS"
    spacing: list[float] | None = _ranged(None, 0, open_low=True)
    interpolation: Literal["linear", "spline"] = "linear"
    intensity: Literal["zscore_nonzero", "ct_window"] = "zscore_nonzero"
    hu_window: list[float] = _ranged([-175.0, 250.0])
    intensity_offset: float = _ranged(0.0)
    clip_percentiles: list[float] | None = _ranged(None, 0, 100)
    crop_foreground: bool = True
    foreground_threshold: float | None = _ranged(None)
    patch_size: list[int] = _ranged([96, 96, 96], 1)
    sampling: Literal["pos_neg", "class_balanced"] = "pos_neg"
    class_ratios: list[float] | None = _ranged(None, 0)
    pos_fraction: float = _ranged(0.67, 0, 1)
    samples_per_case: int = _ranged(2, 1)
    flip_prob: float = _ranged(0.5, 0, 1)
    rotate_deg: float = _ranged(10.0, 0, 180)
    scale_range: float = _ranged(0.1, 0, 1, open_high=True)
    affine_prob: float = _ranged(0.2, 0, 1)
    intensity_shift: float = _ranged(0.1, 0)
    intensity_scale: float = _ranged(0.1, 0, 1, open_high=True)
    intensity_prob: float = _ranged(0.5, 0, 1)

    def __post_init__(self) -> None:
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            raise ConfigError(f"transforms.hu_window must be [a_min, a_max] with a_min < a_max, got {self.hu_window}")
        if self.spacing is not None and len(self.spacing) != 3:
            raise ConfigError(f"transforms.spacing must be three sizes in mm, got {self.spacing}")
        if self.clip_percentiles is not None and (
            len(self.clip_percentiles) != 2 or not self.clip_percentiles[0] < self.clip_percentiles[1]
        ):
            raise ConfigError(
                f"transforms.clip_percentiles must be [low, high] with low < high, got {self.clip_percentiles}"
            )
        if len(self.patch_size) != 3:
            raise ConfigError(f"transforms.patch_size must be three sizes in voxels, got {self.patch_size}")
        _check_ranges(self, "transforms")


@dataclass
class NetworkConfig:
    """A registered network and the keyword arguments of its builder (see ``medseg.networks``)."""

    name: str = "resunet"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """Loss: ``dice_focal``, ``dice_ce``, ``tversky`` or ``focal_tversky``; term weights, gammas, optional
    per-output weights and an optional boundary term.

    ``dice_focal`` and ``dice_ce`` add ``dice_weight`` x Dice and ``other_weight`` x focal (``gamma``) or
    cross-entropy, with ``class_weights`` per output. ``tversky`` is 1 - TI per sample and output, averaged,
    with the Tversky index TI = TP / (TP + ``tversky_alpha`` FP + ``tversky_beta`` FN) of soft counts
    (Salehi et al., MLMI 2017: alpha 0.3, beta 0.7 favours recall on small structures);
    ``focal_tversky`` averages (1 - TI) ** (1 / ``tversky_gamma``) (Abraham and Khan, ISBI 2019: gamma
    4/3). Both count background as an output, as Dice does here, and take no ``class_weights``.
    ``boundary_weight`` > 0 (or a ``boundary_weight_step``) adds the boundary loss of Kervadec et al.
    (MIDL 2019): the mean over voxels of each foreground output's probability times the signed distance
    (voxels) to its reference's surface, negative inside. Its weight in epoch ``e`` (from 0) is
    ``min(boundary_weight + e * boundary_weight_step, boundary_weight_max)``; the paper's "rebalance"
    schedule starts at 0.01 and adds 0.01 per epoch.

    ``mask_unlabelled`` (class tables): in a case whose manifest lists the labels annotated in it
    (``labelled``), a label not annotated there is not taught as background: its probability joins
    background's before the loss (the marginal loss of Shi et al., MedIA 2021), so the network is
    neither rewarded nor punished for finding it there. ``false`` treats such cases as fully labelled.
    """

    name: Literal["dice_focal", "dice_ce", "tversky", "focal_tversky"] = "dice_focal"
    dice_weight: float = _ranged(1.0, 0)
    other_weight: float = _ranged(1.0, 0)
    gamma: float = _ranged(2.0, 0)
    class_weights: list[float] | None = _ranged(None, 0)
    tversky_alpha: float = _ranged(0.3, 0)
    tversky_beta: float = _ranged(0.7, 0)
    tversky_gamma: float = _ranged(4 / 3, 1, 3)
    boundary_weight: float = _ranged(0.0, 0)
    boundary_weight_step: float = _ranged(0.0, 0)
    boundary_weight_max: float = _ranged(1.0, 0)
    mask_unlabelled: bool = True

    def __post_init__(self) -> None:
        _check_ranges(self, "loss")
        if self.tversky_alpha + self.tversky_beta <= 0:
            raise ConfigError(
                f"loss.tversky_alpha + loss.tversky_beta must be > 0, got {self.tversky_alpha} + {self.tversky_beta}"
            )
        if self.class_weights is not None and self.name in ("tversky", "focal_tversky"):
            raise ConfigError(f"loss.class_weights is for dice_focal and dice_ce, not loss.name {self.name}")

    def boundary_weight_at(self, epoch: int) -> float:
        """The boundary term's weight in epoch ``epoch`` (from 0); see the class."""
        return min(self.boundary_weight + epoch * self.boundary_weight_step, self.boundary_weight_max)


@dataclass
class TrainConfig:
    """Optimisation schedule. An epoch is ``iterations_per_epoch`` optimizer steps.

    ``init_weights``: a medseg checkpoint whose weights fit this run's network (same architecture,
    input channel count and number of outputs) and that a new run starts from (fine-tuning, e.g. on
    larger patches); the optimizer and schedule start afresh.
    A resumed run takes its weights from ``last.pt`` instead.
    ``max_minutes``: stop after the epoch that reaches this much wall time (0: after the first
    epoch); ``--resume`` goes on from there.
    ``consistency_weight`` > 0 adds :class:`~medseg.losses.WindowConsistency` with that weight: the
    network's answer on part of each patch, seen in a window that is otherwise background, is pulled
    towards its answer with the whole patch around it, so sliding-window inference depends less on
    how much background its windows hold (one more forward and backward pass per step).
    ``amp``: fp16 autocast on CUDA (with gradient scaling). ``precision`` ``bf16`` autocasts the
    forward passes to bf16 on a CPU that has native bf16 (``avx512_bf16`` or ``amx_bf16``; about 2.6
    times faster per 128³ DynUNet step on such a 2-core machine) and is ignored elsewhere; fp32 is the default.
    """

    run_dir: str = "runs/train"
    epochs: int = _ranged(50, 1)
    iterations_per_epoch: int = _ranged(50, 1)
    batch_size: int = _ranged(2, 1)
    lr: float = _ranged(1e-3, 0, open_low=True)
    weight_decay: float = _ranged(1e-5, 0)
    warmup_epochs: int = _ranged(2, 0)
    schedule: Literal["cosine", "poly"] = "cosine"
    grad_clip: float | None = _ranged(12.0, 0, open_low=True)
    amp: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    val_every: int = _ranged(5, 1)
    max_minutes: float | None = _ranged(None, 0)
    init_weights: str | None = None
    consistency_weight: float = _ranged(0.0, 0)

    def __post_init__(self) -> None:
        _check_ranges(self, "train")


@dataclass
class SemiSupervisedConfig:
    """Unlabelled cases in training: ``method`` ``mean_teacher`` (Tarvainen and Valpola, NeurIPS 2017),
    ``fixmatch`` (Sohn et al., NeurIPS 2020; :mod:`medseg.training.semi_supervised`) or ``self_training``
    (pseudo-labels; below).

    ``unlabelled``: a folder of images (found as ``medseg predict`` finds cases) or a medseg manifest, whose
    cases *without* a label are taken (so one manifest may hold the labelled, held-out and unlabelled
    cases); ``null`` (the default) trains on labelled cases only. Each step also draws ``batch_size``
    unlabelled cases (``transforms.samples_per_case`` random patches each, augmented as labelled ones). A
    *teacher* network, whose weights after each step become the exponential moving average ``a`` x teacher
    + (1 - ``a``) x student, a = min(``ema_decay``, 1 - 1 / (step + 1)) (steps from 1), tells the *student*
    (the network the optimizer trains) what to predict on them, through a term added to the loss with the
    weight ``weight`` x exp(-5 (1 - t)²), t = min(epochs done, counted per step / ``rampup_epochs``, 1)
    (the sigmoid ramp-up of the mean-teacher paper):

    - ``mean_teacher``: student and teacher see the patch with different Gaussian noise of ``noise_std``
      (normalised intensity units, clipped at 2 ``noise_std``); the term is the mean squared difference of
      their probabilities (softmax for class tables, sigmoid for region tables).
    - ``fixmatch``: the teacher sees the patch as augmented (the weak view), the student a strong view of it
      (intensity scale and shift, blur, noise up to ``noise_std``, a cut-out box); the term is the
      cross-entropy against the teacher's labels over the voxels where its probability is at least
      ``threshold`` (divided by all voxels); ``pseudo_label_loss: dice_ce`` adds a soft Dice loss over
      those voxels, which weighs a small structure as much as the background.

    Validation scores the teacher, and ``best.pt`` and ``last.pt`` hold the teacher's weights (the model
    ``medseg predict`` uses); the student's are kept for ``--resume`` only.

    ``self_training`` (:mod:`medseg.training.pseudo_labels`) needs no teacher network in training: the
    checkpoint ``teacher`` (a model trained on the labelled cases) segments the unlabelled cases once, as
    ``medseg predict`` would, and they join training as labelled cases (the settings above other than
    ``unlabelled`` do not apply); ``labelled_share`` is the share of the cases drawn for training that are
    labelled ones (the rest pseudo-labelled; ``null``: every case alike, the labelled ones in proportion to
    their number). ``match_volumes`` (class tables) corrects a teacher that segments too little or too much:
    before labelling, per-label weights of its probabilities (``inference.class_weights``) are fitted so that
    each label's mean volume over the unlabelled cases equals its mean over the labelled training cases
    (class-balanced pseudo-labels, as in Zou et al., ECCV 2018).
    """

    unlabelled: str | None = None
    method: Literal["mean_teacher", "fixmatch", "self_training"] = "mean_teacher"
    weight: float = _ranged(1.0, 0)
    rampup_epochs: float = _ranged(5.0, 0)
    ema_decay: float = _ranged(0.99, 0, 1, open_high=True)
    batch_size: int = _ranged(2, 1)
    noise_std: float = _ranged(0.1, 0)
    threshold: float = _ranged(0.95, 0, 1)
    pseudo_label_loss: Literal["ce", "dice_ce"] = "ce"
    teacher: str | None = None
    labelled_share: float | None = _ranged(None, 0, 1, open_low=True, open_high=True)
    match_volumes: bool = False

    def __post_init__(self) -> None:
        _check_ranges(self, "semi_supervised")
        if self.labelled_share is not None and self.method != "self_training":
            raise ConfigError("semi_supervised.labelled_share is for method self_training")
        if self.match_volumes and self.method != "self_training":
            raise ConfigError("semi_supervised.match_volumes is for method self_training")
        if (self.method == "self_training") != (self.teacher is not None):
            raise ConfigError("semi_supervised.teacher (a checkpoint) is needed by, and only by, method self_training")
        if self.teacher is not None and self.unlabelled is None:
            raise ConfigError("semi_supervised.teacher labels the cases of semi_supervised.unlabelled, which is null")


@dataclass
class InferenceConfig:
    """Sliding-window inference. ``roi_size`` in voxels; ``threshold`` applies to sigmoid outputs.

    ``tiling``: ``tight`` (default) covers the foreground crop with few windows of ``roi_size`` to
    ``max_window`` voxels per axis (one window where the axis fits in ``max_window``) that overlap
    by at least ``min_overlap`` voxels (see :mod:`medseg.inference.tiling`); ``max_window`` ``null`` is
    1.25 x ``roi_size`` rounded down to the network's size divisor. ``max_window_voxels`` bounds one
    window's voxels (its working memory): over it, the windows are reshaped, down to half of
    ``roi_size`` per axis; ``null`` is the network's default (128³ for the DynUNet, else unbounded).
    ``monai`` is MONAI's ``sliding_window_inference`` stepping by ``roi_size * (1 - overlap)``.
    ``crop_foreground`` crops to the foreground box (``transforms.foreground_threshold`` or nonzero)
    before the windows, even when training did not, and writes background outside it. ``precision``
    ``bf16`` is used on the CPU only where it reports native bf16; fp32 otherwise (CUDA always uses
    fp16 autocast).
    ``keep_largest_component`` keeps only the largest connected piece of each foreground label
    (right for organs, wrong for tumours that may have several lesions). ``min_region_ml`` (region
    tables) maps a region name to a minimum predicted volume in mL: a smaller prediction of that
    region is relabelled as the enclosing region's own label (BraTS: ET below 0.5 mL becomes NCR,
    as in nnU-Net's BraTS 2020 post-processing, Isensee et al. 2021).
    ``min_component_ml`` maps a region name (region tables) or a label name (class tables) to a
    minimum volume in mL for each connected piece (26-connected) of its prediction: smaller pieces
    take the enclosing region's label (background for the outermost region and for class labels).
    It removes the stray specks that lesion-wise scores count as false positives (BraTS 2023 leaves
    reference lesions of at most 0.05 mL out). Applied before ``min_region_ml``.
    ``mirror_axes`` (test-time mirroring, as nnU-Net's default inference does) averages the logits
    over the image and its mirror images along these axes of the preprocessed volume (0, 1, 2 along
    ``transforms.orientation``, R, A, S by default): every combination, so ``[0, 1, 2]`` costs 8
    passes. Only for a model trained with flips (``transforms.flip_prob`` > 0, see
    :func:`check_mirroring`).
    ``temperature_scaling`` divides each model's logits by the temperature ``medseg calibrate`` fitted and
    stored in its checkpoint (Guo et al., ICML 2017), so that its probabilities are calibrated; the label
    map stays the same where ``threshold`` is 0.5 (classes: always), but for voxels where probabilities
    resampled back to the input's grid (``transforms.spacing``) change their order.
    ``uncertainty_band_mm``: the half-width in mm of the band around the predicted foreground's surface
    over which ``medseg predict --save-uncertainty`` averages the uncertainty per case
    (:mod:`medseg.inference.uncertainty`).
    ``dropout_samples`` (Monte Carlo dropout, Gal and Ghahramani, ICML 2016) adds, per model, this many
    passes with its dropout layers active (and nothing else changed) to the prediction's passes: their logits
    join the mean and the uncertainty maps (mutual information). Only for a network with dropout, on the
    ``torch`` backend (``auto`` picks it); each pass ``k`` draws its masks from seed ``dropout_seed + k``, so
    a prediction does not depend on the cases before it.
    ``class_weights`` (class tables): one weight per output, background first, in label-value order; a voxel
    takes the label whose probability times its weight is largest (a correction of the label decision for
    other class priors, Saerens et al., Neural Computation 2002; the probabilities and uncertainty maps written
    stay the model's). ``null``: the plain argmax. Self-training's ``semi_supervised.match_volumes`` fits them.
    """

    roi_size: list[int] = _ranged([96, 96, 96], 1)
    overlap: float = _ranged(0.5, 0, 1, open_high=True)
    mode: Literal["gaussian", "constant"] = "gaussian"
    sw_batch_size: int = _ranged(2, 1)
    threshold: float = _ranged(0.5, 0, 1, open_low=True, open_high=True)
    tiling: Literal["tight", "monai"] = "tight"
    min_overlap: int = _ranged(16, 0)
    max_window: list[int] | None = _ranged(None, 1)
    max_window_voxels: int | None = _ranged(None, 1)
    crop_foreground: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    keep_largest_component: bool = False
    min_region_ml: dict[str, float] = _ranged({}, 0, open_low=True)
    min_component_ml: dict[str, float] = _ranged({}, 0, open_low=True)
    mirror_axes: list[int] = _ranged([], 0, 2)
    temperature_scaling: bool = False
    uncertainty_band_mm: float = _ranged(2.0, 0, open_low=True)
    dropout_samples: int = _ranged(0, 0)
    dropout_seed: int = 0
    class_weights: list[float] | None = _ranged(None, 0, open_low=True)

    def __post_init__(self) -> None:
        _check_ranges(self, "inference")
        if len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise ConfigError(f"inference.mirror_axes names an axis twice: {self.mirror_axes}")


@dataclass
class PhantomConfig:
    """The synthetic data ``medseg demo`` generates: training/validation and a held-out test set
    from a different seed. ``shape`` is the NIfTI voxel grid, ``spacing`` isotropic in mm (BraTS);
    ``release`` (``"2024"``: post-treatment glioma with a resection cavity, labelled as ``brats2024-gli``) and
    ``spacing`` are BraTS-only. The CT demo takes ``shape: null`` for the CT
    generator's own grid (128 x 128 in-plane, 3.2-5 mm slices, per-case spacing)."""

    release: Literal["2021", "2023", "2024"] = "2021"
    train_cases: int = _ranged(30, 2)
    test_cases: int = _ranged(10, 1)
    train_seed: int = 1
    test_seed: int = 2
    shape: list[int] | None = _ranged([96, 96, 80], 1)
    spacing: float = _ranged(2.0, 0, open_low=True)

    def __post_init__(self) -> None:
        _check_ranges(self, "phantoms")


@dataclass
class Config:
    """A whole experiment."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    transforms: TransformConfig = field(default_factory=TransformConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    semi_supervised: SemiSupervisedConfig = field(default_factory=SemiSupervisedConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    phantoms: PhantomConfig = field(default_factory=PhantomConfig)

    def __post_init__(self) -> None:
        check_mirroring(self.inference, self.transforms)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint safe)."""
        return dataclasses.asdict(self)


def mirroring_allowed(transforms: TransformConfig) -> bool:
    """Whether a model trained with ``transforms`` may be mirrored at test time: only one trained with
    flips (``flip_prob`` > 0). Without them its mirror images are unlike anything it was trained on,
    and labels with a side (left and right kidney) would trade places."""
    return transforms.flip_prob > 0


def check_mirroring(inference: InferenceConfig, transforms: TransformConfig) -> None:
    """Refuse test-time mirroring (``inference.mirror_axes``) where :func:`mirroring_allowed` says no.

    Raises:
        ConfigError: naming both settings.
    """
    if inference.mirror_axes and not mirroring_allowed(transforms):
        raise ConfigError(
            f"inference.mirror_axes {inference.mirror_axes} needs a model trained with flips, but"
            " transforms.flip_prob is 0 (organs with a side would swap labels)"
        )


def bundled_configs() -> dict[str, Path]:
    """The configs shipped inside the package (``medseg/configs/*.yaml``), by name without suffix."""
    folder = importlib.resources.files("medseg") / "configs"
    return {Path(item.name).stem: Path(str(item)) for item in folder.iterdir() if item.name.endswith(".yaml")}


def resolve_config(path: str | Path) -> Path:
    """A config file: ``path`` as given when it exists, else the bundled config of that name.

    A bare name (``msd_hippocampus`` or ``msd_hippocampus.yaml``) that is not a file in the working
    directory names a config shipped with medseg, so a pip-installed medseg runs its configs from any
    folder.

    Raises:
        ConfigError: neither a file nor a bundled config (the message lists the bundled names).
    """
    path = Path(path)
    if path.is_file():
        return path
    bundled = bundled_configs()
    if path.parent == Path(".") and path.name.removesuffix(".yaml") in bundled:
        return bundled[path.name.removesuffix(".yaml")]
    raise ConfigError(f"config file not found (bundled configs: {', '.join(sorted(bundled))})", path=path)


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config file (or a bundled config by name), apply ``key.sub=value`` overrides, and validate it.

    Relative ``data.root``/``data.manifest``/``train.run_dir`` stay as written (relative to the
    working directory), matching how the CLI is used from the repository root.

    Raises:
        ConfigError: unreadable YAML, an unknown key or a value of the wrong type.
    """
    path = resolve_config(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=path) from None
    if not isinstance(raw, dict):
        raise ConfigError("top level must be a mapping", path=path)
    for item in overrides:
        apply_override(raw, item)
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=path) from None


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a nested dict into a :class:`Config`."""
    return _build(Config, raw, "")


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (``1e-3``, ``[1,2]``),
    without tags (``!!python/object``, ``!!str``).

    Raises:
        ConfigError: naming the key, for an item without ``=``, a path through a non-section, a tag or
            invalid YAML.
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    try:
        tags = ["".join(t.value) for t in yaml.scan(text) if isinstance(t, yaml.TagToken)]
        if tags:
            raise ConfigError(f"override {key.strip()!r}: YAML tags are not allowed in a value, got {tags[0]!r}")
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key.strip()!r}: invalid YAML value {text!r}: {exc}") from None


def override_inference(inference: InferenceConfig, overrides: typing.Sequence[str]) -> InferenceConfig:
    """``inference`` with ``inference.key=value`` overrides applied (the value parsed as YAML), validated
    like a config file's ``inference`` section: what ``medseg predict --set`` changes.

    Raises:
        ConfigError: an override outside ``inference``, an unknown key or a bad value.
    """
    if not overrides:
        return inference
    raw: dict[str, Any] = {"inference": dataclasses.asdict(inference)}
    for item in overrides:
        if not item.strip().startswith("inference."):
            raise ConfigError(f"override {item!r}: only inference.* settings can change after training")
        apply_override(raw, item)
    return _build(InferenceConfig, raw["inference"], "inference.")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}")
    values = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in raw.items()}
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in args:
            value = str(value)  # YAML reads `release: 2024` (and --set phantoms.release=2024) as a number
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value
