"""Benchmark medseg on real labelled scans: train, predict the held-out cases, score, fold by fold.

For a dataset of ``../shared/data/real/`` (see its README) and a config, every fold runs the user's own
commands, each in its own process (so its peak RSS is its own):

1. ``medseg train --config CFG --set data.fold=K ...`` (resumed with ``--resume`` when an earlier run
   was interrupted; a fold whose training finished, or spent ``train.max_minutes``, is not trained again);
2. ``medseg predict --model RUN/last.pt --cases HELD_OUT.json --output PRED`` on the fold's held-out
   cases (the last checkpoint, not the one validation chose: in k-fold cross-validation the held-out
   cases are the validation cases, and choosing on them would flatter the score);
3. ``medseg evaluate --pred PRED --ref REF --only-predicted`` (Dice, HD95 in mm, NSD at the dataset's
   tolerance; labels a partially labelled case does not annotate are not scored).

Splits: ``kfold`` datasets (hippocampus, BraTS 2018) hold out fold K of the dataset's own patient-level
split; ``fixed`` datasets (OpenKBP) train on one split folder (fold 0 of it validates) and score every
case of another.

Each fold prints one JSON line (per-label Dice, HD95 and NSD mean over its held-out cases, training
minutes and steps, inference seconds per case, peak RSS of each stage) and appends it to
``OUT/folds.jsonl``; a fold already there is not run again (the tool resumes). The last line is a
summary over every held-out case of the folds run so far, beside the published reference figure; those
cases' scores are also gathered in ``OUT/pooled/`` (``metrics.csv`` as ``medseg evaluate`` writes it, so
that ``medseg compare`` pairs two runs case by case, and its plot ``metrics.png``).
Every figure comes from these real files: nothing here generates data.

    .venv/bin/python tools/bench_real.py hippocampus --folds 0 1          # two folds of five
    .venv/bin/python tools/bench_real.py openkbp --out runs/bench_real/openkbp_nomask \\
        --set loss.mask_unlabelled=false                                   # the partial-label ablation
    .venv/bin/python tools/bench_real.py hippocampus --folds 0 --variant mirrored \\
        --infer-set 'inference.mirror_axes=[0, 1, 2]'                      # the same weights, predicted otherwise

A ``--variant`` predicts and scores the folds' trained weights again with ``--infer-set`` inference
settings (``medseg predict --set``), into ``fold_K/VARIANT/``; its lines carry its name.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
MEDSEG = [sys.executable, "-m", "medseg"]


@dataclass(frozen=True)
class Dataset:
    """A real dataset: where it lies, how it is split, and what was published on its full version."""

    config: str
    split: str  # "kfold" or "fixed"
    nsd_tolerance_mm: float
    reference: str
    test_root: str | None = None  # fixed split: the folder scored
    test_layout: str | None = None


DATASETS: dict[str, Dataset] = {
    "hippocampus": Dataset(
        "configs/msd_hippocampus.yaml",
        "kfold",
        1.0,
        "nnU-Net (Isensee et al., Nat Methods 2021), MSD test set: Dice Anterior 0.90, Posterior 0.89",
    ),
    "brats2018": Dataset(
        "configs/brats2018_real.yaml",
        "kfold",
        1.0,
        "BraTS 2018 top methods on its validation set (Bakas et al. 2018): Dice WT 0.88-0.91, TC 0.80-0.87,"
        " ET 0.77-0.82",
    ),
    "openkbp": Dataset(
        "configs/openkbp_oars.yaml",
        "fixed",
        3.0,
        "target (issue 23): mean organ Dice >= 0.80 over contoured organs; no published OAR segmentation"
        " figure on OpenKBP",
        test_root=str(REAL / "openkbp" / "validation-pats"),
        test_layout="openkbp",
    ),
}


def read_records(path: Path) -> list[dict]:
    """The JSON lines a benchmark appended to ``path`` so far (none before its first), in order."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def append_record(path: Path, record: dict) -> None:
    """Append ``record`` to ``path`` as one JSON line: what a resumed benchmark reads back as done."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def run_stage(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO
) -> tuple[float, float]:
    """Run ``command`` in ``cwd`` (and environment ``env``, default this one's) with its output appended to
    ``log``; return (seconds, peak RSS in GB).

    Raises:
        SystemExit: the command failed (its log names why).
    """
    started = time.monotonic()
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench_real: failed: {' '.join(command)} (see {log})")
    return time.monotonic() - started, usage.ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def training_done(run_dir: Path, config: dict) -> bool:
    """Whether the run reached its last epoch or spent ``train.max_minutes`` (summed epoch times)."""
    metrics = run_dir / "metrics.csv"
    if not (run_dir / "last.pt").is_file() or not metrics.is_file():
        return False
    rows = list(csv.DictReader(metrics.open()))
    if not rows:
        return False
    minutes = sum(float(r["seconds"]) for r in rows) / 60
    limit = config["train"]["max_minutes"]
    return int(rows[-1]["epoch"]) >= config["train"]["epochs"] or (limit is not None and minutes >= limit)


def held_out_cases(args: argparse.Namespace, dataset: Dataset, fold: int, fold_dir: Path) -> tuple[Path, Path]:
    """The held-out cases as a medseg manifest (what ``medseg predict --cases`` reads) and the
    reference to score against (the same manifest: its labels, and which labels each case annotates)."""
    from medseg.config import load_config
    from medseg.data.manifest import build_manifest, save_manifest
    from medseg.training import load_dataset_manifest

    path = fold_dir / "held_out.json"
    if dataset.split == "kfold":
        config = load_config(REPO / dataset.config, [*args.set, f"data.fold={fold}"])
        manifest, root = load_dataset_manifest(config)
        _, held_out = manifest.split(fold)
        manifest = dataclasses.replace(manifest, cases=tuple(held_out), root=root)
    else:
        manifest = build_manifest(dataset.test_root, layout=dataset.test_layout)
        manifest = dataclasses.replace(manifest, root=Path(dataset.test_root))
    save_manifest(manifest, path)
    return path, path


def run_fold(args: argparse.Namespace, dataset: Dataset, fold: int) -> dict:
    """Train, predict and score one fold; its JSON record."""
    from medseg.config import load_config

    fold_dir = args.out / f"fold_{fold}"
    scored = fold_dir / args.variant if args.variant else fold_dir
    run_dir, pred_dir, eval_dir = fold_dir / "train", scored / "predictions", scored / "evaluation"
    fold_dir.mkdir(parents=True, exist_ok=True)
    log = fold_dir / "log.txt"
    overrides = [*args.set, f"data.fold={fold}", f"train.run_dir={run_dir}"]
    config = load_config(REPO / dataset.config, overrides).to_dict()
    sets = [a for o in overrides for a in ("--set", o)]
    train_rss: float | None = None  # trained before this run: not measured
    if not training_done(run_dir, config):
        resume = ["--resume"] if (run_dir / "last.pt").is_file() else []
        _, train_rss = run_stage([*MEDSEG, "train", "--config", dataset.config, *sets, *resume], log)
    cases, reference = held_out_cases(args, dataset, fold, fold_dir)
    inference = [a for o in args.infer_set for a in ("--set", o)]
    model = ["--model", str(run_dir / "last.pt")]
    predict_s, predict_rss = run_stage(
        [*MEDSEG, "predict", *model, "--cases", str(cases), "--output", str(pred_dir), *inference], log
    )
    scoring = ["--nsd-tolerance", f"{dataset.nsd_tolerance_mm:g}", "--only-predicted"]
    _, evaluate_rss = run_stage(
        [*MEDSEG, "evaluate", "--pred", str(pred_dir), "--ref", str(reference), "--out", str(eval_dir), *scoring],
        log,
    )
    summary = json.loads((eval_dir / "summary.json").read_text())
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    n = len(summary["cases"])
    return {
        "dataset": args.dataset,
        "fold": fold,
        "variant": args.variant,
        "held_out_cases": n,
        "labels": {
            name: {m: round(stats[m]["mean"], 4) for m in ("dice", "hd95", "nsd")} | {"n": stats["n"]}
            for name, stats in summary["regions"].items()
        },
        "mean_dice": round(sum(s["dice"]["mean"] for s in summary["regions"].values()) / len(summary["regions"]), 4),
        "nsd_tolerance_mm": dataset.nsd_tolerance_mm,
        "train_minutes": round(sum(float(r["seconds"]) for r in rows) / 60, 1),
        "train_steps": int(rows[-1]["epoch"]) * config["train"]["iterations_per_epoch"],
        "inference_s_per_case": round(predict_s / max(n, 1), 2),
        "peak_rss_gb": {
            "train": None if train_rss is None else round(train_rss, 2),
            "predict": round(predict_rss, 2),
            "evaluate": round(evaluate_rss, 2),
        },
        "config": dataset.config,
        "overrides": list(args.set),
        "inference_overrides": list(args.infer_set),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def summarize(args: argparse.Namespace, dataset: Dataset, records: list[dict]) -> dict:
    """Per-label Dice, HD95 and NSD over every held-out case of the folds run (case-weighted)."""
    totals: dict[str, dict[str, float]] = {}
    for record in records:
        for name, stats in record["labels"].items():
            t = totals.setdefault(name, {"n": 0, "dice": 0.0, "hd95": 0.0, "nsd": 0.0})
            t["n"] += stats["n"]
            for m in ("dice", "hd95", "nsd"):
                t[m] += stats[m] * stats["n"]
    labels = {
        k: {m: round(v[m] / v["n"], 4) for m in ("dice", "hd95", "nsd")} | {"n": v["n"]} for k, v in totals.items()
    }
    return {
        "summary": args.dataset,
        "variant": args.variant,
        "folds": sorted(r["fold"] for r in records),
        "held_out_cases": sum(r["held_out_cases"] for r in records),
        "labels": labels,
        "mean_dice": round(sum(v["dice"] for v in labels.values()) / max(len(labels), 1), 4),
        "train_minutes_per_fold": round(sum(r["train_minutes"] for r in records) / max(len(records), 1), 1),
        "inference_s_per_case": round(sum(r["inference_s_per_case"] for r in records) / max(len(records), 1), 2),
        "reference": dataset.reference,
    }


def write_pooled(args: argparse.Namespace, folds: list[int]) -> Path:
    """Gather the held-out cases' scores of ``folds`` into one evaluation folder, ``OUT/pooled/`` (or
    ``OUT/pooled-VARIANT/``): ``metrics.csv`` and its plot ``metrics.png``; the folder."""
    from medseg.evaluation.files import Metrics, read_metrics_csv, write_metrics_csv
    from medseg.evaluation.plot import plot_scores

    scored = [args.out / f"fold_{fold}" / (args.variant or "") / "evaluation" / "metrics.csv" for fold in folds]
    per_fold = [read_metrics_csv(path) for path in scored]
    pooled = Metrics({case: s for m in per_fold for case, s in m.scores.items()}, per_fold[0].nsd_tolerance_mm)
    out = args.out / (f"pooled-{args.variant}" if args.variant else "pooled")
    write_metrics_csv(out / "metrics.csv", pooled)
    plot_scores({args.dataset: pooled.scores}, out / "metrics.png", nsd_tolerance_mm=pooled.nsd_tolerance_mm)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="kfold: which folds (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="default runs/bench_real/DATASET")
    parser.add_argument("--set", action="append", default=[], help="a config override, as medseg train --set")
    parser.add_argument("--variant", default=None, help="name of a prediction variant of the trained folds")
    parser.add_argument("--infer-set", action="append", default=[], help="with --variant: an inference override")
    args = parser.parse_args(argv)
    if not REAL.is_dir():
        print(f"bench_real: {REAL} is absent: the real datasets are not on this machine", file=sys.stderr)
        return 2
    dataset = DATASETS[args.dataset]
    args.out = args.out or REPO / "runs" / "bench_real" / args.dataset
    args.out.mkdir(parents=True, exist_ok=True)
    if dataset.split == "kfold":
        from medseg.config import load_config

        num_folds = load_config(REPO / dataset.config, args.set).data.num_folds
        folds = args.folds if args.folds is not None else list(range(num_folds))
    else:
        folds = [0]
    if bool(args.variant) != bool(args.infer_set):
        parser.error("--variant and --infer-set go together")
    results = args.out / (f"folds-{args.variant}.jsonl" if args.variant else "folds.jsonl")
    done = {r["fold"]: r for r in read_records(results)}
    for fold in folds:
        if fold not in done:
            done[fold] = run_fold(args, dataset, fold)
            append_record(results, done[fold])
        print(json.dumps(done[fold]), flush=True)
    print(json.dumps(summarize(args, dataset, [done[f] for f in folds])), flush=True)
    write_pooled(args, folds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
