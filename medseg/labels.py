"""Label and region tables: the single source of truth for what label values mean.

A *label map* stores one integer per voxel (BraTS: 0 background, 1 NCR, 2 ED, 4 ET in 2021). A model
trained on *regions* predicts one sigmoid channel per region (BraTS: WT, TC, ET), and regions may
overlap. A model trained on *classes* predicts one softmax channel per label (CT organs).

This module imports neither torch nor numpy, so the Slicer bridge and the CLI can read it cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medseg.errors import MedsegInputError

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Region:
    """A named union of label values, e.g. BraTS tumour core TC = {1, 4}."""

    name: str
    labels: tuple[int, ...]


@dataclass(frozen=True)
class LabelTable:
    """What the values of a label map mean and how a model's output channels map back to them.

    Attributes:
        name: registry key, e.g. ``"brats2021"``.
        labels: label value -> name, background (0) included.
        kind: ``"regions"`` (one sigmoid channel per region, overlapping) or ``"classes"``
            (one softmax channel per label, mutually exclusive, background first).
        regions: the regions, in output-channel order (empty for ``kind="classes"``).
        regions_class_order: for ``kind="regions"``, the label value painted for each region,
            applied in order so that later (inner) regions overwrite earlier (outer) ones.
        colors: label value -> RGB (0-255), for Slicer segments and overlays.
    """

    name: str
    labels: dict[int, str]
    kind: Literal["regions", "classes"] = "classes"
    regions: tuple[Region, ...] = ()
    regions_class_order: tuple[int, ...] = ()
    colors: dict[int, RGB] = field(default_factory=dict)

    @property
    def foreground_labels(self) -> tuple[int, ...]:
        """Label values other than background, ascending."""
        return tuple(sorted(v for v in self.labels if v != 0))

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the network's output channels (regions, or labels for classes)."""
        if self.kind == "regions":
            return tuple(r.name for r in self.regions)
        return tuple(self.labels[v] for v in sorted(self.labels))

    @property
    def num_outputs(self) -> int:
        """Number of network output channels."""
        return len(self.output_names)

    @property
    def evaluation_names(self) -> tuple[str, ...]:
        """What metrics are reported for: regions for region tables, foreground labels otherwise."""
        if self.kind == "regions":
            return self.output_names
        return tuple(self.labels[v] for v in self.foreground_labels)

    def evaluation_sets(self) -> dict[str, tuple[int, ...]]:
        """Name -> label values whose union is scored (a region, or a single foreground label)."""
        if self.kind == "regions":
            return {r.name: r.labels for r in self.regions}
        return {self.labels[v]: (v,) for v in self.foreground_labels}

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and ``torch.load(weights_only=True)``-safe representation."""
        return {
            "name": self.name,
            "labels": {str(k): v for k, v in self.labels.items()},
            "kind": self.kind,
            "regions": [{"name": r.name, "labels": list(r.labels)} for r in self.regions],
            "regions_class_order": list(self.regions_class_order),
            "colors": {str(k): list(c) for k, c in self.colors.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelTable:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=str(data["name"]),
            labels={int(k): str(v) for k, v in data["labels"].items()},
            kind=data.get("kind", "classes"),
            regions=tuple(Region(r["name"], tuple(int(x) for x in r["labels"])) for r in data.get("regions", [])),
            regions_class_order=tuple(int(x) for x in data.get("regions_class_order", [])),
            colors={int(k): (int(c[0]), int(c[1]), int(c[2])) for k, c in data.get("colors", {}).items()},
        )


_BRATS_COLORS: dict[int, RGB] = {1: (255, 64, 64), 2: (64, 200, 64), 3: (255, 230, 0), 4: (255, 230, 0)}


def _brats_table(name: str, et: int) -> LabelTable:
    return LabelTable(
        name=name,
        labels={0: "background", 1: "NCR", 2: "ED", et: "ET"},
        kind="regions",
        regions=(Region("WT", (1, 2, et)), Region("TC", (1, et)), Region("ET", (et,))),
        regions_class_order=(2, 1, et),
        colors={v: _BRATS_COLORS[v] for v in (1, 2, et)},
    )


BRATS2021 = _brats_table("brats2021", et=4)
BRATS2023 = _brats_table("brats2023", et=3)


@dataclass(frozen=True)
class BratsRelease:
    """File layout of one BraTS release.

    Attributes:
        name: ``"2021"`` or ``"2023"``.
        modalities: file suffixes in medseg's fixed channel order (T1, T1ce, T2, FLAIR).
        channel_names: human-readable names of those channels.
        separator: between case id and suffix (``_`` in 2021, ``-`` in 2023).
        label_table: the release's labels and regions.
    """

    name: str
    modalities: tuple[str, ...]
    channel_names: tuple[str, ...]
    separator: str
    label_table: LabelTable

    def case_id(self, index: int) -> str:
        """The case id of the ``index``-th case, as the release spells it."""
        if self.name == "2021":
            return f"BraTS2021_{index:05d}"
        return f"BraTS-GLI-{index:05d}-000"

    def file_name(self, case_id: str, suffix: str) -> str:
        """File name of one modality (or ``"seg"``) of a case."""
        return f"{case_id}{self.separator}{suffix}.nii.gz"


BRATS_RELEASES: dict[str, BratsRelease] = {
    "2021": BratsRelease("2021", ("t1", "t1ce", "t2", "flair"), ("T1", "T1ce", "T2", "FLAIR"), "_", BRATS2021),
    "2023": BratsRelease("2023", ("t1n", "t1c", "t2w", "t2f"), ("T1", "T1ce", "T2", "FLAIR"), "-", BRATS2023),
}

MSD_SPLEEN = LabelTable(
    name="msd_spleen",
    labels={0: "background", 1: "spleen"},
    kind="classes",
    colors={1: (157, 108, 162)},
)
"""Medical Segmentation Decathlon Task09 Spleen (portal-venous CT)."""

BTCV = LabelTable(
    name="btcv",
    labels={
        0: "background",
        1: "spleen",
        2: "kidney_right",
        3: "kidney_left",
        4: "gallbladder",
        5: "esophagus",
        6: "liver",
        7: "stomach",
        8: "aorta",
        9: "inferior_vena_cava",
        10: "portal_and_splenic_veins",
        11: "pancreas",
        12: "adrenal_gland_right",
        13: "adrenal_gland_left",
    },
    kind="classes",
    colors={
        1: (157, 108, 162),
        2: (185, 102, 83),
        3: (185, 102, 83),
        4: (139, 150, 98),
        5: (211, 171, 143),
        6: (221, 130, 101),
        7: (216, 132, 105),
        8: (224, 97, 76),
        9: (0, 151, 206),
        10: (0, 112, 165),
        11: (249, 180, 111),
        12: (244, 214, 49),
        13: (244, 214, 49),
    },
)
"""Multi-Atlas Labeling Beyond the Cranial Vault (BTCV) abdomen: 13 organs in the challenge's label order."""

