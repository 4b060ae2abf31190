"""Measure semi-supervised training on real hippocampus MR: what unlabelled cases add to few labels.

The 208 labelled cases of ``../shared/data/real/msd_hippocampus`` are split once (``--split-seed``) into 40
held-out cases, fixed for every run, and a pool of 168 training cases. Each seed S draws its 20 labelled
cases from the pool (``random.Random(S)``); the pool's other 148 are its unlabelled cases. The arms of a
seed share the config, steps and seed, each trained by ``medseg train`` in its own process (resumed with
``--resume`` when an earlier run was interrupted):

- ``supervised_few``: the 20 labelled cases only;
- ``mean_teacher`` and ``fixmatch``: the same 20, plus the 148 without their labels
  (``semi_supervised.unlabelled``), with that ``semi_supervised.method``;
- ``self_training``: the same 20, plus the 148 labelled by the seed's ``supervised_few`` model (its
  ``last.pt`` as ``semi_supervised.teacher``; so that arm runs first);
- ``supervised_all``: all 168 labelled (the ceiling the unlabelled cases can at most reach).

The held-out cases are the validation fold of every run (``data.fold=1`` of the split's manifest), and the
last checkpoint predicts them (``last.pt``: the teacher of a semi-supervised run; not the checkpoint that
validation chose, which would flatter the score), scored by ``medseg evaluate`` (Dice per label, mean over
labels per case). ``train.max_minutes`` is off unless ``--set`` names it, so every arm takes the same steps;
a ``--set semi_supervised.*`` reaches only the arms that use the unlabelled cases.

Each run prints one JSON line (mean Dice, per-case Dice, training minutes and steps; for a mean teacher or
FixMatch arm also its student's mean Dice, the weights the optimizer trained, scored the same way) and appends it to
``OUT/runs.jsonl``; a run already there is not trained again (the tool resumes), so arms may be added to an
``OUT`` later with ``--arms``. The last line is the summary, per semi-supervised method, over the seeds whose
two supervised arms and that method are done: the arms' mean Dice, the method's gain over
``supervised_few`` paired per held-out case (its mean, standard error over cases and Wilcoxon signed-rank p,
each case's gain averaged over seeds), the gap from ``supervised_few`` to ``supervised_all`` and the share of it
closed (gain / gap), and whether the gain reaches issue 27's 0.02; ``OUT/semi_supervised.png`` plots the arms
and the per-case gains against the target. Every figure comes from these real files.

    .venv/bin/python tools/bench_semi_supervised.py                          # 3 seeds x 4 arms, the config's budget
    .venv/bin/python tools/bench_semi_supervised.py --seeds 0 --out /tmp/ssl_check \\
        --set train.epochs=1 --set train.iterations_per_epoch=2              # an end-to-end check in minutes
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
from pathlib import Path

from scipy.stats import wilcoxon

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing it
sys.path.insert(0, str(REPO / "tools"))

from bench_real import MEDSEG, REAL, append_record, read_records, run_stage, training_done  # noqa: E402

DATASET = REAL / "msd_hippocampus"
METHODS = ("mean_teacher", "fixmatch", "self_training")  # semi_supervised.method, an arm each
WITH_STUDENT = ("mean_teacher", "fixmatch")  # the methods whose checkpoint also holds the student
ARMS = ("supervised_few", *METHODS, "supervised_all")
TARGET_GAIN = 0.02  # issue 27: mean Dice over supervised-only on the same labels, paired over cases


def split_manifests(out: Path, *, split_seed: int, held_out: int, labelled: int, seed: int) -> dict[str, Path]:
    """The manifests of seed ``seed``'s runs, under ``out`` (each naming the dataset as its root): the
    held-out cases (fold 1 of every manifest), ``few`` (``labelled`` labelled cases, the rest of the pool
    without labels) and ``all`` (the whole pool labelled)."""
    from medseg.data.manifest import build_manifest, save_manifest

    manifest = dataclasses.replace(build_manifest(DATASET, layout="msd", num_folds=2, seed=split_seed), root=DATASET)
    cases = sorted(manifest.cases, key=lambda c: c.id)
    random.Random(split_seed).shuffle(cases)
    test = [dataclasses.replace(c, fold=1) for c in cases[:held_out]]
    pool = [dataclasses.replace(c, fold=0) for c in cases[held_out:]]
    chosen = {c.id for c in random.Random(seed).sample(pool, labelled)}
    few = [c if c.id in chosen else dataclasses.replace(c, label=None) for c in pool]
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, selected in (("held_out", test), ("few", few + test), ("all", pool + test)):
        paths[name] = save_manifest(dataclasses.replace(manifest, cases=tuple(selected)), out / f"{name}.json")
    return paths


def per_case_dice(metrics_csv: Path) -> dict[str, float]:
    """Each case's mean Dice over the labels scored in it (``medseg evaluate``'s ``metrics.csv``)."""
    scores: dict[str, list[float]] = {}
    for row in csv.DictReader(metrics_csv.open()):
        if row["dice"] not in ("", "nan"):
            scores.setdefault(row["case"], []).append(float(row["dice"]))
    return {case: sum(v) / len(v) for case, v in sorted(scores.items())}


def student_checkpoint(checkpoint: Path, out: Path) -> Path:
    """A copy of a mean teacher run's ``checkpoint`` whose weights are its student's (kept in the training
    state for ``--resume``), without the training state, at ``out``."""
    from medseg.checkpoint import load_checkpoint, save_checkpoint

    teacher = load_checkpoint(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(dataclasses.replace(teacher, state_dict=teacher.training["student"], training=None), out)


def score_held_out(args: argparse.Namespace, model: Path, held_out: Path, out: Path) -> dict[str, float]:
    """Predict the held-out cases with ``model`` into ``out/predictions``, score them into ``out/evaluation``
    (``medseg evaluate``); each case's mean Dice over its labels."""
    from medseg.evaluation import evaluate_folder
    from medseg.inference import predict_folder

    pred, evaluation = out / "predictions", out / "evaluation"
    summary = predict_folder(
        model=model, input_path=None, cases_file=held_out, output_dir=pred, device=args.device, progress="none"
    )
    if summary.failed:
        raise SystemExit(f"bench_semi_supervised: {summary.failed} case(s) failed; see {pred / 'summary.csv'}")
    evaluate_folder(pred_dir=pred, ref_dir=held_out, out_dir=evaluation, only_predicted=True)
    return per_case_dice(evaluation / "metrics.csv")


