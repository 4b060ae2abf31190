from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.config import load_config
from medseg.data.manifest import build_manifest, load_manifest
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
