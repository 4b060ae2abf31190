from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medseg.errors import MedsegInputError
from medseg.labels import (
    ANATOMICAL_STRUCTURE,
    BRATS2021,
    BRATS2023,
    BTCV,
    GENERIC_CONCEPT,
    LABEL_TABLES,
    LEFT,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    PALETTE,
    RIGHT,
    TISSUE,
    Code,
    Concept,
    LabelTable,
    brats_label_candidates,
    choose_label_table,
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
        concept_for(name, table_name=table)
        for dataset in (labels._DATASET_TYPES, labels._DATASET_FINDINGS)
        for table, names in dataset.items()
        for name in names
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


# --------------------------------------------------------------------------------------------------
# BraTS 2024/2025 tables: regions as the challenges' own code defines them, and labels: auto
# --------------------------------------------------------------------------------------------------

# What each sub-challenge's official code scores, written out from it (BraTS-2024-Metrics get_TissueWiseSeg;
# brats-evaluation 0.0.10 configs): name -> label values.
OFFICIAL_SCORED = {
    "brats2024-gli": {"WT": {1, 2, 3}, "TC": {1, 3}, "NETC": {1}, "SNFH": {2}, "ET": {3}, "RC": {4}},
    "brats2024-ped": {"WT": {1, 2, 3, 4}, "TC": {1, 2, 3}, "ET": {1}, "NETC": {2}, "CC": {3}, "ED": {4}},
    "brats2024-met": {"WT": {1, 2, 3}, "TC": {1, 3}, "ET": {3}},
    "brats2024-men-rt": {"GTV": {1}},
    "brats2025-met": {"WT": {1, 2, 3}, "TC": {1, 3}, "ET": {3}, "RC": {4}},
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_SCORED))
def test_scored_sets_are_the_official_ones_on_a_hand_built_map(name: str) -> None:
    table = get_label_table(name)
    assert {n: set(v) for n, v in table.evaluation_sets().items()} == OFFICIAL_SCORED[name]
    # one voxel per label value, in a row: each scored set marks exactly its values' voxels
    row = list(table.foreground_labels)
    masks = {n: [v in values for v in row] for n, values in table.evaluation_sets().items()}
    assert masks == {n: [v in values for v in row] for n, values in OFFICIAL_SCORED[name].items()}
    assert LabelTable.from_dict(table.to_dict()) == table


def test_trained_regions_of_the_2024_tables() -> None:
    gli, ped = get_label_table("brats2024-gli"), get_label_table("brats2024-ped")
    assert gli.output_names == ("WT", "TC", "ET", "RC") and gli.regions_class_order == (2, 1, 3, 4)
    assert 4 not in dict(gli.output_sets())["WT"]  # the resection cavity is not tumour
    assert ped.output_names == ("WT", "TC", "ET", "CC") and ped.regions_class_order == (4, 2, 1, 3)
    assert get_label_table("brats2024-men-rt").output_names == ("GTV",)
    assert tuple(BRATS2023.output_sets()) == BRATS2023.evaluation_names == ("WT", "TC", "ET")


def test_2024_segments_are_named_coloured_and_coded() -> None:
    gli = {s.name: s for s in get_label_table("brats2024-gli").segments()}
    assert [s.value for s in gli.values()] == [1, 2, 3, 4]
    assert gli["NETC"].concept.type == Code("NCIt", "C81175", "Non-Enhancing Lesion")
    assert gli["SNFH"].concept.type.meaning == "Edema" and gli["ET"].concept.type.meaning == "Enhancing Lesion"
    assert gli["RC"].display_name == "Resection cavity" and gli["RC"].concept == GENERIC_CONCEPT
    assert len({s.color for s in gli.values()}) == 4
    ped = {s.name: s for s in get_label_table("brats2024-ped").segments()}
    assert ped["CC"].concept == Concept(MORPHOLOGICALLY_ABNORMAL_STRUCTURE, Code("SCT", "367643001", "Cyst"))
    assert concept_for("CC") == GENERIC_CONCEPT  # a cyst only in BraTS PED's table
    (gtv,) = get_label_table("brats2024-men-rt").segments()
    assert gtv.display_name == "Gross tumour volume" and gtv.concept.type == Code("SCT", "228791009", "GTV")


def _candidates(*case_ids: str, release: str = "2023") -> list[str]:
    return [t.name for t in brats_label_candidates(case_ids, get_brats_release(release))]


def test_case_ids_narrow_the_candidate_tables() -> None:
    assert _candidates("BraTS2021_00001", release="2021") == ["brats2021"]
    assert _candidates("BraTS-GLI-00001-000") == ["brats2023", "brats2024-gli"]
    assert _candidates("BraTS-PED-00001-000") == ["brats2023", "brats2024-ped"]
    assert _candidates("BraTS-MET-00001-000") == ["brats2023", "brats2024-met", "brats2025-met"]
    assert _candidates("BraTS-MEN-RT-0001-1") == ["brats2024-men-rt"]
    assert _candidates("BraTS-SSA-00001-000") == ["brats2023"]
    everything = ["brats2023", "brats2024-gli", "brats2024-ped", "brats2024-met", "brats2024-men-rt", "brats2025-met"]
    assert _candidates("patient7") == everything
    assert _candidates("BraTS-GLI-00001-000", "BraTS-PED-00002-000") == ["brats2023", "brats2024-gli", "brats2024-ped"]


def test_auto_takes_the_oldest_of_tables_that_agree() -> None:
    gli = brats_label_candidates(["BraTS-GLI-00001-000"], get_brats_release("2023"))
    assert choose_label_table(gli).name == "brats2023"  # 1, 2, 3 mean the same in both
    assert choose_label_table(gli, values={0, 1, 2, 3}).name == "brats2023"
    assert choose_label_table(gli, values={0, 3, 4}).name == "brats2024-gli"  # only 2024 has a cavity
    met = brats_label_candidates(["BraTS-MET-00001-000"], get_brats_release("2023"))
    assert choose_label_table(met, values={4}).name == "brats2025-met"


def test_auto_never_guesses_between_tables_that_give_values_other_meanings() -> None:
    ped = brats_label_candidates(["BraTS-PED-00001-000"], get_brats_release("2023"))
    with pytest.raises(
        MedsegInputError, match=r"brats2023, brats2024-ped all fit.*label 1 is NCR in brats2023 and ET"
    ) as err:
        choose_label_table(ped, values={0, 1, 2}, path="refs")
    assert "name the table" in str(err.value) and err.value.path == Path("refs")
    assert choose_label_table(ped, values={4}).name == "brats2024-ped"  # 2023's PED has no 4
    every = [get_label_table(n) for n in LABEL_TABLES if n.startswith("brats")]
    for values in ({0, 1, 2, 4}, {0, 1, 2, 3}, {0, 1}):
        with pytest.raises(MedsegInputError, match="cannot tell the label table"):
            choose_label_table(every, values=values)
    with pytest.raises(MedsegInputError, match=r"label values \[5\] are in none"):
        choose_label_table(every, values={5})
