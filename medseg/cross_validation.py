"""Out-of-fold predictions: each training case segmented by the fold model that did not train on it
(``medseg predict --cross-validation``), as nnU-Net keeps its folds' validation predictions.

Together they are what a model's cross-validation score is computed on (``medseg evaluate`` against
the training set) and what post-processing is tuned on (``medseg tune-postprocessing``), without
touching held-out cases.

Each checkpoint's own config says which cases it validated on: its fold of the manifest it names,
or of its data root scanned with its layout, fold count and seed (the same split as long as the
folder holds the same cases; a manifest file keeps the split fixed). The checkpoints must share that
split, their label table and input channels, and be of different folds; a fold without a checkpoint
leaves its cases out, with a note.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medseg.batch import BatchSummary, check_output, run_batch, run_identity
from medseg.config import config_from_dict
from medseg.data.cases import InputCase, Shard, select_shard
from medseg.errors import MedsegInputError
from medseg.inference import Predictor
from medseg.io.writers import LabelFormat
from medseg.training import load_dataset_manifest


@dataclass(frozen=True)
class FoldModel:
    """One fold's checkpoint, loaded, with the split its config describes.

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
        CheckpointError: not a readable medseg checkpoint.
        MedsegInputError: its dataset or manifest cannot be read.
    """
    path = Path(path)
    predictor = Predictor.from_checkpoint(path, device=device, backend=backend, inference_overrides=inference_overrides)
    config = config_from_dict(predictor.checkpoint.config)
    if data_root is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(data_root)))
    manifest, root = load_dataset_manifest(config)
    fold = config.data.fold
    _, validation = manifest.split(fold)
    cases = tuple(InputCase(c.id, tuple(root / p for p in c.images)) for c in validation)
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


def predict_validation_folds(
    *,
    models: Sequence[str | Path],
    output_dir: str | Path,
    data_root: str | Path | None = None,
    fmt: LabelFormat = "nifti",
    save_probabilities: bool = False,
    shard: Shard | None = None,
    device: str = "auto",
    backend: str = "auto",
    inference_overrides: Sequence[str] = (),
    overwrite: bool = False,
    progress: str = "bar",
) -> BatchSummary:
    """Segment every fold's validation cases with that fold's checkpoint into one folder (see the
    module docstring), under :mod:`medseg.batch`'s contract: atomic outputs, resumable, a failed case
    does not stop the others, ``summary.csv``.

    Args:
        models: one checkpoint per fold (any subset of the folds).
        output_dir: where the label maps and the summary go.
        data_root: as for :func:`load_fold_model`.
        fmt, save_probabilities, shard, device, backend, inference_overrides, overwrite, progress: as
            for :func:`~medseg.batch.predict_folder`.

    Raises:
        MedsegInputError: as :func:`check_folds`, or an unreadable dataset.
        CheckpointError: a checkpoint that is not a readable medseg checkpoint.
    """
    output_dir = check_output(output_dir, fmt)
    loaded = [
        load_fold_model(m, data_root=data_root, device=device, backend=backend, inference_overrides=inference_overrides)
        for m in models
    ]
    check_folds(loaded)
    folds = {int(fold) for _, fold in loaded[0].split}
    missing = sorted(folds - {m.fold for m in loaded})
    if missing:
        print(f"medseg: note: no checkpoint for fold(s) {missing}; their cases are left out", file=sys.stderr)
    loaded.sort(key=lambda m: m.fold)
    inputs = [case for m in loaded for case in m.validation]
    model_of = {case.id: m.predictor for m in loaded for case in m.validation}
    identity = hashlib.sha256(
        json.dumps([[m.fold, run_identity(m.predictor, fmt)] for m in loaded]).encode("utf-8")
    ).hexdigest()
    return run_batch(
        [(case, model_of[case.id]) for case in select_shard(inputs, shard)],
        inputs=inputs,
        output_dir=output_dir,
        identity=identity,
        fmt=fmt,
        save_probabilities=save_probabilities,
        shard=shard,
        overwrite=overwrite,
        progress=progress,
    )