LABEL_TABLES: dict[str, LabelTable] = {t.name: t for t in (BRATS2021, BRATS2023, MSD_SPLEEN, BTCV)}


def get_label_table(name: str) -> LabelTable:
    """Look up a label table by name (``brats2021``, ``brats2023``, ``msd_spleen``, ``btcv``)."""
    try:
        return LABEL_TABLES[name]
    except KeyError:
        raise KeyError(f"unknown label table {name!r}; known: {', '.join(sorted(LABEL_TABLES))}") from None


def get_brats_release(name: str) -> BratsRelease:
    """Look up a BraTS release (``"2021"`` or ``"2023"``)."""
    try:
        return BRATS_RELEASES[str(name)]
    except KeyError:
        raise KeyError(f"unknown BraTS release {name!r}; known: {', '.join(BRATS_RELEASES)}") from None


def require_known_values(
    values: Iterable[int], table: LabelTable, *, path: str | Path | None, what: str = "label values"
) -> None:
    """Refuse label values that ``table`` does not define (a label map of another dataset or release, or
    a case's list of annotated values).

    Args:
        values: the values found, e.g. :func:`medseg.io.label_values` of a label map.
        table: the label table they must belong to.
        path: the file they come from, named in the error.
        what: what the values are, starting the message (``"label values"``).

    Raises:
        MedsegInputError: naming ``path``: ``"<what> [..] are not in label table <name> [..]"``.
    """
    unknown = sorted(set(values) - set(table.labels))
    if unknown:
        known = sorted(table.labels)
        raise MedsegInputError(f"{what} {unknown} are not in label table {table.name} {known}", path=path)
