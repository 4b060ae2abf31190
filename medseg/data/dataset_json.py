"""The one ``dataset.json`` parser, for the layout scanners (training), case discovery and evaluation alike.

Two styles are read, told apart by their ``"labels"``:

- Medical Segmentation Decathlon, value -> name, channels under ``"modality"``::

    {"name": "Liver", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver"},
     "training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}],
     "test": ["./imagesTs/liver_132.nii.gz"]}

- nnU-Net v2, name -> value, channels under ``"channel_names"``::

    {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 30,
     "file_ending": ".nii.gz"}

Every error is a :class:`~medseg.errors.MedsegInputError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medseg.errors import MedsegInputError
from medseg.io.jsonfile import read_json

DATASET_JSON = "dataset.json"

Style = Literal["msd", "nnunet"]

CHANNEL_KEYS: dict[Style, str] = {"msd": "modality", "nnunet": "channel_names"}
"""Where each style names the input channels."""


@dataclass(frozen=True)
class DatasetJson:
    """A checked ``dataset.json``.

    Attributes:
        path: the file.
        style: ``"msd"`` or ``"nnunet"``.
        name: its ``"name"``, else the dataset folder's name.
        labels: label value -> name, ascending, background (0) included.
        data: the whole JSON object, for the keys of one layout (``"file_ending"``, ...).
    """

    path: Path
    style: Style
    name: str
    labels: dict[int, str]
    data: dict[str, Any]

    @property
    def channels(self) -> tuple[str, ...]:
        """The input channel names, in key order (``"modality"`` for MSD, ``"channel_names"`` for nnU-Net).

        Raises:
            MedsegInputError: missing, empty, or keys that are not ``"0"``, ``"1"``, ... without gaps.
        """
        key, path = CHANNEL_KEYS[self.style], self.path
        mapping = self.data.get(key)
        if not isinstance(mapping, dict) or not mapping:
            raise MedsegInputError(f'dataset.json needs a non-empty "{key}" object', path=path)
        try:
            items = sorted((int(k), str(v)) for k, v in mapping.items())
        except ValueError:
            raise MedsegInputError(f'dataset.json "{key}" keys must be integers "0", "1", ...', path=path) from None
        if [k for k, _ in items] != list(range(len(items))):
            raise MedsegInputError(f'dataset.json "{key}" keys must be 0..{len(items) - 1}', path=path)
        return tuple(v for _, v in items)

    def cases(self, key: Literal["training", "test"]) -> list[Any]:
        """The ``"training"`` or ``"test"`` list (MSD), empty when absent.

        Raises:
            MedsegInputError: present but not a list.
        """
        entries = self.data.get(key, [])
        if not isinstance(entries, list):
            raise MedsegInputError(f'dataset.json "{key}" must be a list', path=self.path)
        return entries


def _msd_labels(labels: dict[str, Any], path: Path) -> dict[int, str]:
    table: dict[int, str] = {}
    for key, name in labels.items():
        try:
            value = int(key)
        except ValueError:
            raise MedsegInputError(
                f'dataset.json "labels" keys must be integer label values (MSD: value -> name), got {key!r}', path=path
            ) from None
        if not isinstance(name, str) or not name:
            raise MedsegInputError(f"label {key!r} must map to a name, got {name!r}", path=path)
        if value in table:
            raise MedsegInputError(f"labels {table[value]!r} and {name!r} share value {value}", path=path)
        table[value] = name
    return table


def _nnunet_labels(labels: dict[str, Any], path: Path) -> dict[int, str]:
    table: dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise MedsegInputError(f"region-based label {name!r}: {value} is not supported (use one value)", path=path)
        if isinstance(value, bool) or not isinstance(value, int):
            raise MedsegInputError(
                f"label {name!r} must map to an integer value (nnU-Net: name -> value), got {value!r}", path=path
            )
        if value in table:
            raise MedsegInputError(f"labels {table[value]!r} and {name!r} share value {value}", path=path)
        table[value] = str(name)
    return table


def dataset_json_from_dict(data: Any, *, path: str | Path, style: Style | None = None) -> DatasetJson:
    """Check the parsed JSON of a ``dataset.json`` read from ``path`` (named in errors).

    Args:
        data: the parsed JSON.
        path: the file it was read from.
        style: ``"msd"`` or ``"nnunet"`` to insist on one; ``None``: nnU-Net when every label maps to a
            number (or a list of them), MSD otherwise.

    Raises:
        MedsegInputError: not a JSON object; ``"labels"`` missing, empty, not of the style, with a
            repeated value, or without background 0.
    """
    path = Path(path)
    if not isinstance(data, dict):
        raise MedsegInputError("dataset.json must hold a JSON object", path=path)
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise MedsegInputError('dataset.json needs a non-empty "labels" object', path=path)
    if style is None:
        numbers = all(isinstance(v, (int, list)) and not isinstance(v, bool) for v in labels.values())
        style = "nnunet" if numbers else "msd"
    table = _nnunet_labels(labels, path) if style == "nnunet" else _msd_labels(labels, path)
    if 0 not in table:
        raise MedsegInputError('dataset.json "labels" has no background value 0', path=path)
    name = str(data.get("name") or path.absolute().parent.name)
    return DatasetJson(path, style, name, dict(sorted(table.items())), data)


def read_dataset_json(path: str | Path, *, style: Style | None = None) -> DatasetJson:
    """Read and check a ``dataset.json`` (see :func:`dataset_json_from_dict`).

    Args:
        path: the file (a ``.json``), or the dataset folder that holds a ``dataset.json``.
        style: as in :func:`dataset_json_from_dict`.

    Raises:
        MedsegInputError: naming the file: missing, not valid JSON, or malformed; or naming the
            dataset folder when there is none.
    """
    path = Path(path)
    if path.suffix.lower() != ".json":
        if not path.is_dir():
            raise MedsegInputError("dataset folder not found", path=path)
        path = path / DATASET_JSON
    return dataset_json_from_dict(read_json(path, what="dataset.json"), path=path, style=style)
