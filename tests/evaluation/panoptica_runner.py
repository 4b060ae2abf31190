"""Score label-map scenes with BraTS 2025's ``brats-evaluation`` (Panoptica), for the agreement tests.

Runs in a Python environment of its own, where ``brats-evaluation`` is installed (Panoptica pins numpy < 2.3,
so it cannot share medseg's): it imports nothing from medseg. Usage::

    python panoptica_runner.py SCENES.npz OUT.json

``SCENES.npz`` holds ``pred_<i>``, ``ref_<i>`` (integer label maps, ``(X, Y, Z)``, values 0..4) and ``spacing_<i>``
(mm along those axes) for i = 0..n-1, and ``tolerance`` (mm, for ``surfaces``). Each case is scored with the
``mets`` configuration through ``Panoptica_Evaluator.evaluate`` with the spacing given explicitly
(``brats-evaluation`` 0.0.10 reads it from the NIfTI header on the wrong axes), and the results go through
``parse_mets_results`` (20 mm³, Dice 0.1: its defaults), the challenge's own aggregation.
``OUT.json`` holds, per case: ``rows`` (the parsed CSV row: per-region lesion-wise and global figures),
``regions`` (Panoptica's own dict per region, with its ``reference_instances``) and ``surfaces`` (per region,
Panoptica's HD95 and NSD at ``tolerance`` of the whole masks, measured with the spacing, where both are
non-empty).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from brats_evaluation import config_path, parse_mets_results
from panoptica import Panoptica_Evaluator
from panoptica.metrics import _surface_distances as pairs

REGIONS = {"et": (3,), "rc": (4,), "tc": (1, 3), "wt": (1, 2, 3)}


def _plain(value: object) -> object:
    """``value`` with numpy scalars as Python numbers and NaN/inf as strings (strict JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def main(scenes_path: str, out_path: str) -> None:
    scenes = np.load(scenes_path)
    tolerance = float(scenes["tolerance"])
    evaluator = Panoptica_Evaluator.load_from_config(str(config_path("mets")))
    cases = []
    metrics = []
    for i in range(len([k for k in scenes.files if k.startswith("pred_")])):
        pred, ref = scenes[f"pred_{i}"].astype(np.uint8), scenes[f"ref_{i}"].astype(np.uint8)
        spacing = tuple(float(s) for s in scenes[f"spacing_{i}"])
        results = evaluator.evaluate(pred, ref, voxelspacing=spacing, verbose=False)
        regions = {k: r.to_dict(True) for k, r in results.items()}
        metrics.append({**regions, "subject_name": f"case{i:03d}"})
        surfaces = {}
        for name, values in REGIONS.items():
            p, r = np.isin(pred, values), np.isin(ref, values)
            if p.any() and r.any():
                sd_ref, sd_pred = pairs._surface_distance_pair(r, p, voxelspacing=spacing)
                surfaces[name] = {
                    "hd95": float(pairs._hd95_from_pair(sd_ref, sd_pred)),
                    "nsd": float(pairs._nsd_from_pair(sd_ref, sd_pred, voxelspacing=spacing, threshold=tolerance)),
                }
        cases.append({"regions": regions, "surfaces": surfaces})
    with tempfile.TemporaryDirectory() as tmp:
        json_path, csv_path = Path(tmp) / "panoptica.json", Path(tmp) / "mets.csv"
        json_path.write_text(json.dumps({"metrics": metrics, "missings": []}))
        parse_mets_results(str(json_path), 20.0, 0.1, str(csv_path))
        table = pd.read_csv(csv_path)
    for case, row in zip(cases, table.to_dict("records"), strict=False):
        case["rows"] = row
    Path(out_path).write_text(json.dumps(_plain(cases)))


if __name__ == "__main__":
    main(*sys.argv[1:])
