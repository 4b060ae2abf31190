"""Benchmark active learning (``medseg rank``) on real hippocampus scans: uncertainty-chosen against random.

On ``../shared/data/real/msd_hippocampus`` (208 labelled T1 MR crops) a fixed set of ``--held-out`` cases (40,
drawn once with seed 2026, the same for every run) is only ever scored; the other 168 are the pool. For each
seed, ``--initial`` pool cases (10, drawn with that seed) start labelled; each round trains
``configs/msd_hippocampus.yaml`` on the labelled cases alone (the seed's own folds; fold 0 validates) for a
short budget (``--epochs`` of the config's 50 steps; any ``--set train.*`` override), starting from the
weights of the round before (the model that chose the new cases, as a model is fine-tuned while labels
arrive; ``--from-scratch``: random weights every round), scores the last checkpoint on the held-out cases
(``medseg predict`` with the config's inference, then ``medseg evaluate``), and adds ``--step`` (10) pool
cases for the next round:

- ``uncertainty``: those ``medseg rank --top STEP --score SCORE`` chooses among the unlabelled pool cases
  (the case scores of :mod:`medseg.inference.uncertainty` with its diversity rule,
  :mod:`medseg.inference.ranking`);
- ``random``: a random draw from them (seeded by seed and round).

Round 0 (the initial cases) is trained once per seed and shared by both strategies. Each (strategy, seed, round)
prints one JSON line (labelled cases, per-label and mean Dice on the held-out cases, training minutes and
steps, the cases chosen for the next round) and appends it to ``OUT/rounds.jsonl``; a line already there is not
run again (the tool resumes, and reads the labelled cases of a round from the lines before it). The last line is
a summary over the complete curves: the area under each strategy's learning curve (mean Dice against the number
of labelled cases, trapezoids, divided by the range of that number: a mean Dice over the curve), per seed and
averaged over seeds, and ``OUT/learning_curves.png``.

Why the rounds continue from the round before: trained from random weights for a few hundred steps, a
hippocampus network is bound by its steps, not its labels (at 800 steps, 168 labelled cases beat 20 by only
0.018 mean Dice: ``docs/benchmarks/real-data.md``), so each round's score would measure the budget rather
than the cases chosen.

    .venv/bin/python tools/bench_active_learning.py                           # 4 rounds, seeds 0 1 2
    .venv/bin/python tools/bench_active_learning.py --epochs 1 --set train.iterations_per_epoch=2 \\
        --seeds 0 --rounds 1 --held-out 40 --pool 20 --out runs/bench_al_check   # a check of the tool only
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
from bench_real import MEDSEG, REAL, REPO, append_record, read_records, run_stage, training_done

CONFIG = "configs/msd_hippocampus.yaml"
DATA = REAL / "msd_hippocampus"
HELD_OUT_SEED = 2026
STRATEGIES = ("uncertainty", "random")


def split_cases(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The fixed held-out case ids and the pool's (at most ``--pool`` of them), sorted."""
    from medseg.data.manifest import build_manifest

    ids = sorted(c.id for c in build_manifest(DATA, layout="msd").cases)
    order = np.random.default_rng(HELD_OUT_SEED).permutation(len(ids))
    held_out = sorted(ids[i] for i in order[: args.held_out])
    pool = sorted(ids[i] for i in order[args.held_out :])
    return held_out, pool[: args.pool] if args.pool is not None else pool


