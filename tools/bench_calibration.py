"""Measure temperature scaling, the uncertainty scores and the quality flags on a trained fold's held-out real
cases.

For a fold folder of ``tools/bench_real.py`` (its ``train/last.pt`` and ``held_out.json``, a medseg manifest
of the held-out cases and their references), the held-out cases are split in two halves (alternating by
sorted case id). For each half H, with the other half as validation cases:

1. ``medseg calibrate`` fits a temperature on the other half (``calibrate``, its voxels sampled);
2. ``medseg predict --save-probabilities --save-uncertainty`` predicts H twice with the same weights: as
   trained (the baseline) and with ``inference.temperature_scaling=true``;
3. ``medseg evaluate`` scores both: Dice and the expected calibration error (15 equal-width bins, one label
   against the rest, every voxel of H pooled).

Each half prints one JSON line (temperature, the calibration voxels' NLL before and after, per-label ECE
before and after on H, mean Dice, the Spearman rank correlation over H's cases between each per-case
uncertainty score and the case's mean Dice, and how well the quality flags of ``summary.csv`` find H's worst
cases) and appends it to ``OUT/halves.jsonl``; a half already there is not run again, and ``medseg predict``
resumes its own outputs. The last line sums both halves up (case-weighted; flag counts added). Every figure
comes from the fold's real files: nothing here generates data.

The flags (:mod:`medseg.inference.quality`) are those of the temperature-scaled predictions: the ``uncertain``
threshold is the other half's (what ``medseg calibrate`` stored). The worst cases are the
:data:`WORST_SHARE` of H with the lowest mean Dice (at least one; ties by case id). Per flag, and for ``any``
flag: how many cases it flags, how many of them are among the worst (``precision``: that share; against
``base_rate``, the precision of flagging at random) and the share of the worst it flags (``recall``);
``top_uncertainty`` flags as many cases as there are worst ones, those of highest ``entropy_boundary``.

    .venv/bin/python tools/bench_calibration.py runs/bench_real/hippocampus/fold_0
    .venv/bin/python tools/bench_calibration.py runs/bench_real/hippocampus/fold_0 --out runs/calib_mirrored \\
        --infer-set 'inference.mirror_axes=[0, 1, 2]'    # fitted and predicted with test-time mirroring
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing it
sys.path.insert(0, str(REPO / "tools"))

from bench_real import append_record, read_records  # noqa: E402


def split_halves(manifest_path: Path, out: Path) -> list[Path]:
    """The held-out manifest's cases in two manifests (alternating by sorted id), under ``out``."""
    from medseg.data.manifest import load_manifest, save_manifest

    manifest = load_manifest(manifest_path)
    cases = sorted(manifest.cases, key=lambda c: c.id)
    paths = []
    for half in (0, 1):
        path = out / f"half_{half}.json"
        save_manifest(dataclasses.replace(manifest, cases=tuple(cases[half::2])), path)
        paths.append(path)
    return paths


