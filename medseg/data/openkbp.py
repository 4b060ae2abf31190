"""The OpenKBP head-and-neck CT layout (Babier et al., Med Phys 2021), as the challenge's data lie:
``<split>-pats/pt_N/{ct,oar_labels}.nii.gz`` beside ``<split>-pats_manifest.json``, which lists per
patient the organs at risk that were contoured (``"oars"``).

Organs not contoured in a patient are unknown there, not absent: each case's ``labelled`` lists the
organs its manifest names, so that training does not teach the others as background and evaluation
does not score them. The CT is stored as HU + 1000 (a config's ``transforms.intensity_offset: -1000``
reads it in HU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.data.layouts import ScannedCase, ScannedDataset, register_layout
from medseg.data.msd import classes_table
from medseg.errors import MedsegInputError
from medseg.io.jsonfile import read_json

ORGANS: dict[int, str] = {
    1: "Brainstem",
    2: "SpinalCord",
    3: "RightParotid",
    4: "LeftParotid",
    5: "Esophagus",
    6: "Larynx",
    7: "Mandible",
}
"""Label values of ``oar_labels.nii.gz`` (where contours overlap, the higher value was kept)."""


def _patients(path: Path) -> list[dict[str, Any]]:
    data = read_json(path, what="OpenKBP manifest")
    if not isinstance(data, list) or not all(isinstance(p, dict) and "patient" in p for p in data):
        raise MedsegInputError('expected a JSON list of {"patient": ..., "oars": [...]} objects', path=path)
    return data


@register_layout("openkbp")
def scan_openkbp(root: Path) -> ScannedDataset:
    """Scan one OpenKBP split folder (``.../train-pats``): its patients, and the organs contoured in each
    from the ``train-pats_manifest.json`` beside it.

    Raises:
        MedsegInputError: the split's manifest missing or malformed, a patient's files missing, or an
            organ name that is not one of :data:`ORGANS` (naming the file).
    """
    root = Path(root)
    manifest = root.parent / f"{root.name}_manifest.json"
    if not root.is_dir():
        raise MedsegInputError("dataset folder not found", path=root)
    value_of = {name: value for value, name in ORGANS.items()}
    cases: list[ScannedCase] = []
    for entry in sorted(_patients(manifest), key=lambda p: str(p["patient"])):
        patient = str(entry["patient"])
        unknown = sorted(set(entry.get("oars", [])) - set(value_of))
        if unknown:
            raise MedsegInputError(f"patient {patient}: unknown organ(s) {unknown}", path=manifest)
        image, label = f"{patient}/ct.nii.gz", f"{patient}/oar_labels.nii.gz"
        for rel in (image, label):
            if not (root / rel).is_file():
                raise MedsegInputError(f"listed in {manifest.name} but not found", path=root / rel)
        labelled = frozenset(value_of[name] for name in entry.get("oars", []))
        cases.append(ScannedCase(patient, (image,), label, patient, labelled=labelled))
    if not cases:
        raise MedsegInputError("the split's manifest lists no patients", path=manifest)
    return ScannedDataset("openkbp", classes_table("OpenKBP", {0: "background", **ORGANS}), ("CT",), tuple(cases))
