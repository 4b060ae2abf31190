"""Self-training: a trained model labels the unlabelled cases, which then join training as labelled ones.

``semi_supervised.method: self_training`` (pseudo-labelling, Lee, ICML workshops 2013; in cardiac MR
segmentation Bai et al., MICCAI 2017): the checkpoint ``semi_supervised.teacher`` (typically a model trained on
the same labelled cases) segments each case of ``semi_supervised.unlabelled`` as ``medseg predict`` would (its
own inference settings: mirroring, largest component), and training then draws from the labelled and the
pseudo-labelled cases (alike, or a ``semi_supervised.labelled_share`` of the draws labelled), with the same
augmentation. The pseudo-labels are written once, under the run folder (``pseudo_labels/<case>.nii.gz``, on
each image's grid, atomically); a resumed run finds them there.

``semi_supervised.match_volumes`` (class tables) first fits the teacher's ``inference.class_weights``
(:func:`fit_class_weights`) so that each label's mean volume over the unlabelled cases equals its mean over the
labelled training cases (:func:`mean_volumes_ml`): a teacher trained on few cases tends to leave out the voxels
it is unsure of (on real hippocampus MR, ``docs/benchmarks/real-data.md``), and its plain labels would teach
that.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.checkpoint import load_checkpoint
from medseg.data.cases import InputCase
from medseg.data.manifest import ManifestCase
from medseg.errors import ConfigError, MedsegInputError
from medseg.inference import Predictor, predict_folder
from medseg.inference.predictor import read_case
from medseg.inference.quality import volumes_ml
from medseg.io import read_image
from medseg.io.atomic import atomic_output
from medseg.labels import LabelTable
from medseg.progress import track, write

PSEUDO_LABELS = "pseudo_labels"  # the folder under the run folder
FIT_VOXELS = 2**16
"""Voxels of an unlabelled case, at most, that :func:`fit_class_weights` sees (a random subsample)."""


def check_teacher(path: str | Path, *, table: LabelTable, channels: Sequence[str]) -> None:
    """Refuse a teacher checkpoint whose labels or channel count differ from the training data's.

    Raises:
        CheckpointError: ``path`` is not a readable medseg checkpoint.
        ConfigError: naming what differs.
    """
    teacher = load_checkpoint(path, training=False)
    if teacher.label_table.labels != table.labels or teacher.label_table.kind != table.kind:
        raise ConfigError(
            f"semi_supervised.teacher {path}: its labels {teacher.label_table.labels} are not the training"
            f" data's {table.labels}"
        )
    if len(teacher.channels) != len(channels):
        raise ConfigError(
            f"semi_supervised.teacher {path}: it reads {len(teacher.channels)} channel(s), the training data"
            f" has {len(channels)}"
        )


def mean_volumes_ml(cases: Sequence[ManifestCase], root: str | Path, table: LabelTable) -> np.ndarray:
    """``(C_out,)`` the mean volume in mL over the labelled ``cases`` (label paths relative to ``root``) of each
    class output, in label-value order (background's is 0: not counted)."""
    names = {value: str(value) for value in table.labels}
    total = np.zeros(len(names))
    for case in cases:
        label = read_image(Path(root) / str(case.label))
        volumes = volumes_ml(label.array, label.geometry.spacing, names)
        total += [volumes.get(names[value], 0.0) for value in sorted(names)]
    return total / max(len(cases), 1)


def fit_class_weights(
    probabilities: np.ndarray, voxel_ml: np.ndarray, target_ml: np.ndarray, *, cases: int, sweeps: int = 20
) -> list[float]:
    """Class weights ``w`` (background's 1) such that labelling each voxel with the class of the largest
    ``w_k p_k`` gives each foreground class ``k`` a mean volume per case of ``target_ml[k]``.

    Args:
        probabilities: ``(C_out, N)`` class probabilities of N voxels, pooled over ``cases`` cases.
        voxel_ml: ``(N,)`` the volume in mL each voxel stands for.
        target_ml: ``(C_out,)`` the mean volume per case wanted of each class (background's is ignored).
        cases: how many cases the voxels come from.
        sweeps: at most this many passes over the foreground classes.

    Coordinate-wise and exact: with the other weights fixed, voxel ``i`` takes class ``k`` once ``w_k`` exceeds
    ``max_(j != k) w_j p_j / p_k`` at ``i``, so sorting those thresholds gives the ``w_k`` whose volume is the
    target (halfway, geometrically, between the thresholds around it). Passes repeat until no weight changes
    by more than 0.1 %.
    """
    weights = np.ones(len(probabilities))
    tiny = np.finfo(np.float64).tiny
    for _ in range(sweeps):
        before = weights.copy()
        for k in range(1, len(probabilities)):
            scores = weights[:, None] * probabilities
            scores[k] = 0.0
            thresholds = scores.max(0) / np.maximum(probabilities[k], tiny)
            order = np.argsort(thresholds, kind="stable")
            taken = int(np.searchsorted(np.cumsum(voxel_ml[order]), target_ml[k] * cases))
            low = thresholds[order[taken - 1]] if taken > 0 else thresholds[order[0]] / 2
            high = thresholds[order[taken]] if taken < len(order) else low * 2
            low, high = (min(max(t, 1e-6), 1e6) for t in (low, high))
            weights[k] = math.sqrt(low * high)
        if np.all(np.abs(np.log(weights / before)) < 1e-3):
            break
    return [float(f"{w:.6g}") for w in weights]


def _volume_weights(
    teacher: str | Path, cases: Sequence[ManifestCase], target_ml: np.ndarray, *, device: str
) -> list[float]:
    """The teacher's ``inference.class_weights`` that give its labels of ``cases`` the mean volumes
    ``target_ml`` (:func:`fit_class_weights` on at most :data:`FIT_VOXELS` voxels of each case)."""
    predictor = Predictor.from_checkpoint(teacher, device=device)
    if predictor.table.kind == "regions":
        raise ConfigError("semi_supervised.match_volumes is for class label tables; the teacher's has regions")
    samples, voxel_ml = [], []
    for case in track(cases, desc="pseudo-label volumes", unit="case", leave=False):
        image = read_case(InputCase(case.id, tuple(Path(p).absolute() for p in case.images)))
        probs = predictor.predict_probabilities(image).reshape(len(predictor.table.labels), -1)
        voxels = probs.shape[1]
        if voxels > FIT_VOXELS:  # a random subsample (a regular one could fall in step with the network's strides)
            probs = probs[:, np.sort(np.random.default_rng(0).choice(voxels, FIT_VOXELS, replace=False))]
        samples.append(probs)
        stands_for = float(np.prod(image.geometry.spacing)) / 1000.0 * voxels / probs.shape[1]
        voxel_ml.append(np.full(probs.shape[1], stands_for))
    return fit_class_weights(
        np.concatenate(samples, axis=1).astype(np.float64), np.concatenate(voxel_ml), target_ml, cases=len(cases)
    )


def write_pseudo_labels(
    teacher: str | Path,
    cases: Sequence[ManifestCase],
    run_dir: str | Path,
    *,
    device: str = "auto",
    target_ml: np.ndarray | None = None,
) -> None:
    """Segment the unlabelled ``cases`` (whole image paths) with the checkpoint ``teacher`` into
    ``run_dir/pseudo_labels/<case>.nii.gz`` (:func:`~medseg.inference.predict_folder`: each label map on its
    image's grid, written atomically; cases already labelled there are kept, so an interrupted run resumes).
    With ``target_ml`` (``(C_out,)`` mean volumes in mL, :func:`mean_volumes_ml`) the teacher labels with the
    ``inference.class_weights`` that give its labels those mean volumes (the fit is deterministic: a resumed
    run fits the same weights).

    Raises:
        MedsegInputError: a case could not be segmented (the reason is in the folder's ``summary.csv``).
        ConfigError: ``target_ml`` for a teacher with a region table.
    """
    out = Path(run_dir) / PSEUDO_LABELS
    listing = Path(run_dir) / f"{PSEUDO_LABELS}.json"
    with atomic_output(listing) as tmp:
        images = [{"id": c.id, "images": [str(Path(p).absolute()) for p in c.images]} for c in cases]
        tmp.write_text(json.dumps(images, indent=1))
    overrides = []
    if target_ml is not None:
        weights = _volume_weights(teacher, cases, target_ml, device=device)
        volumes = ", ".join(f"{v:.3g}" for v in target_ml[1:])
        write(f"self-training: the teacher labels with class weights {weights} (mean volumes {volumes} mL)")
        overrides = [f"inference.class_weights={weights}"]
    summary = predict_folder(
        model=teacher,
        input_path=None,
        cases_file=listing,
        output_dir=out,
        device=device,
        inference_overrides=overrides,
    )
    if summary.failed:
        raise MedsegInputError(
            f"self-training: the teacher could not segment {summary.failed} unlabelled case(s); see"
            f" {summary.summary_path}",
            path=teacher,
        )


def pseudo_labelled(cases: Sequence[ManifestCase], run_dir: str | Path) -> list[ManifestCase]:
    """``cases`` with the label maps :func:`write_pseudo_labels` wrote for them under ``run_dir``, every path
    absolute (a relative one would be read from the labelled cases' root)."""
    out = Path(run_dir).absolute() / PSEUDO_LABELS
    return [
        ManifestCase(
            c.id, tuple(str(Path(p).absolute()) for p in c.images), str(out / f"{c.id}.nii.gz"), c.patient, c.fold
        )
        for c in cases
    ]
