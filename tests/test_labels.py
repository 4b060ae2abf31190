from __future__ import annotations

import subprocess
import sys

import pytest

from medseg.labels import (
    ANATOMICAL_STRUCTURE,
    BRATS2021,
    BRATS2023,
    BTCV,
    GENERIC_CONCEPT,
    LEFT,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    PALETTE,
    RIGHT,
    TISSUE,
    Code,
    Concept,
    LabelTable,
    concept_for,
    get_brats_release,
    get_label_table,
)


def test_brats_regions_follow_each_release() -> None:
    assert {r.name: set(r.labels) for r in BRATS2021.regions} == {"WT": {1, 2, 4}, "TC": {1, 4}, "ET": {4}}
    assert {r.name: set(r.labels) for r in BRATS2023.regions} == {"WT": {1, 2, 3}, "TC": {1, 3}, "ET": {3}}
    assert BRATS2021.regions_class_order == (2, 1, 4)
    assert BRATS2023.regions_class_order == (2, 1, 3)


def test_release_file_names() -> None:
    r21, r23 = get_brats_release("2021"), get_brats_release("2023")
    assert r21.file_name(r21.case_id(7), "t1ce") == "BraTS2021_00007_t1ce.nii.gz"
    assert r23.file_name(r23.case_id(7), "t2f") == "BraTS-GLI-00007-000-t2f.nii.gz"


def test_table_round_trips_through_dict() -> None:
    for table in (BRATS2021, BRATS2023):
        assert LabelTable.from_dict(table.to_dict()) == table


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(KeyError, match="brats2021"):
        get_label_table("brats2019")


def test_labels_and_config_do_not_import_torch() -> None:
    code = "import sys, medseg.labels, medseg.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------
# Segments: display names, colours and codes
# --------------------------------------------------------------------------------------------------


def test_brats_segments() -> None:
    segments = BRATS2021.segments()
    assert [(s.value, s.name, s.display_name) for s in segments] == [
        (1, "NCR", "Necrotic tumour core"),
        (2, "ED", "Peritumoral edema"),
        (4, "ET", "Enhancing tumour"),
    ]
    assert [s.color for s in segments] == [BRATS2021.colors[v] for v in (1, 2, 4)]
    assert all(s.concept.category == MORPHOLOGICALLY_ABNORMAL_STRUCTURE for s in segments)
    assert [s.concept.type for s in segments] == [
        Code("SCT", "6574001", "Necrosis"),
        Code("SCT", "79654002", "Edema"),
        Code("NCIt", "C113842", "Enhancing Lesion"),
    ]
    assert [s.value for s in BRATS2023.segments()] == [1, 2, 3]
    assert segments[1].concept.slicer_terminology() == (
        "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Abnormal Structure"
        "~SCT^79654002^Edema~^^~Anatomic codes - DICOM master list~^^~^^"
    )


def test_openkbp_organs_with_their_sides() -> None:
    names = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible"]
    table = LabelTable(name="OpenKBP", labels={0: "background", **dict(enumerate(names, start=1))})
    segments = {s.name: s for s in table.segments()}
    assert {name: s.concept.type.value for name, s in segments.items()} == {
        "Brainstem": "119238007",
        "SpinalCord": "2748008",
        "RightParotid": "45289007",
        "LeftParotid": "45289007",
        "Esophagus": "32849002",
        "Larynx": "4596009",
        "Mandible": "91609006",
    }
    assert all(s.concept.category == ANATOMICAL_STRUCTURE for s in segments.values())
    assert segments["RightParotid"].concept.modifier == RIGHT and segments["LeftParotid"].concept.modifier == LEFT
    assert segments["Larynx"].concept.modifier is None
    assert segments["SpinalCord"].display_name == "Spinal cord" and segments["RightParotid"].display_name == (
        "Right parotid"
    )
    assert "~SCT^45289007^Parotid gland~SCT^24028007^Right~" in segments["RightParotid"].concept.slicer_terminology()


def test_btcv_sides_and_a_structure_without_a_code() -> None:
    segments = {s.name: s for s in BTCV.segments()}
    assert segments["kidney_left"].concept == Concept(ANATOMICAL_STRUCTURE, Code("SCT", "64033007", "Kidney"), LEFT)
    assert segments["adrenal_gland_right"].concept.modifier == RIGHT
    assert segments["adrenal_gland_right"].display_name == "Right adrenal gland"
    assert segments["portal_and_splenic_veins"].concept == GENERIC_CONCEPT  # two veins: no one code
    assert segments["liver"].display_name == "liver"  # a readable name stays as it is


def test_hippocampus_labels_are_coded_by_their_dataset() -> None:
    table = LabelTable(name="Hippocampus", labels={0: "background", 1: "Anterior", 2: "Posterior"})
    hippocampus = Concept(ANATOMICAL_STRUCTURE, Code("SCT", "5366008", "Hippocampus"))
    assert [(s.display_name, s.concept) for s in table.segments()] == [
        ("Anterior hippocampus", hippocampus),
        ("Posterior hippocampus", hippocampus),
    ]
    assert concept_for("Anterior") == GENERIC_CONCEPT  # elsewhere "anterior" says nothing


def test_unknown_labels_get_the_generic_concept_and_a_palette_colour() -> None:
    table = LabelTable(name="custom", labels={0: "background", 1: "blob", 2: "liver"}, colors={2: (1, 2, 3)})
    blob, liver = table.segments()
    assert blob.concept == GENERIC_CONCEPT == Concept(TISSUE, TISSUE) and blob.display_name == "blob"
    assert blob.color == PALETTE[0] and liver.color == (1, 2, 3)
    assert liver.concept.type.meaning == "Liver"


def _known_codes() -> list[Code]:
    from medseg import labels

    concepts = [concept_for(name) for name in labels._SYNONYMS]
    concepts += [
        concept_for(name, table_name=table) for table, names in labels._DATASET_TYPES.items() for name in names
    ]
    codes = {c for concept in concepts for c in (concept.category, concept.type, concept.modifier) if c is not None}
    return sorted(codes | {LEFT, RIGHT}, key=lambda c: (c.scheme, c.value))


@pytest.mark.parametrize("code", _known_codes(), ids=lambda c: f"{c.scheme}-{c.value}")
def test_every_code_is_as_dicom_lists_it(code: Code) -> None:
    from pydicom.sr._concepts_dict import concepts  # DICOM PS3.16's codes, as pydicom ships them

    meanings = {
        meaning
        for entry in concepts[code.scheme].values()
        for value, (meaning, _) in entry.items()
        if value == code.value
    }
    assert code.meaning in meanings


@pytest.mark.parametrize("bad", ["", "a^b", "x~y", "p|q"])
def test_codes_refuse_the_separators_of_slicers_tags(bad: str) -> None:
    with pytest.raises(ValueError, match="separators"):
        Code("SCT", "1", bad)
