"""Semi-supervised training: a teacher network labels unlabelled patches for the network being trained.

The trainer's network is the *student*; the *teacher* is a copy whose weights follow the student's as an
exponential moving average (:func:`ema_update`). Each step the student and the teacher see the same
unlabelled patches, and a term that makes the student agree with the teacher joins the supervised loss with
a weight that ramps up (:func:`sigmoid_rampup`). Two published methods (``semi_supervised.method``):

- ``mean_teacher`` (Tarvainen and Valpola, NeurIPS 2017): both see the patch under different Gaussian
  noise; the term is the mean squared difference of their probabilities (:func:`consistency_loss`).
- ``fixmatch`` (Sohn et al., NeurIPS 2020, with the teacher's averaged weights): the teacher sees the patch
  as the loader augmented it (the *weak* view), the student a *strong* view of it (:func:`strong_view`:
  intensity scale, shift, blur, noise and a cut-out box, voxel for voxel aligned); the term is the
  cross-entropy (``pseudo_label_loss: dice_ce``: plus a soft Dice) of the student against the teacher's
  hard labels where the teacher is confident (:func:`pseudo_label_loss`).

:class:`Teacher` holds the teacher and the unlabelled cases' loader; the settings are
:class:`~medseg.config.SemiSupervisedConfig` (``semi_supervised:`` in a config).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import monai.transforms as mt
import torch
from monai.data import CacheDataset
from monai.losses import MaskedDiceLoss
from monai.utils import convert_to_tensor
from torch import nn

from medseg.config import Config, SemiSupervisedConfig
from medseg.data.cases import discover_cases
from medseg.data.manifest import ManifestCase, load_manifest
from medseg.distributed import DistContext
from medseg.errors import ConfigError, MedsegInputError
from medseg.keys import CASE, IMAGE
from medseg.training.sampling import EpochLoader
from medseg.transforms import unlabelled_pipeline


def sigmoid_rampup(epochs: float, rampup_epochs: float) -> float:
    """The consistency weight's factor after ``epochs`` epochs of training (fractional, counted per step):
    exp(-5 (1 - t)²) with t = min(``epochs`` / ``rampup_epochs``, 1); 1 once ramped up, or with no ramp-up
    (``rampup_epochs`` 0). It starts at exp(-5) ≈ 0.0067."""
    if rampup_epochs <= 0:
        return 1.0
    t = min(max(epochs, 0.0) / rampup_epochs, 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def ema_decay_at(step: int, decay: float) -> float:
    """The averaging factor a of optimizer step ``step`` (from 1): min(``decay``, 1 - 1 / (step + 1)), so
    that the first steps' teacher is not held back by its random initial weights."""
    return min(decay, 1.0 - 1.0 / (step + 1))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, *, decay: float) -> None:
    """``teacher``'s floating-point parameters become ``decay`` x teacher + (1 - ``decay``) x student, in
    place; its buffers (normalisation statistics, counters) become the student's. Both modules must have
    the same architecture."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


def full_resolution(logits: torch.Tensor, spatial_dims: int = 3) -> torch.Tensor:
    """``(B, C, X, Y, Z)`` logits as they are; a deep-supervision output ``(B, H, C, X, Y, Z)`` (a network in
    training mode) as its full-resolution head 0."""
    return logits[:, 0] if logits.dim() == spatial_dims + 3 else logits


def consistency_loss(student: torch.Tensor, teacher: torch.Tensor, *, regions: bool) -> torch.Tensor:
    """The mean over batch, outputs and voxels of the squared difference between the student's and the
    teacher's probabilities: sigmoid per output for region tables, softmax over outputs for class tables.

    Args:
        student: logits ``(B, C, X, Y, Z)``; the gradient flows into them.
        teacher: logits of the same shape; a target (detached).
        regions: whether the outputs are independent regions (sigmoid) rather than classes (softmax).
    """
    student, teacher = student.float(), teacher.detach().float()  # fp32 under autocast too
    if regions:
        return nn.functional.mse_loss(torch.sigmoid(student), torch.sigmoid(teacher))
    return nn.functional.mse_loss(torch.softmax(student, dim=1), torch.softmax(teacher, dim=1))


def pseudo_label_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, regions: bool, threshold: float, dice: bool = False
) -> torch.Tensor:
    """The cross-entropy of the student's logits against the teacher's hard labels, over the voxels where
    the teacher's probability of its label is at least ``threshold``, divided by all voxels (so that an
    unsure voxel counts as zero, as in FixMatch); with ``dice``, plus MONAI's masked soft Dice loss over the
    confident voxels (every output, background included, averaged over outputs and patches, as the
    supervised ``dice_ce``), which weighs a small structure's voxels as much as the background's.

    Args:
        student: logits ``(B, C, X, Y, Z)``; the gradient flows into them.
        teacher: logits of the same shape; a target (detached).
        regions: outputs are independent regions (sigmoid, labels p ≥ 0.5 per output, binary cross-entropy
            averaged over outputs; a voxel counts for the Dice term where every output is confident) rather
            than classes (softmax, the label its argmax).
        threshold: the confidence below which a voxel teaches nothing, in [0, 1].
        dice: add the Dice term.
    """
    student, teacher = student.float(), teacher.detach().float()
    if regions:
        probability = torch.sigmoid(teacher)
        confident = torch.maximum(probability, 1.0 - probability) >= threshold
        target = (probability >= 0.5).float()
        loss = nn.functional.binary_cross_entropy_with_logits(student, target, reduction="none")
        mask = confident.all(dim=1, keepdim=True)
    else:
        confidence, target = torch.softmax(teacher, dim=1).max(dim=1)
        confident = confidence >= threshold
        loss = nn.functional.cross_entropy(student, target, reduction="none")
        target, mask = target.unsqueeze(1), confident.unsqueeze(1)
    cross_entropy = (loss * confident).mean()
    if not dice:
        return cross_entropy
    masked_dice = MaskedDiceLoss(sigmoid=regions, softmax=not regions, to_onehot_y=not regions)
    return cross_entropy + masked_dice(student, target, mask=mask.float())


def strong_view(patch_size: Sequence[int], noise_std: float) -> mt.Compose:
    """FixMatch's strong augmentation of one patch ``(C, *patch_size)`` in normalised intensity units that
    leaves every voxel where it is (so that the teacher's labels of the weak view apply to it), from MONAI:
    intensity x (1 + U(-0.3, 0.3)), then + U(-0.3, 0.3); half the time a Gaussian blur of σ 0.5 to 1 voxel;
    Gaussian noise of a standard deviation up to ``noise_std``; and a cut-out, one box of 1/8 to 1/2 of the
    patch along each axis set to 0 (the normalised mean). Seed it with ``set_random_state``."""
    smallest = [max(1, n // 8) for n in patch_size]
    largest = [max(1, n // 2) for n in patch_size]
    return mt.Compose(
        [
            mt.RandScaleIntensity(factors=0.3, prob=1.0),
            mt.RandShiftIntensity(offsets=0.3, prob=1.0),
            mt.RandGaussianSmooth(sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.5),
            mt.RandGaussianNoise(prob=1.0, std=noise_std),
            mt.RandCoarseDropout(holes=1, spatial_size=smallest, max_spatial_size=largest, fill_value=0.0, prob=1.0),
        ]
    )


def unlabelled_cases(
    source: str | Path, *, channels: Sequence[str], data_root: str | Path | None
) -> list[ManifestCase]:
    """The unlabelled cases of ``semi_supervised.unlabelled``, their image paths made whole.

    ``source`` is a medseg manifest (a ``.json`` file: its cases without a label, paths from the root it
    names, else ``data_root``) or anything :func:`~medseg.data.cases.discover_cases` reads (a folder of
    images, nnU-Net channel files, BraTS case folders, an MSD root's ``imagesTs/``).

    Raises:
        MedsegInputError: the source is missing, holds no unlabelled case, or has another number of channels.
    """
    path = Path(source)
    if path.suffix == ".json":
        manifest = load_manifest(path)
        root = manifest.root if manifest.root is not None else data_root
        if root is None:
            raise MedsegInputError('the manifest names no "root" and data.root is null', path=path)
        if len(manifest.channels) != len(channels):
            raise MedsegInputError(
                f"has {len(manifest.channels)} channel(s) ({', '.join(manifest.channels)}); the labelled cases have"
                f" {len(channels)} ({', '.join(channels)})",
                path=path,
            )
        cases = [
            ManifestCase(c.id, tuple(str(Path(root) / p) for p in c.images), None, c.patient, c.fold)
            for c in manifest.cases
            if c.label is None
        ]
        if not cases:
            raise MedsegInputError("holds no unlabelled case (a case without a label)", path=path)
        return cases
    found = discover_cases(path, channels=channels)  # raises where it finds no case
    return [ManifestCase(c.id, tuple(str(p) for p in c.images), None, c.id, -1) for c in found]


def require_apart(unlabelled: Sequence[ManifestCase], validation: Sequence[ManifestCase], *, root: Path) -> None:
    """Refuse unlabelled cases that are validation cases (the same image files): training would see
    the cases it is scored on.

    Raises:
        ConfigError: naming the first such case.
    """
    validation_files = {os.path.realpath(root / p) for c in validation for p in c.images}
    for case in unlabelled:
        if any(os.path.realpath(p) in validation_files for p in case.images):
            raise ConfigError(
                f"semi_supervised.unlabelled: case {case.id!r} is a validation case ({case.images[0]}):"
                " leave the validation fold's images out of the unlabelled cases"
            )


class Teacher:
    """The teacher network and the unlabelled cases' loader of one training run, for either method.

    Each epoch draws ``iterations_per_epoch`` batches of ``semi_supervised.batch_size`` unlabelled cases
    (with replacement, shared among DDP processes as the labelled ones are), their order and augmentation
    seeded from (seed, epoch, rank) through :meth:`seed_epoch`, so that a resumed run draws what an
    uninterrupted one would.
    """

    def __init__(
        self, config: Config, ctx: DistContext, *, student: nn.Module, cases: Sequence[ManifestCase], regions: bool
    ) -> None:
        self.settings: SemiSupervisedConfig = config.semi_supervised
        self.regions = regions
        self.iterations = config.train.iterations_per_epoch
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        items: list[dict[str, Any]] = [{IMAGE: list(c.images), CASE: c.id} for c in cases]
        self.dataset = CacheDataset(
            items,
            unlabelled_pipeline(config.transforms),
            cache_rate=config.data.cache_rate,
            num_workers=1,
            progress=False,
        )
        self.epochs = EpochLoader(
            self.dataset,
            iterations=self.iterations,
            batch_size=self.settings.batch_size,
            ctx=ctx,
            seed=config.seed,
            num_workers=config.data.num_workers,
        )
        self.strong = strong_view(config.transforms.patch_size, self.settings.noise_std)

    def seed_epoch(self, epoch: int, seed: int) -> None:
        """Draw epoch ``epoch``'s unlabelled batches from ``seed`` and its strong views from ``seed + 5``."""
        self.epochs.seed_epoch(epoch, seed)
        self.strong.set_random_state(seed=seed + 5)

    def batches(self) -> Iterator[torch.Tensor]:
        """This epoch's unlabelled image batches ``(B x samples_per_case, C, *patch_size)``."""
        for batch in self.epochs.loader:
            yield batch[IMAGE]

    def noisy(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` plus Gaussian noise of ``noise_std``, clipped at two standard deviations (torch's
        global RNG, which the trainer seeds per epoch)."""
        std = self.settings.noise_std
        return image + (torch.randn_like(image) * std).clamp(-2 * std, 2 * std)

    def student_view(self, image: torch.Tensor) -> torch.Tensor:
        """What the student sees of the unlabelled patches ``image`` ``(B, C, *patch_size)``: the mean
        teacher's noisy view, or FixMatch's strong view of each patch (:func:`strong_view`)."""
        if self.settings.method == "mean_teacher":
            return self.noisy(image)
        return torch.stack([convert_to_tensor(self.strong(patch), track_meta=False) for patch in image])

    def weight(self, epoch: int, step: int) -> float:
        """The consistency term's weight at step ``step`` (from 0) of epoch ``epoch`` (from 0)."""
        return self.settings.weight * sigmoid_rampup(epoch + step / self.iterations, self.settings.rampup_epochs)

    def consistency(self, student_logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The term that makes the student's logits on :meth:`student_view` of ``image`` agree with the
        teacher (without gradients): for the mean teacher :func:`consistency_loss` against its logits on
        ``image`` under other noise (in training mode, as the student); for FixMatch
        :func:`pseudo_label_loss` against its logits on ``image`` itself (in evaluation mode)."""
        fixmatch = self.settings.method == "fixmatch"
        self.teacher.train(not fixmatch)
        with torch.no_grad():
            teacher_logits = self.teacher(image if fixmatch else self.noisy(image))
        student_logits, teacher_logits = full_resolution(student_logits), full_resolution(teacher_logits)
        if fixmatch:
            return pseudo_label_loss(
                student_logits,
                teacher_logits,
                regions=self.regions,
                threshold=self.settings.threshold,
                dice=self.settings.pseudo_label_loss == "dice_ce",
            )
        return consistency_loss(student_logits, teacher_logits, regions=self.regions)

    def update(self, student: nn.Module, step: int) -> None:
        """Move the teacher towards ``student`` after optimizer step ``step`` (from 1; :func:`ema_decay_at`)."""
        ema_update(self.teacher, student, decay=ema_decay_at(step, self.settings.ema_decay))