def run_arm(args: argparse.Namespace, arm: str, seed: int) -> dict:
    """Train, predict and score one arm of one seed; its JSON record."""
    from medseg.config import load_config
    from medseg.data.manifest import load_manifest

    seed_dir = args.out / f"seed_{seed}"
    manifests = split_manifests(
        seed_dir / "split", split_seed=args.split_seed, held_out=args.held_out, labelled=args.labelled, seed=seed
    )
    arm_dir = seed_dir / arm
    run_dir = arm_dir / "train"
    arm_dir.mkdir(parents=True, exist_ok=True)
    manifest = manifests["all" if arm == "supervised_all" else "few"]
    # a semi_supervised.* setting is for the arms that use the unlabelled cases
    arm_sets = [o for o in args.set if arm in METHODS or not o.startswith("semi_supervised.")]
    overrides = [
        "train.max_minutes=null",
        *arm_sets,
        f"seed={seed}",
        f"data.root={DATASET}",
        f"data.manifest={manifest}",
        "data.fold=1",
        f"train.run_dir={run_dir}",
    ]
    if arm in METHODS:
        overrides += [f"semi_supervised.unlabelled={manifest}", f"semi_supervised.method={arm}"]
    if arm == "self_training":
        teacher = seed_dir / "supervised_few" / "train" / "last.pt"
        if not teacher.is_file():
            raise SystemExit(f"bench_semi_supervised: self_training labels with {teacher}: run supervised_few first")
        overrides.append(f"semi_supervised.teacher={teacher}")
    config = load_config(REPO / args.config, overrides).to_dict()
    if not training_done(run_dir, config):
        resume = ["--resume"] if (run_dir / "last.pt").is_file() else []
        sets = [a for o in overrides for a in ("--set", o)]
        run_stage([*MEDSEG, "train", "--config", args.config, *sets, *resume], arm_dir / "log.txt")
    dice = score_held_out(args, run_dir / "last.pt", manifests["held_out"], arm_dir)
    student = None
    if arm in WITH_STUDENT:  # the student apart: what the consistency term did, the teacher's averaging aside
        weights = student_checkpoint(run_dir / "last.pt", arm_dir / "student" / "student.pt")
        student = score_held_out(args, weights, manifests["held_out"], arm_dir / "student")
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    pool = sum(c.fold == 0 for c in load_manifest(manifests["all"]).cases)
    return {
        "arm": arm,
        "seed": seed,
        "labelled_cases": args.labelled if arm != "supervised_all" else pool,
        "unlabelled_cases": pool - args.labelled if arm in METHODS else 0,
        "held_out_cases": len(dice),
        "mean_dice": round(statistics.fmean(dice.values()), 4),
        "per_case_dice": {case: round(v, 5) for case, v in dice.items()},
        "student_mean_dice": None if student is None else round(statistics.fmean(student.values()), 4),
        "train_minutes": round(sum(float(r["seconds"]) for r in rows) / 60, 1),
        "train_steps": int(rows[-1]["epoch"]) * config["train"]["iterations_per_epoch"],
        "last_consistency_loss": float(rows[-1]["consistency_loss"]) if "consistency_loss" in rows[-1] else None,
        "config": args.config,
        "overrides": arm_sets,
        "split_seed": args.split_seed,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def seed_mean_per_case(records: dict[tuple[str, int], dict], arm: str, seeds: list[int]) -> list[float]:
    """Each held-out case's Dice under ``arm``, averaged over ``seeds``, in the order of the sorted case ids."""
    cases = sorted(records[(arm, seeds[0])]["per_case_dice"])
    return [statistics.fmean(records[(arm, s)]["per_case_dice"][c] for s in seeds) for c in cases]


def summarize_method(records: dict[tuple[str, int], dict], method: str) -> dict | None:
    """The gain of ``method`` over supervised-only on the same labels, paired per held-out case, and the
    share of the gap to all labels it closes, over the seeds whose two supervised arms and ``method`` are
    done; ``None`` where there is no such seed."""
    arms = ("supervised_few", method, "supervised_all")
    seeds = sorted({s for _, s in records if all((a, s) in records for a in arms)})
    if not seeds:
        return None
    sup, semi, full = (seed_mean_per_case(records, a, seeds) for a in arms)
    gains = [b - a for a, b in zip(sup, semi, strict=True)]
    gain, gap = statistics.fmean(gains), statistics.fmean(full) - statistics.fmean(sup)
    p_value = float(wilcoxon(gains).pvalue) if any(gains) else 1.0
    return {
        "seeds": seeds,
        "held_out_cases": len(gains),
        "mean_dice": {a: round(statistics.fmean(v), 4) for a, v in zip(arms, (sup, semi, full), strict=True)},
        "mean_dice_per_seed": {a: [records[(a, s)]["mean_dice"] for s in seeds] for a in arms},
        "student_mean_dice_per_seed": [records[(method, s)].get("student_mean_dice") for s in seeds],
        "gain": round(gain, 4),
        "gain_standard_error": round(statistics.stdev(gains) / len(gains) ** 0.5, 4) if len(gains) > 1 else None,
        "gain_wilcoxon_p": float(f"{p_value:.3g}"),
        "gap_to_all_labelled": round(gap, 4),
        "share_of_gap_closed": round(gain / gap, 3) if gap > 0 else None,
        "meets_target": gain >= TARGET_GAIN,
        "train_minutes_per_run": {
            a: round(statistics.fmean(records[(a, s)]["train_minutes"] for s in seeds), 1) for a in arms
        },
    }


def summarize(records: dict[tuple[str, int], dict]) -> dict:
    """:func:`summarize_method` for each semi-supervised method with a finished seed."""
    methods = {m: summarize_method(records, m) for m in METHODS}
    return {
        "summary": "semi_supervised",
        "target_gain": TARGET_GAIN,
        "methods": {m: result for m, result in methods.items() if result is not None},
    }


def plot_summary(records: dict[tuple[str, int], dict], summary: dict, path: Path) -> Path:
    """Two panels at ``path``: each arm's mean held-out Dice (a dot per seed, a bar for their mean) and, per
    method of ``summary``, each held-out case's gain over ``supervised_few`` (averaged over its seeds), sorted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(figure)
    arms_axes, gains = figure.subplots(1, 2, width_ratios=(1, 2))
    arms = [a for a in ARMS if any(k[0] == a for k in records)]
    for i, arm in enumerate(arms):
        values = [r["mean_dice"] for (a, _), r in sorted(records.items()) if a == arm]
        arms_axes.bar(i, statistics.fmean(values), color="lightgrey")
        arms_axes.plot([i] * len(values), values, "o", color="black")
    arms_axes.set_xticks(range(len(arms)), [a.replace("_", "\n") for a in arms], fontsize=8)
    arms_axes.set_ylabel("mean Dice, held-out cases (a dot per seed)")
    low = min(r["mean_dice"] for r in records.values())
    arms_axes.set_ylim(max(0.0, low - 0.05), 1.0)
    for method, result in summary["methods"].items():
        few, semi = (seed_mean_per_case(records, a, result["seeds"]) for a in ("supervised_few", method))
        gain = sorted(b - a for a, b in zip(few, semi, strict=True))
        seeds = len(result["seeds"])
        label = f"{method}: mean {result['gain']:+.3f} ({seeds} seed{'s' * (seeds > 1)})"
        gains.step(range(len(gain)), gain, where="mid", label=label)
    gains.axhline(0, color="grey", linewidth=0.8)
    gains.axhline(TARGET_GAIN, color="tab:green", linestyle=":", label=f"target {TARGET_GAIN:+.2f}")
    gains.set_xlabel("held-out case (sorted by gain)")
    gains.set_ylabel("Dice gain over supervised_few")
    gains.set_title("paired over held-out cases")
    gains.legend()
    figure.tight_layout()
    figure.savefig(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/msd_hippocampus.yaml", help="relative to the repository")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--labelled", type=int, default=20, help="labelled training cases of the few-label arms")
    parser.add_argument("--held-out", type=int, default=40, help="held-out cases, fixed for every run")
    parser.add_argument("--split-seed", type=int, default=0, help="seeds the held-out cases' choice")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_semi_supervised")
    parser.add_argument("--set", action="append", default=[], help="a config override, as medseg train --set")
    parser.add_argument("--device", default="auto", help="for prediction (training: the config's)")
    args = parser.parse_args(argv)
    if not DATASET.is_dir():
        print(f"bench_semi_supervised: {DATASET} is absent: the real datasets are not on this machine", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "runs.jsonl"
    done = {(r["arm"], r["seed"]): r for r in read_records(results)}
    for seed in args.seeds:
        for arm in args.arms:
            if (arm, seed) not in done:
                done[(arm, seed)] = run_arm(args, arm, seed)
                append_record(results, done[(arm, seed)])
            record = {k: v for k, v in done[(arm, seed)].items() if k != "per_case_dice"}
            print(json.dumps(record), flush=True)
    chosen = {k: v for k, v in done.items() if k[1] in args.seeds}
    summary = summarize(chosen)
    if summary["methods"]:
        summary["plot"] = str(plot_summary(chosen, summary, args.out / "semi_supervised.png"))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