def write_manifest(ids: list[str], path: Path, *, seed: int) -> Path:
    """A manifest of the hippocampus cases ``ids`` (their own folds, dealt with ``seed``), rooted at the data."""
    from medseg.data.manifest import assign_folds, build_manifest, save_manifest

    full = build_manifest(DATA, layout="msd")
    chosen = tuple(c for c in full.cases if c.id in set(ids))
    manifest = dataclasses.replace(
        full, cases=tuple(assign_folds(chosen, num_folds=full.num_folds, seed=seed)), root=DATA
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_manifest(manifest, path)


def train_and_score(
    args: argparse.Namespace, labelled: list[str], seed: int, folder: Path, held_out: Path, *, init: Path | None
) -> dict:
    """Train on ``labelled`` in ``folder`` (resumed, or skipped when done), from the weights of checkpoint
    ``init`` (``None``: random weights), and score ``last.pt`` on ``held_out``."""
    from medseg.config import load_config

    run_dir, log = folder / "train", folder / "log.txt"
    manifest = write_manifest(labelled, folder / "labelled.json", seed=seed)
    overrides = [
        "train.max_minutes=null",  # every round trains its steps, however busy the machine
        f"seed={seed}",
        f"data.manifest={manifest}",
        "data.root=null",
        f"train.run_dir={run_dir}",
        f"train.epochs={args.epochs}",
        f"train.val_every={args.epochs}",
        *([] if init is None else [f"train.init_weights={init}"]),
        *args.set,
    ]
    config = load_config(REPO / CONFIG, overrides).to_dict()
    if not training_done(run_dir, config):
        resume = ["--resume"] if (run_dir / "last.pt").is_file() else []
        sets = [a for o in overrides for a in ("--set", o)]
        run_stage([*MEDSEG, "train", "--config", CONFIG, *sets, *resume], log)
    pred_dir, eval_dir = folder / "predictions", folder / "evaluation"
    if not (eval_dir / "summary.json").is_file():
        model = ["--model", str(run_dir / "last.pt")]
        run_stage([*MEDSEG, "predict", *model, "--cases", str(held_out), "--output", str(pred_dir)], log)
        scoring = ["--nsd-tolerance", "1", "--only-predicted"]
        run_stage(
            [*MEDSEG, "evaluate", "--pred", str(pred_dir), "--ref", str(held_out), "--out", str(eval_dir), *scoring],
            log,
        )
    summary = json.loads((eval_dir / "summary.json").read_text())
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    dice = {name: round(stats["dice"]["mean"], 4) for name, stats in summary["regions"].items()}
    return {
        "dice": dice,
        "mean_dice": round(sum(dice.values()) / len(dice), 4),
        "held_out_cases": len(summary["cases"]),
        "train_minutes": round(sum(float(r["seconds"]) for r in rows) / 60, 2),
        "train_steps": int(rows[-1]["epoch"]) * config["train"]["iterations_per_epoch"],
    }


def choose(
    args: argparse.Namespace, strategy: str, seed: int, round_: int, unlabelled: list[str], folder: Path
) -> list[str]:
    """The ``--step`` cases of ``unlabelled`` to label next."""
    if strategy == "random":
        rng = np.random.default_rng([seed, round_])
        return sorted(unlabelled[i] for i in rng.permutation(len(unlabelled))[: args.step])
    ranking = folder / f"ranking_{strategy}.csv"
    if not ranking.is_file():
        cases = write_manifest(unlabelled, folder / "unlabelled.json", seed=seed)
        model = ["--model", str(folder / "train" / "last.pt")]
        command = ["rank", *model, "--cases", str(cases), "--top", str(args.step), "--score", args.score]
        run_stage([*MEDSEG, *command, "--output", str(ranking), "--progress", "none"], folder / "log.txt")
    with ranking.open(newline="") as fh:
        return [row["case"] for row in csv.DictReader(fh)]


def run_curve(args: argparse.Namespace, strategy: str, seed: int, held_out: Path, pool: list[str], done: dict) -> None:
    """Every round of one strategy and seed not in ``done`` (keyed by (strategy, seed, round)), appended to the
    results file and printed."""
    order = np.random.default_rng(seed).permutation(len(pool))
    labelled = sorted(pool[i] for i in order[: args.initial])
    previous: Path | None = None  # the last round's model: the one that chose this round's cases
    for round_ in range(args.rounds + 1):
        key = (strategy, seed, round_)
        folder = args.out / f"seed_{seed}" / ("round_0" if round_ == 0 else f"{strategy}/round_{round_}")
        if key not in done:
            init = None if args.from_scratch or previous is None else previous / "train" / "last.pt"
            record = {"strategy": strategy, "seed": seed, "round": round_, "labelled": len(labelled)}
            record |= train_and_score(args, labelled, seed, folder, held_out, init=init)
            taken = set(labelled)
            unlabelled = [c for c in pool if c not in taken]
            record["chosen_next"] = (
                choose(args, strategy, seed, round_, unlabelled, folder) if round_ < args.rounds else []
            )
            record |= {"labelled_cases": labelled, "epochs": args.epochs, "warm_start": init is not None}
            record["overrides"] = list(args.set)
            record["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
            done[key] = record
            append_record(args.out / "rounds.jsonl", record)
        print(json.dumps({k: v for k, v in done[key].items() if k != "labelled_cases"}), flush=True)
        labelled = sorted(done[key]["labelled_cases"] + done[key]["chosen_next"])
        previous = folder


def area_under_curve(labelled: list[int], dice: list[float]) -> float:
    """Trapezoid area under mean Dice against labelled cases, divided by the range of labelled cases."""
    x, y = np.asarray(labelled, dtype=float), np.asarray(dice, dtype=float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def summarize(args: argparse.Namespace, done: dict) -> dict:
    """Areas under the complete curves and the learning-curve plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    areas: dict[str, dict[int, float]] = {}
    for strategy, colour in zip(STRATEGIES, ("tab:red", "tab:blue"), strict=True):
        curves = []
        for seed in args.seeds:
            records = [done.get((strategy, seed, r)) for r in range(args.rounds + 1)]
            if any(r is None for r in records):
                continue
            x = [r["labelled"] for r in records]
            y = [r["mean_dice"] for r in records]
            areas.setdefault(strategy, {})[seed] = round(area_under_curve(x, y), 4)
            axes.plot(x, y, color=colour, alpha=0.3, linewidth=1)
            curves.append(y)
        if curves:
            axes.plot(
                x,
                np.mean(curves, 0),
                color=colour,
                marker="o",
                label=f"{strategy} ({len(curves)} seed{'s' * (len(curves) > 1)})",
            )
    axes.set_xlabel("labelled training cases")
    axes.set_ylabel("mean Dice, held-out cases")
    axes.set_title(f"Hippocampus active learning ({args.held_out} held-out cases)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    plot = args.out / "learning_curves.png"
    figure.savefig(plot)
    mean_area = {s: round(float(np.mean(list(a.values()))), 4) for s, a in areas.items()}
    return {
        "summary": "active_learning",
        "score": args.score,
        "area_under_curve": mean_area,
        "area_per_seed": areas,
        "uncertainty_above_random": (
            mean_area["uncertainty"] > mean_area["random"] if len(mean_area) == len(STRATEGIES) else None
        ),
        "rounds": args.rounds,
        "initial": args.initial,
        "step": args.step,
        "epochs_per_round": args.epochs,
        "warm_start": not args.from_scratch,
        "plot": str(plot),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_active_learning")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--rounds", type=int, default=4, help="rounds that add cases (default 4)")
    parser.add_argument("--initial", type=int, default=10, help="labelled cases to start from (default 10)")
    parser.add_argument("--step", type=int, default=10, help="cases added per round (default 10)")
    parser.add_argument("--held-out", type=int, default=40, help="held-out cases (default 40)")
    parser.add_argument("--pool", type=int, default=None, help="use only this many pool cases (a quick check)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per round (default 6: 300 steps)")
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="train each round from random weights (default: the last round's)",
    )
    parser.add_argument("--score", default="entropy_boundary", help="medseg rank --score (default entropy_boundary)")
    parser.add_argument("--set", action="append", default=[], help="a config override for training, e.g. train.lr=0.01")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # run from a checkout without installing it
    if not DATA.is_dir():
        print(f"bench_active_learning: {DATA} is absent: the real datasets are not on this machine", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    held_out_ids, pool = split_cases(args)
    if args.initial + args.rounds * args.step > len(pool):
        parser.error(f"{args.initial} + {args.rounds} x {args.step} cases is more than the pool's {len(pool)}")
    held_out = write_manifest(held_out_ids, args.out / "held_out.json", seed=0)
    done = {(r["strategy"], r["seed"], r["round"]): r for r in read_records(args.out / "rounds.jsonl")}
    for seed in args.seeds:
        for strategy in args.strategies:  # round 0's model lies in seed_S/round_0, trained for the first
            run_curve(args, strategy, seed, held_out, pool, done)
    print(json.dumps(summarize(args, done)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
