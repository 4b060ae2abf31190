"""Out-of-fold predictions: each training case segmented by the fold model that did not train on it
(``medseg predict --cross-validation``), as nnU-Net keeps its folds' validation predictions.

Together they are what a model's cross-validation score is computed on (``medseg evaluate`` against
the training set) and what post-processing is tuned on (``medseg tune-postprocessing``), without
touching held-out cases.

Each checkpoint keeps the manifest it was trained on (cases and folds); its config's ``data.fold``
says which of them it validated on, and ``data.root`` where their files are. (A checkpoint written
before medseg kept the manifest finds its split again from its config: the manifest file it names,
or its data root scanned with its layout, fold count and seed, the same split as long as the folder
holds the same cases.) The checkpoints must share that split, their label table and input channels,
and be of different folds; a fold without a checkpoint leaves its cases out, with a note.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medseg.config import config_from_dict
from medseg.data.cases import InputCase
from medseg.data.manifest import dataset_root, manifest_from_dict
from medseg.errors import CheckpointError, ConfigError, MedsegInputError
from medseg.inference import Predictor
from medseg.inference.batch import Batch, run_identity
from medseg.io.writers import LabelFormat
from medseg.training.trainer import load_dataset_manifest


@dataclass(frozen=True)
class FoldModel:
    """One fold's checkpoint, loaded, with the split it was trained on.

    Attributes:
        path: the checkpoint file.
        predictor: its :class:`~medseg.inference.Predictor`.
        fold: the fold it validated on.
        split: every case id of the dataset with its fold, in the manifest's order.
        validation: the cases of ``fold``, their images under the data root.
    """

    path: Path
    predictor: Predictor
    fold: int
    split: tuple[tuple[str, int], ...]
    validation: tuple[InputCase, ...]


def load_fold_model(
    path: str | Path,
    *,
    data_root: str | Path | None = None,
    device: str = "auto",
    backend: str = "auto",
    inference_overrides: Sequence[str] = (),
) -> FoldModel:
    """Load a checkpoint and find the cases it validated on.

    Args:
        path: a checkpoint written by ``medseg train``.
        data_root: the dataset's folder, when it is no longer where the checkpoint's config says.
        device, backend, inference_overrides: as for :meth:`~medseg.inference.Predictor.from_checkpoint`.

    Raises:
        CheckpointError: not a readable medseg checkpoint, or one whose training config does not load.
        MedsegInputError: its dataset or manifest cannot be read, or an image of its validation cases
            is not found.
    """
    path = Path(path)
    predictor = Predictor.from_checkpoint(path, device=device, backend=backend, inference_overrides=inference_overrides)
    try:
        config = config_from_dict(predictor.checkpoint.config)
    except ConfigError as exc:
        raise CheckpointError(f"its training config does not load: {exc.reason}", path=path) from None
    if data_root is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(data_root)))
    if predictor.checkpoint.manifest is not None:  # the split it was trained on, whatever the folder holds now
        manifest = manifest_from_dict(predictor.checkpoint.manifest, path=path)
        root = dataset_root(manifest, config.data.root)
    else:
        manifest, root = load_dataset_manifest(config)
    fold = config.data.fold
    _, validation = manifest.split(fold)
    cases = tuple(InputCase(c.id, tuple(root / p for p in c.images)) for c in validation)
    absent = next((image for case in cases for image in case.images if not image.is_file()), None)
    if absent is not None:
        raise MedsegInputError(f"not found: the dataset of {path} is not under {root}; give --data-root", path=absent)
    split = tuple((c.id, c.fold) for c in manifest.cases)
    return FoldModel(path, predictor, fold, split, cases)


def check_folds(models: Sequence[FoldModel]) -> None:
    """Raise :class:`MedsegInputError`, naming the checkpoint, unless ``models`` are of different folds
    of one split, with one label table and one list of input channels."""
    if not models:
        raise MedsegInputError("give at least one checkpoint")
    first = models[0]
    seen: dict[int, Path] = {}
    for model in models:
        if model.fold in seen:
            raise MedsegInputError(f"validated on fold {model.fold}, as {seen[model.fold]} did", path=model.path)
        seen[model.fold] = model.path
        if model.split != first.split:
            raise MedsegInputError(f"was trained on another dataset or split than {first.path}", path=model.path)
        if model.predictor.table != first.predictor.table:
            raise MedsegInputError(f"has another label table than {first.path}", path=model.path)
        if model.predictor.channels != first.predictor.channels:
            raise MedsegInputError(f"takes other input channels than {first.path}", path=model.path)


def out_of_fold_batch(folds: Sequence[FoldModel], *, fmt: LabelFormat = "nifti") -> Batch:
    """Every fold's validation cases, each with its fold's predictor, for :func:`~medseg.inference.batch.run_batch`
    (see the module docstring); a note on stderr names the folds without a checkpoint.

    Args:
        folds: one loaded checkpoint per fold (any subset of the folds; see :func:`load_fold_model`).
        fmt: the label-map format, part of the run's identity.

    Raises:
        MedsegInputError: as :func:`check_folds`.
    """
    check_folds(folds)
    missing = sorted({fold for _, fold in folds[0].split} - {f.fold for f in folds})
    if missing:
        print(f"medseg: note: no checkpoint for fold(s) {missing}; their cases are left out", file=sys.stderr)
    ordered = sorted(folds, key=lambda f: f.fold)
    identity = json.dumps([[f.fold, run_identity(f.predictor, fmt)] for f in ordered])
    jobs = tuple((case, f.predictor) for f in ordered for case in f.validation)
    return Batch(jobs, folds[0].predictor.table, hashlib.sha256(identity.encode("utf-8")).hexdigest())