def run_half(args: argparse.Namespace, half: int, halves: list[Path]) -> dict:
    """Calibrate on the other half, predict and score this one with and without the temperature."""
    from medseg.evaluation import evaluate_folder
    from medseg.inference import calibrate, predict_folder
    from medseg.inference.calibration import CalibrationParams

    tick = time.monotonic()
    cases, validation = halves[half], halves[1 - half]
    half_dir = args.out / f"half_{half}"
    model = half_dir / "calibrated.pt"
    result = calibrate(
        model=args.fold_dir / "train" / "last.pt",
        ref_dir=validation,
        out=model,
        cases_file=validation,
        device=args.device,
        inference_overrides=args.infer_set,
        params=CalibrationParams(voxels_per_case=args.voxels_per_case),
    )
    scored = {}
    for name, extra in (("as_trained", []), ("temperature", ["inference.temperature_scaling=true"])):
        pred, evaluation = half_dir / name / "predictions", half_dir / name / "evaluation"
        summary = predict_folder(
            model=model,
            input_path=None,
            cases_file=cases,
            output_dir=pred,
            save_probabilities=True,
            save_uncertainty=True,
            device=args.device,
            inference_overrides=[*args.infer_set, *extra],
            progress="none",
        )
        scores = evaluate_folder(pred_dir=pred, ref_dir=cases, out_dir=evaluation, only_predicted=True)
        dice = _case_dice(evaluation / "metrics.csv")
        rows = {row["case"]: row for row in csv.DictReader((pred / "summary.csv").open())}
        scored[name] = (scores, _rank_correlations(rows, dice), flag_precision(rows, dice))
        if summary.failed:
            raise SystemExit(f"{summary.failed} case(s) failed; see {pred / 'summary.csv'}")
    before, after = scored["as_trained"][0], scored["temperature"][0]
    return {
        "half": half,
        "cases": len(before["cases"]),
        "validation_cases": len(result.cases),
        "temperature": round(result.temperature, 4),
        "calibration_voxels": result.voxels,
        "calibration_nll": {"before": round(result.nll_before, 5), "after": round(result.nll_after, 5)},
        "ece": {
            label: {
                "before": round(stats["ece"], 5),
                "after": round(after["calibration"]["regions"][label]["ece"], 5),
                "n": stats["n"],
            }
            for label, stats in before["calibration"]["regions"].items()
        },
        "ece_bins": before["calibration"]["bins"],
        "mean_dice": round(_mean_dice(before), 4),
        "mean_dice_with_temperature": round(_mean_dice(after), 4),
        "spearman_vs_dice": scored["temperature"][1],
        "flags_vs_worst_dice": scored["temperature"][2],
        "minutes": round((time.monotonic() - tick) / 60, 2),
        "inference_overrides": list(args.infer_set),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def _mean_dice(summary: dict) -> float:
    return sum(s["dice"]["mean"] for s in summary["regions"].values()) / len(summary["regions"])


def _case_dice(metrics: Path) -> dict[str, float]:
    """Each case's mean Dice over its labels or regions (``metrics.csv`` of ``medseg evaluate``)."""
    dice: dict[str, list[float]] = {}
    for row in csv.DictReader(metrics.open()):
        dice.setdefault(row["case"], []).append(float(row["dice"]))
    return {case: sum(d) / len(d) for case, d in dice.items()}


def _rank_correlations(rows: dict[str, dict[str, str]], dice: dict[str, float]) -> dict[str, float | None]:
    """Spearman's rho over cases between each uncertainty score of ``summary.csv`` (``rows`` by case) and the
    case's mean Dice, over the cases that have the score (``None`` for fewer than three, or where scores or
    Dice are all alike)."""
    from medseg.inference import CASE_SCORES

    out: dict[str, float | None] = {}
    for score in CASE_SCORES:
        pairs = [(float(rows[c][score]), d) for c, d in dice.items() if rows.get(c, {}).get(score)]
        scores, dices = [s for s, _ in pairs], [d for _, d in pairs]
        ranked = len(pairs) >= 3 and len(set(scores)) > 1 and len(set(dices)) > 1  # else no ranking to compare
        rho = float(spearmanr(scores, dices).statistic) if ranked else math.nan
        out[score] = None if math.isnan(rho) else round(rho, 4)
    return out


WORST_SHARE = 0.1
"""The share of cases, lowest mean Dice first, that the flags should find."""


def flag_precision(rows: dict[str, dict[str, str]], dice: dict[str, float]) -> dict:
    """How well the ``flags`` of ``summary.csv`` (``rows`` by case) and the highest ``entropy_boundary`` find
    the :data:`WORST_SHARE` of cases with the lowest mean Dice (``dice`` by case); see the module docstring."""
    from medseg.inference.quality import FLAGS, UNCERTAINTY_SCORE

    cases = sorted(dice, key=lambda c: (dice[c], c))
    worst = set(cases[: max(1, math.ceil(WORST_SHARE * len(cases)))])
    flags = {c: set(filter(None, rows.get(c, {}).get("flags", "").split(";"))) for c in cases}
    scored = [c for c in cases if rows.get(c, {}).get(UNCERTAINTY_SCORE)]
    top = set(sorted(scored, key=lambda c: (-float(rows[c][UNCERTAINTY_SCORE]), c))[: len(worst)])
    flagged = {flag: {c for c in cases if flag in flags[c]} for flag in FLAGS}
    flagged["any"] = {c for c in cases if flags[c]}
    flagged["top_uncertainty"] = top
    return {
        "cases": len(cases),
        "worst": len(worst),
        "worst_dice_at_most": round(max(dice[c] for c in worst), 4),
        "base_rate": round(len(worst) / len(cases), 4),
        **{name: _hits(chosen, worst) for name, chosen in flagged.items()},
    }


def _hits(flagged: set[str], worst: set[str]) -> dict[str, float | int | None]:
    hits = len(flagged & worst)
    return {
        "flagged": len(flagged),
        "in_worst": hits,
        "precision": round(hits / len(flagged), 4) if flagged else None,
        "recall": round(hits / len(worst), 4),
    }


def _pooled_flags(records: list[dict]) -> dict:
    """The halves' :func:`flag_precision` added up: counts summed, precision and recall of the sums."""
    halves = [r["flags_vs_worst_dice"] for r in records]
    cases, worst = sum(h["cases"] for h in halves), sum(h["worst"] for h in halves)
    out: dict = {"cases": cases, "worst": worst, "base_rate": round(worst / cases, 4)}
    for name in (k for k, v in halves[0].items() if isinstance(v, dict)):
        flagged, hits = sum(h[name]["flagged"] for h in halves), sum(h[name]["in_worst"] for h in halves)
        precision = round(hits / flagged, 4) if flagged else None
        out[name] = {"flagged": flagged, "in_worst": hits, "precision": precision, "recall": round(hits / worst, 4)}
    return out


def summarize(records: list[dict]) -> dict:
    """Per-label ECE before and after and mean Dice over both halves (weighted by their cases)."""
    total = sum(r["cases"] for r in records)
    labels = records[0]["ece"]
    return {
        "summary": True,
        "cases": total,
        "temperatures": [r["temperature"] for r in records],
        "ece": {
            label: {
                when: round(sum(r["ece"][label][when] * r["cases"] for r in records) / total, 5)
                for when in ("before", "after")
            }
            for label in labels
        },
        "mean_dice": round(sum(r["mean_dice"] * r["cases"] for r in records) / total, 4),
        **({"flags_vs_worst_dice": _pooled_flags(records)} if all("flags_vs_worst_dice" in r for r in records) else {}),
        "minutes": round(sum(r["minutes"] for r in records), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fold_dir", type=Path, help="a tools/bench_real.py fold folder (train/last.pt, held_out.json)")
    parser.add_argument("--out", type=Path, default=None, help="default FOLD_DIR/calibration")
    parser.add_argument(
        "--infer-set", action="append", default=[], help="an inference override, as medseg predict --set"
    )
    parser.add_argument("--voxels-per-case", type=int, default=100_000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    args.out = args.out or args.fold_dir / "calibration"
    args.out.mkdir(parents=True, exist_ok=True)
    halves = split_halves(args.fold_dir / "held_out.json", args.out)
    lines = args.out / "halves.jsonl"
    records = read_records(lines)
    done = {r["half"] for r in records}
    for half in (0, 1):
        if half in done:
            continue
        record = run_half(args, half, halves)
        print(json.dumps(record), flush=True)
        append_record(lines, record)
        records.append(record)
    print(json.dumps(summarize(sorted(records, key=lambda r: r["half"]))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
