"""Score label-map scenes with BraTS 2025's ``brats-evaluation`` (Panoptica), for the agreement tests.

Runs in a Python environment of its own, where ``brats-evaluation`` is installed (Panoptica pins numpy < 2.3,
so it cannot share medseg's): it imports nothing from medseg. Usage::

    python panoptica_runner.py SCENES.npz OUT.json

``SCENES.npz`` holds ``pred_<i>``, ``ref_<i>`` (integer label maps, ``(X, Y, Z)``, values 0..4), ``spacing_<i>``
(mm along those axes) and ``config_<i>`` (the name of a ``brats-evaluation`` configuration: ``mets``, ``gli``,
``ped``, ``MenPre``, ``MenRT``, ``GoAT``) for i = 0..n-1, and ``tolerance`` (mm, for ``surfaces``). Each case is
scored with its configuration through ``Panoptica_Evaluator.evaluate`` with the spacing given explicitly
(``brats-evaluation`` 0.0.10 reads it from the NIfTI header on the wrong axes), and the results go through the
challenge's own aggregation: ``parse_mets_results`` (20 mm³, Dice 0.1: its defaults) for ``mets``,
``parse_seg_results`` for the others.
``OUT.json`` holds a list, per case: ``config``, ``groups`` (the configuration's regions: name -> label values),
``rows`` (the parsed CSV row: per-region lesion-wise and global figures), ``regions`` (Panoptica's own dict per
region, with its ``reference_instances``) and ``surfaces`` (per region, Panoptica's HD95 and NSD at ``tolerance``
of the whole masks, measured with the spacing, where both are non-empty).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from brats_evaluation import config_path, parse_mets_results, parse_seg_results
from panoptica import Panoptica_Evaluator
from panoptica.metrics import _surface_distances as pairs


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


def _parse(config: str, metrics: list[dict]) -> list[dict]:
    """The challenge's CSV rows of ``metrics`` (Panoptica's dicts, one per case) under ``config``'s parser."""
    with tempfile.TemporaryDirectory() as tmp:
        json_path, csv_path = Path(tmp) / "panoptica.json", Path(tmp) / "parsed.csv"
        json_path.write_text(json.dumps({"metrics": metrics, "missings": []}))  # inf and NaN as JSON extensions
        if config == "mets":
            parse_mets_results(str(json_path), 20.0, 0.1, str(csv_path))
        else:
            parse_seg_results(str(json_path), str(csv_path))
        return pd.read_csv(csv_path).to_dict("records")[: len(metrics)]  # without the mean, std, median rows


def main(scenes_path: str, out_path: str) -> None:
    scenes = np.load(scenes_path)
    tolerance = float(scenes["tolerance"])
    evaluators, groups, metrics = {}, {}, {}
    cases = []
    for i in range(len([k for k in scenes.files if k.startswith("pred_")])):
        config = str(scenes[f"config_{i}"])
        if config not in evaluators:
            evaluators[config] = Panoptica_Evaluator.load_from_config(str(config_path(config)))
            found = evaluators[config]._Panoptica_Evaluator__segmentation_class_groups.items()  # no public getter
            groups[config] = {name: [int(v) for v in group.value_labels] for name, group in found}
        pred, ref = scenes[f"pred_{i}"].astype(np.uint8), scenes[f"ref_{i}"].astype(np.uint8)
        spacing = tuple(float(s) for s in scenes[f"spacing_{i}"])
        results = evaluators[config].evaluate(pred, ref, voxelspacing=spacing, verbose=False)
        regions = {k: r.to_dict(True) for k, r in results.items()}
        metrics.setdefault(config, []).append({**regions, "subject_name": f"case{i:03d}"})
        surfaces = {}
        for name, values in groups[config].items():
            p, r = np.isin(pred, values), np.isin(ref, values)
            if p.any() and r.any():
                sd_ref, sd_pred = pairs._surface_distance_pair(r, p, voxelspacing=spacing)
                surfaces[name] = {
                    "hd95": float(pairs._hd95_from_pair(sd_ref, sd_pred)),
                    "nsd": float(pairs._nsd_from_pair(sd_ref, sd_pred, voxelspacing=spacing, threshold=tolerance)),
                }
        cases.append({"config": config, "groups": groups[config], "regions": regions, "surfaces": surfaces})
    rows = {config: iter(_parse(config, found)) for config, found in metrics.items()}
    for case in cases:
        case["rows"] = next(rows[case["config"]])
    Path(out_path).write_text(json.dumps(_plain(cases)))


if __name__ == "__main__":
    main(*sys.argv[1:])
