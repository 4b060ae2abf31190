"""Label and region tables: the single source of truth for what label values mean.

A *label map* stores one integer per voxel (BraTS: 0 background, 1 NCR, 2 ED, 4 ET in 2021). A model
trained on *regions* predicts one sigmoid channel per region (BraTS: WT, TC, ET), and regions may
overlap. A model trained on *classes* predicts one softmax channel per label (CT organs).

Each foreground label is also a *segment* (:meth:`LabelTable.segments`): a display name, an RGB colour and a
coded concept (DICOM's segmented property category, type and type modifier; SNOMED CT where known). DICOM-SEG,
``.seg.nrrd`` and the 3D Slicer module all describe a label through it, so they name, colour and code it alike.

This module imports neither torch nor numpy, so the Slicer bridge and the CLI can read it cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
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
        scored_regions: for ``kind="regions"``, sets scored beside the trained ``regions`` but not trained
            as channels of their own, e.g. BraTS 2024 GLI's NETC and SNFH (the labels the trained regions
            paint, scored on their own by the challenge).
    """

    name: str
    labels: dict[int, str]
    kind: Literal["regions", "classes"] = "classes"
    regions: tuple[Region, ...] = ()
    regions_class_order: tuple[int, ...] = ()
    colors: dict[int, RGB] = field(default_factory=dict)
    scored_regions: tuple[Region, ...] = ()

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

    def output_sets(self) -> dict[str, tuple[int, ...]]:
        """Name -> label values of each foreground output of the network: the trained regions (region
        tables) or the foreground labels, one each (class tables). What training validates and what
        ``inference.min_component_ml`` and ``min_region_ml`` name."""
        if self.kind == "regions":
            return {r.name: r.labels for r in self.regions}
        return {self.labels[v]: (v,) for v in self.foreground_labels}

    @property
    def evaluation_names(self) -> tuple[str, ...]:
        """What metrics are reported for (:meth:`evaluation_sets`)."""
        return tuple(self.evaluation_sets())

    def evaluation_sets(self) -> dict[str, tuple[int, ...]]:
        """Name -> label values whose union is scored: :meth:`output_sets`, then ``scored_regions``."""
        return {**self.output_sets(), **{r.name: r.labels for r in self.scored_regions}}

    def display_name(self, value: int) -> str:
        """What label ``value`` is called where people read it (segment names in Slicer and DICOM-SEG): a
        readable name for the labels of datasets medseg knows (BraTS ``NCR`` is "Necrotic tumour core"),
        else the label's own name."""
        known = _DISPLAY_NAMES.get(_key(self.name), {})
        return known.get(_key(self.labels[value]), self.labels[value])

    def color(self, value: int) -> RGB:
        """The table's colour for label ``value`` (0-255 RGB), or a :data:`PALETTE` colour when it has none."""
        return self.colors.get(value, PALETTE[(value - 1) % len(PALETTE)])

    def concept(self, value: int) -> Concept:
        """What label ``value`` is, coded (:func:`concept_for`)."""
        return concept_for(self.labels[value], table_name=self.name)

    def segments(self) -> tuple[Segment, ...]:
        """One :class:`Segment` per foreground label, ascending by value: how every writer and client
        describes the labels."""
        return tuple(
            Segment(v, self.labels[v], self.display_name(v), self.color(v), self.concept(v))
            for v in self.foreground_labels
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and ``torch.load(weights_only=True)``-safe representation (``scored_regions`` only when there
        are some, so that tables without them are written as before they existed)."""
        data: dict[str, Any] = {
            "name": self.name,
            "labels": {str(k): v for k, v in self.labels.items()},
            "kind": self.kind,
            "regions": [{"name": r.name, "labels": list(r.labels)} for r in self.regions],
            "regions_class_order": list(self.regions_class_order),
            "colors": {str(k): list(c) for k, c in self.colors.items()},
        }
        if self.scored_regions:
            data["scored_regions"] = [{"name": r.name, "labels": list(r.labels)} for r in self.scored_regions]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelTable:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=str(data["name"]),
            labels={int(k): str(v) for k, v in data["labels"].items()},
            kind=data.get("kind", "classes"),
            regions=_regions(data.get("regions", [])),
            regions_class_order=tuple(int(x) for x in data.get("regions_class_order", [])),
            colors={int(k): (int(c[0]), int(c[1]), int(c[2])) for k, c in data.get("colors", {}).items()},
            scored_regions=_regions(data.get("scored_regions", [])),
        )


def _regions(data: list[dict[str, Any]]) -> tuple[Region, ...]:
    return tuple(Region(str(r["name"]), tuple(int(x) for x in r["labels"])) for r in data)


PALETTE: tuple[RGB, ...] = (
    (221, 130, 101),
    (157, 108, 162),
    (0, 151, 206),
    (111, 184, 210),
    (224, 97, 76),
    (249, 180, 111),
    (128, 174, 128),
    (241, 214, 145),
    (183, 156, 220),
    (255, 130, 180),
    (230, 220, 70),
    (170, 250, 250),
)
"""Colours (0-255 RGB) for labels a table gives none, by label value 1, 2, ... (repeating); distinct on a grey
CT or MR background."""


@dataclass(frozen=True)
class Code:
    """One coded concept as DICOM writes it: coding scheme designator (``SCT`` is SNOMED CT), code value and
    code meaning."""

    scheme: str
    value: str
    meaning: str

    def __post_init__(self) -> None:
        for part in (self.scheme, self.value, self.meaning):
            if not part or any(c in part for c in "~^|"):
                raise ValueError(f"code part {part!r} is empty or holds one of ~ ^ | (the separators of Slicer's tags)")

    def to_slicer(self) -> str:
        """``scheme^value^meaning``, as a part of a Slicer terminology entry."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


SLICER_TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
SLICER_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Concept:
    """What a segment holds, coded: DICOM-SEG's Segmented Property Category, Type and Type Modifier (PS3.3
    C.8.20.2), which 3D Slicer keeps as a segment's terminology entry.

    Attributes:
        category: e.g. SCT 91723000 "Anatomical Structure".
        type: e.g. SCT 64033007 "Kidney".
        modifier: e.g. SCT 24028007 "Right", when the type needs one.
    """

    category: Code
    type: Code
    modifier: Code | None = None

    def slicer_terminology(self) -> str:
        """The concept as Slicer's ``TerminologyEntry`` tag: ``context~category~type~typeModifier~anatomicContext
        ~region~regionModifier`` (Slicer's developer guide, "Segmentation labelmap file format")."""
        modifier = self.modifier.to_slicer() if self.modifier else "^^"
        return (
            f"{SLICER_TERMINOLOGY_CONTEXT}~{self.category.to_slicer()}~{self.type.to_slicer()}~{modifier}"
            f"~{SLICER_ANATOMIC_CONTEXT}~^^~^^"
        )


@dataclass(frozen=True)
class Segment:
    """One foreground label as DICOM-SEG, ``.seg.nrrd`` and the Slicer module show it.

    Attributes:
        value: the label value in the label map.
        name: the label's name in the table (what ``summary.csv``, metrics and ``--set`` use).
        display_name: the segment's name (:meth:`LabelTable.display_name`).
        color: 0-255 RGB.
        concept: what the segment holds, coded.
    """

    value: int
    name: str
    display_name: str
    color: RGB
    concept: Concept

    def to_dict(self) -> dict[str, Any]:
        """A JSON representation (codes as ``[scheme, value, meaning]``; no modifier is ``null``)."""
        concept = self.concept
        return {
            "value": self.value,
            "name": self.name,
            "display_name": self.display_name,
            "color": list(self.color),
            "category": _code_list(concept.category),
            "type": _code_list(concept.type),
            "modifier": _code_list(concept.modifier) if concept.modifier else None,
        }


def _code_list(code: Code) -> list[str]:
    return [code.scheme, code.value, code.meaning]


# Codes and meanings as DICOM PS3.16 lists them (checked against pydicom's copy of it in tests/test_labels.py):
# categories from CID 7150, types from CID 7151 (enhancing lesion is an NCIt code there), laterality from CID 244.
ANATOMICAL_STRUCTURE = Code("SCT", "91723000", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("SCT", "49755003", "Morphologically Abnormal Structure")
TISSUE = Code("SCT", "85756007", "Tissue")
RIGHT = Code("SCT", "24028007", "Right")
LEFT = Code("SCT", "7771000", "Left")

GENERIC_CONCEPT = Concept(TISSUE, TISSUE)
"""The concept of a label medseg has no code for: category and type "Tissue", a placeholder that says nothing
about what the segment holds (its name does). Replace it in the DICOM-SEG before clinical use."""

_ORGANS: dict[str, Code] = {
    "adrenalgland": Code("SCT", "23451007", "Adrenal gland"),
    "aorta": Code("SCT", "15825003", "Aorta"),
    "brainstem": Code("SCT", "119238007", "Brain Stem"),
    "esophagus": Code("SCT", "32849002", "Esophagus"),
    "gallbladder": Code("SCT", "28231008", "Gallbladder"),
    "hippocampus": Code("SCT", "5366008", "Hippocampus"),
    "inferiorvenacava": Code("SCT", "64131007", "Inferior vena cava"),
    "kidney": Code("SCT", "64033007", "Kidney"),
    "larynx": Code("SCT", "4596009", "Larynx"),
    "liver": Code("SCT", "10200004", "Liver"),
    "mandible": Code("SCT", "91609006", "Mandible"),
    "pancreas": Code("SCT", "15776009", "Pancreas"),
    "parotidgland": Code("SCT", "45289007", "Parotid gland"),
    "spinalcord": Code("SCT", "2748008", "Spinal cord"),
    "spleen": Code("SCT", "78961009", "Spleen"),
    "stomach": Code("SCT", "69695003", "Stomach"),
}
_FINDINGS: dict[str, Code] = {
    "necrosis": Code("SCT", "6574001", "Necrosis"),
    "edema": Code("SCT", "79654002", "Edema"),
    "enhancing": Code("NCIt", "C113842", "Enhancing Lesion"),
    "neoplasm": Code("SCT", "108369006", "Neoplasm"),
    "nonenhancing": Code("NCIt", "C81175", "Non-Enhancing Lesion"),
    "cyst": Code("SCT", "367643001", "Cyst"),
    "gtv": Code("SCT", "228791009", "GTV"),
}
# Label name (lower case, letters and digits only) -> key of _ORGANS or _FINDINGS.
_SYNONYMS: dict[str, str] = {
    **{organ: organ for organ in _ORGANS},
    "adrenal": "adrenalgland",
    "oesophagus": "esophagus",
    "ivc": "inferiorvenacava",
    "kidneys": "kidney",
    "parotid": "parotidgland",
    **{finding: finding for finding in _FINDINGS},
    "ncr": "necrosis",
    "necrotic": "necrosis",
    "necroticcore": "necrosis",
    "necrotictumorcore": "necrosis",
    "necrotictumourcore": "necrosis",
    "ed": "edema",
    "oedema": "edema",
    "peritumoraledema": "edema",
    "et": "enhancing",
    "enhancingtumor": "enhancing",
    "enhancingtumour": "enhancing",
    "enhancinglesion": "enhancing",
    "tumor": "neoplasm",
    "tumour": "neoplasm",
    "netc": "nonenhancing",
    "nonenhancingtumorcore": "nonenhancing",
    "nonenhancingtumourcore": "nonenhancing",
    "snfh": "edema",
    "grosstumorvolume": "gtv",
    "grosstumourvolume": "gtv",
}
# Labels whose name means something only in their dataset: table name -> label name -> type.
_DATASET_TYPES: dict[str, dict[str, Code]] = {
    # MSD Task04: the anterior (head) and posterior (body and tail) hippocampus
    "hippocampus": {"anterior": _ORGANS["hippocampus"], "posterior": _ORGANS["hippocampus"]},
}
# Findings whose label name means something only in their dataset: table name -> label name -> _FINDINGS key.
_DATASET_FINDINGS: dict[str, dict[str, str]] = {"brats2024ped": {"cc": "cyst"}}
# Readable names of the labels of datasets medseg knows: table name -> label name -> display name.
_BRATS_DISPLAY = {
    "ncr": "Necrotic tumour core",
    "ed": "Peritumoral edema",
    "et": "Enhancing tumour",
    "netc": "Non-enhancing tumour core",
    "snfh": "Surrounding non-enhancing FLAIR hyperintensity",
    "rc": "Resection cavity",
    "cc": "Cystic component",
    "gtv": "Gross tumour volume",
}
_DISPLAY_NAMES: dict[str, dict[str, str]] = {
    "brats2021": _BRATS_DISPLAY,
    "brats2023": _BRATS_DISPLAY,
    "brats2024gli": _BRATS_DISPLAY,
    "brats2024ped": _BRATS_DISPLAY,
    "brats2024met": _BRATS_DISPLAY,
    "brats2024menrt": _BRATS_DISPLAY,
    "brats2025met": _BRATS_DISPLAY,
    "btcv": {
        "kidneyright": "Right kidney",
        "kidneyleft": "Left kidney",
        "inferiorvenacava": "Inferior vena cava",
        "portalandsplenicveins": "Portal and splenic veins",
        "adrenalglandright": "Right adrenal gland",
        "adrenalglandleft": "Left adrenal gland",
    },
    "openkbp": {
        "spinalcord": "Spinal cord",
        "rightparotid": "Right parotid",
        "leftparotid": "Left parotid",
    },
    "hippocampus": {"anterior": "Anterior hippocampus", "posterior": "Posterior hippocampus"},
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def concept_for(name: str, *, table_name: str = "") -> Concept:
    """The coded concept of a label called ``name``, in a table called ``table_name``.

    Recognises the organs of BTCV, MSD and OpenKBP (with a left or right side in the name, e.g. ``kidney_left``,
    ``RightParotid``), the hippocampus (and MSD Task04's ``Anterior`` and ``Posterior``), and the BraTS tumour
    labels (``NCR``, ``ED``, ``ET``, BraTS 2024's ``NETC``, ``SNFH``, ``GTV``, PED's cystic component ``CC``, and
    spelled-out forms); anything else gets :data:`GENERIC_CONCEPT`. A resection cavity (``RC``) has no code in
    DICOM's list of segmentation types (CID 7151), so it gets the generic concept too.
    """
    key = _key(name)
    dataset_type = _DATASET_TYPES.get(_key(table_name), {}).get(key)
    if dataset_type is not None:
        return Concept(ANATOMICAL_STRUCTURE, dataset_type)
    dataset_finding = _DATASET_FINDINGS.get(_key(table_name), {}).get(key)
    if dataset_finding is not None:
        return Concept(MORPHOLOGICALLY_ABNORMAL_STRUCTURE, _FINDINGS[dataset_finding])
    modifier = None
    for side, code in (("left", LEFT), ("right", RIGHT)):
        for rest in (key.removeprefix(side), key.removesuffix(side)):
            if rest != key and rest in _SYNONYMS and _SYNONYMS[rest] in _ORGANS:
                key, modifier = rest, code
    concept = _SYNONYMS.get(key)
    if concept in _ORGANS:
        return Concept(ANATOMICAL_STRUCTURE, _ORGANS[concept], modifier)
    if concept in _FINDINGS:
        return Concept(MORPHOLOGICALLY_ABNORMAL_STRUCTURE, _FINDINGS[concept])
    return GENERIC_CONCEPT


_BRATS_COLORS: dict[str, RGB] = {
    "NCR": (255, 64, 64),
    "NETC": (255, 64, 64),
    "ED": (64, 200, 64),
    "SNFH": (64, 200, 64),
    "ET": (255, 230, 0),
    "RC": (80, 140, 255),
    "CC": (170, 110, 230),
    "GTV": (255, 140, 0),
}


def _brats_table(
    name: str,
    labels: dict[int, str],
    regions: dict[str, tuple[int, ...]],
    paint: tuple[int, ...],
    scored: dict[str, tuple[int, ...]] | None = None,
) -> LabelTable:
    return LabelTable(
        name=name,
        labels={0: "background", **labels},
        kind="regions",
        regions=tuple(Region(n, v) for n, v in regions.items()),
        regions_class_order=paint,
        colors={v: _BRATS_COLORS[n] for v, n in labels.items()},
        scored_regions=tuple(Region(n, v) for n, v in (scored or {}).items()),
    )


BRATS2021 = _brats_table(
    "brats2021", {1: "NCR", 2: "ED", 4: "ET"}, {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}, (2, 1, 4)
)
"""BraTS 2021 (and 2018-2020): 1 necrotic and non-enhancing core, 2 oedema, 4 enhancing tumour."""
BRATS2023 = _brats_table(
    "brats2023", {1: "NCR", 2: "ED", 3: "ET"}, {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}, (2, 1, 3)
)
"""BraTS 2023, every sub-challenge (GLI, SSA, MEN, PED, MET), and BraTS 2025's pre-operative meningioma and
GoAT, whose configurations in ``brats-evaluation`` 0.0.10 score et {3}, tc {1, 3}, wt {1, 2, 3}: 1 NETC
(here NCR), 2 SNFH (here ED), 3 ET."""
BRATS2024_GLI = _brats_table(
    "brats2024-gli",
    {1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"},
    {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,), "RC": (4,)},
    (2, 1, 3, 4),
    scored={"NETC": (1,), "SNFH": (2,)},
)
"""BraTS 2024 and 2025 adult glioma, post-treatment: 1 non-enhancing tumour core, 2 surrounding non-enhancing
FLAIR hyperintensity, 3 enhancing tumour, 4 resection cavity. The resection cavity is not tumour: WT is
{1, 2, 3} and RC a region of its own, trained as a fourth output and painted last. NETC and SNFH are scored
too (``get_TissueWiseSeg`` of ``metrics_GLI.py``, github.com/rachitsaluja/BraTS-2024-Metrics; ``config_gli``
of ``brats-evaluation`` 0.0.10: wt, tc, et, netc, snfh, rc)."""
BRATS2024_PED = _brats_table(
    "brats2024-ped",
    {1: "ET", 2: "NETC", 3: "CC", 4: "ED"},
    {"WT": (1, 2, 3, 4), "TC": (1, 2, 3), "ET": (1,), "CC": (3,)},
    (4, 2, 1, 3),
    scored={"NETC": (2,), "ED": (4,)},
)
"""BraTS 2024 and 2025 paediatric tumours: 1 enhancing tumour, 2 non-enhancing tumour core, 3 cystic
component, 4 oedema; WT {1, 2, 3, 4}, TC {1, 2, 3} (``metrics_PED.py`` of BraTS-2024-Metrics; ``config_ped``
of ``brats-evaluation`` 0.0.10). Trained as WT, TC, ET and CC, painted ED, NETC, ET, CC: ET and CC are
disjoint parts of the core, and what of the core is neither is NETC."""
BRATS2024_MET = _brats_table(
    "brats2024-met",
    {1: "NETC", 2: "SNFH", 3: "ET"},
    {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
    (2, 1, 3),
)
"""BraTS 2024 metastases: 1 NETC, 2 SNFH, 3 ET; WT, TC and ET scored (``metrics_MET.py`` of
BraTS-2024-Metrics). The values mean what BraTS 2023's do, under the names the 2024 challenge gives them."""
BRATS2024_MEN_RT = _brats_table("brats2024-men-rt", {1: "GTV"}, {"GTV": (1,)}, (1,))
"""BraTS 2024 and 2025 meningioma radiotherapy planning (T1c only): 1 gross tumour volume (``metrics_MEN_RT.py``
of BraTS-2024-Metrics; ``config_MenRT`` of ``brats-evaluation`` 0.0.10)."""
BRATS2025_MET = _brats_table(
    "brats2025-met",
    {1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"},
    {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,), "RC": (4,)},
    (2, 1, 3, 4),
)
"""BraTS 2025 metastases, pre- and post-treatment: the 2024 labels plus 4 resection cavity; et {3}, rc {4},
tc {1, 3} and wt {1, 2, 3} scored (``config_mets`` of ``brats-evaluation`` 0.0.10)."""

# BraTS 2023 renamed NCR and ED as NETC and SNFH without changing what they annotate.
_SAME_ANNOTATION = {"ncr": "netc", "ed": "snfh"}
# The tables a BraTS 2023-style case id's sub-challenge (BraTS-GLI-00000-000 -> GLI) may be labelled with.
_BRATS_SUBCHALLENGE_TABLES: dict[str, tuple[LabelTable, ...]] = {
    "GLI": (BRATS2023, BRATS2024_GLI),
    "PED": (BRATS2023, BRATS2024_PED),
    "MET": (BRATS2023, BRATS2024_MET, BRATS2025_MET),
    "MEN-RT": (BRATS2024_MEN_RT,),
    "MEN": (BRATS2023,),
    "SSA": (BRATS2023,),
    "GoAT": (BRATS2023,),
}
_BRATS_SUBCHALLENGE = re.compile(r"BraTS-([A-Za-z]+(?:-RT)?)-\d")


@dataclass(frozen=True)
class BratsRelease:
    """File layout of one BraTS release.

    Attributes:
        name: ``"2021"``, ``"2023"`` or ``"2024"``.
        modalities: file suffixes in medseg's fixed channel order (T1, T1ce, T2, FLAIR).
        channel_names: human-readable names of those channels.
        separator: between case id and suffix (``_`` in 2021, ``-`` since 2023).
        label_table: the release's labels and regions (for 2024, the adult glioma's: medseg's phantoms).
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


_BRATS_2023_FILES = (("t1n", "t1c", "t2w", "t2f"), ("T1", "T1ce", "T2", "FLAIR"), "-")
BRATS_RELEASES: dict[str, BratsRelease] = {
    "2021": BratsRelease("2021", ("t1", "t1ce", "t2", "flair"), ("T1", "T1ce", "T2", "FLAIR"), "_", BRATS2021),
    "2023": BratsRelease("2023", *_BRATS_2023_FILES, BRATS2023),
    "2024": BratsRelease("2024", *_BRATS_2023_FILES, BRATS2024_GLI),
}


def brats_namings() -> tuple[BratsRelease, ...]:
    """One release per file naming (2021's; 2023's, which 2024 and 2025 keep): all that file names tell."""
    first: dict[tuple[tuple[str, ...], str], BratsRelease] = {}
    for release in BRATS_RELEASES.values():
        first.setdefault((release.modalities, release.separator), release)
    return tuple(first.values())


def brats_label_candidates(case_ids: Iterable[str], naming: BratsRelease) -> tuple[LabelTable, ...]:
    """The label tables that BraTS cases named ``naming``'s way may be labelled with, in registry order.

    2021 file names mean :data:`BRATS2021`. Since 2023 every release names its files alike, and a case id
    says only its sub-challenge (``BraTS-PED-00001-000``): PED cases are BraTS 2023's (1 NCR, 2 ED, 3 ET)
    or 2024's (1 ET, 2 NETC, 3 CC, 4 ED). An id without a known sub-challenge allows every 2023-style table.
    """
    if naming.separator == BRATS_RELEASES["2021"].separator:
        return (BRATS2021,)
    every = tuple(t for t in LABEL_TABLES.values() if t.name.startswith("brats") and t is not BRATS2021)
    found: list[LabelTable] = []
    for case_id in case_ids:
        match = _BRATS_SUBCHALLENGE.match(case_id)
        allowed = _BRATS_SUBCHALLENGE_TABLES.get(match[1], every) if match else every
        found.extend(t for t in allowed if t not in found)
    return tuple(t for t in LABEL_TABLES.values() if t in found)


def _meaning(name: str) -> str:
    key = _key(name)
    return _SAME_ANNOTATION.get(key, key)


def choose_label_table(
    candidates: Sequence[LabelTable], *, values: Iterable[int] = (), path: str | Path | None = None
) -> LabelTable:
    """The table ``labels: auto`` takes among ``candidates``: the first that holds every value of ``values``
    (the label values found), provided that no two such tables give a value they share different meanings.

    Tables that agree (BraTS 2023 and BraTS 2024 GLI on 1, 2 and 3) leave the first, the oldest; tables that
    do not (BraTS 2023's 1 NCR and 2024 PED's 1 ET) are never guessed between.

    Raises:
        MedsegInputError: naming ``path``: no candidate holds the values, or the ones that do disagree
            (the message lists them, and asks for the table's name).
    """
    present = set(values)
    fitting = [t for t in candidates if present <= set(t.labels)]
    if not fitting:
        known = ", ".join(t.name for t in candidates)
        raise MedsegInputError(f"label values {sorted(present)} are in none of the label tables {known}", path=path)
    for i, first in enumerate(fitting):
        for other in fitting[i + 1 :]:
            clash = next(
                (
                    v
                    for v in sorted(set(first.labels) & set(other.labels))
                    if _meaning(first.labels[v]) != _meaning(other.labels[v])
                ),
                None,
            )
            if clash is not None:
                meanings = f"{first.labels[clash]} in {first.name} and {other.labels[clash]} in {other.name}"
                raise MedsegInputError(
                    f"labels: auto cannot tell the label table: {', '.join(t.name for t in fitting)} all fit, but"
                    f" label {clash} is {meanings}; name the table (data.labels in a config, --labels on the"
                    " command line)",
                    path=path,
                )
    return fitting[0]


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

LABEL_TABLES: dict[str, LabelTable] = {
    t.name: t
    for t in (
        BRATS2021,
        BRATS2023,
        BRATS2024_GLI,
        BRATS2024_PED,
        BRATS2024_MET,
        BRATS2024_MEN_RT,
        BRATS2025_MET,
        MSD_SPLEEN,
        BTCV,
    )
}


def get_label_table(name: str) -> LabelTable:
    """Look up a label table by name (``brats2021``, ``brats2023``, ``brats2024-gli``, ``brats2024-ped``,
    ``brats2024-met``, ``brats2024-men-rt``, ``brats2025-met``, ``msd_spleen``, ``btcv``)."""
    try:
        return LABEL_TABLES[name]
    except KeyError:
        raise KeyError(f"unknown label table {name!r}; known: {', '.join(sorted(LABEL_TABLES))}") from None


def get_brats_release(name: str) -> BratsRelease:
    """Look up a BraTS release (``"2021"``, ``"2023"`` or ``"2024"``)."""
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
