from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.cli import main
from medseg.config import load_config
from medseg.data.manifest import build_manifest, load_manifest
from medseg.errors import MedsegInputError
from medseg.labels import get_label_table
from medseg.phantoms.brats import generate_brats_dataset

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((REPO / "data_manifests").glob("*.json"))


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_committed_manifests_load(path: Path) -> None:
    manifest = load_manifest(path)
    assert manifest.cases
    assert {c.fold for c in manifest.cases} == set(range(manifest.num_folds))


def test_demo_manifest_is_what_manifest_build_writes_for_the_demo_phantoms(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "demo_brats_phantom.yaml")
    ph = config.phantoms
    # file names and folds do not depend on the grid: generate the same cases small
    generate_brats_dataset(tmp_path, cases=ph.train_cases, seed=ph.train_seed, release=ph.release,
                           shape=(32, 32, 24), spacing=6.0, workers=2)  # fmt: skip
    built = build_manifest(tmp_path, layout="brats", num_folds=config.data.num_folds, seed=config.seed)
    committed = json.loads((REPO / config.data.manifest).read_text())
    assert built.to_dict() == committed


def test_folds_keep_patients_together(tmp_path: Path) -> None:
    generate_brats_dataset(tmp_path, cases=6, seed=0, release="2023", shape=(32, 32, 24), spacing=6.0, workers=1)
    for case in sorted(tmp_path.iterdir())[:3]:  # a second timepoint of the first three patients
        later = tmp_path / (case.name.removesuffix("-000") + "-001")
        later.mkdir()
        for f in case.iterdir():
            (later / f.name.replace(case.name, later.name)).write_bytes(f.read_bytes())
    manifest = build_manifest(tmp_path, layout="brats", num_folds=3, seed=5)
    folds: dict[str, set[int]] = {}
    for case in manifest.cases:
        folds.setdefault(case.patient, set()).add(case.fold)
    assert len(manifest.cases) == 9 and len(folds) == 6
    assert all(len(f) == 1 for f in folds.values())


def _named_folder(root: Path, case: str) -> None:
    """A 2023-style BraTS case folder: the scanner reads names, not voxels."""
    (root / case).mkdir(parents=True)
    for suffix in ("t1n", "t1c", "t2w", "t2f", "seg"):
        (root / case / f"{case}-{suffix}.nii.gz").touch()


def test_a_layout_that_cannot_tell_the_table_asks_for_its_name(tmp_path: Path) -> None:
    _named_folder(tmp_path / "ped", "BraTS-PED-00001-000")
    with pytest.raises(MedsegInputError, match=r"brats2023, brats2024-ped all fit.*name the table") as err:
        build_manifest(tmp_path / "ped", layout="brats")
    assert err.value.path == tmp_path / "ped"
    named = build_manifest(tmp_path / "ped", layout="brats", labels=get_label_table("brats2024-ped"))
    assert named.label_table.name == "brats2024-ped" and [c.id for c in named.cases] == ["BraTS-PED-00001-000"]
    _named_folder(tmp_path / "gli", "BraTS-GLI-00001-000")
    assert build_manifest(tmp_path / "gli", layout="brats").label_table.name == "brats2023"  # 1-3 agree
    gli = build_manifest(tmp_path / "gli", layout="brats", labels=get_label_table("brats2024-gli"))
    assert gli.label_table.name == "brats2024-gli"
    with pytest.raises(
        MedsegInputError, match=r"the brats layout's label values \[3\] are not in label table brats2021"
    ):
        build_manifest(tmp_path / "gli", layout="brats", labels=get_label_table("brats2021"))


def test_cli_manifest_build_takes_a_table_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _named_folder(tmp_path / "ped", "BraTS-PED-00001-000")
    out = tmp_path / "m.json"
    assert main(["manifest", "build", "--root", str(tmp_path / "ped"), "--out", str(out)]) == 2
    assert "brats2024-ped" in capsys.readouterr().err
    argv = ["manifest", "build", "--root", str(tmp_path / "ped"), "--out", str(out), "--labels", "brats2024-ped"]
    assert main(argv) == 0
    assert json.loads(out.read_text())["labels"]["name"] == "brats2024-ped"
