"""Self-training: a trained model labels the unlabelled cases, which then join training as labelled ones.

``semi_supervised.method: self_training`` (pseudo-labelling, Lee, ICML workshops 2013; in cardiac MR
segmentation Bai et al., MICCAI 2017): the checkpoint ``semi_supervised.teacher`` (typically a model trained on
the same labelled cases) segments each case of ``semi_supervised.unlabelled`` as ``medseg predict`` would (its
own inference settings: mirroring, largest component), and training then draws from the labelled and the
pseudo-labelled cases (alike, or a ``semi_supervised.labelled_share`` of the draws labelled), with the same
augmentation. The pseudo-labels are written once, under the run folder (``pseudo_labels/<case>.nii.gz``, on
each image's grid, atomically); a resumed run finds them there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from medseg.checkpoint import load_checkpoint
from medseg.data.manifest import ManifestCase
from medseg.errors import ConfigError, MedsegInputError
from medseg.inference import predict_folder
from medseg.io.atomic import atomic_output
from medseg.labels import LabelTable

PSEUDO_LABELS = "pseudo_labels"  # the folder under the run folder


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


def write_pseudo_labels(
    teacher: str | Path, cases: Sequence[ManifestCase], run_dir: str | Path, *, device: str = "auto"
) -> None:
    """Segment the unlabelled ``cases`` (whole image paths) with the checkpoint ``teacher`` into
    ``run_dir/pseudo_labels/<case>.nii.gz`` (:func:`~medseg.inference.predict_folder`: each label map on its
    image's grid, written atomically; cases already labelled there are kept, so an interrupted run resumes).

    Raises:
        MedsegInputError: a case could not be segmented (the reason is in the folder's ``summary.csv``).
    """
    out = Path(run_dir) / PSEUDO_LABELS
    listing = Path(run_dir) / f"{PSEUDO_LABELS}.json"
    with atomic_output(listing) as tmp:
        images = [{"id": c.id, "images": [str(Path(p).absolute()) for p in c.images]} for c in cases]
        tmp.write_text(json.dumps(images, indent=1))
    summary = predict_folder(model=teacher, input_path=None, cases_file=listing, output_dir=out, device=device)
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
