"""What a training recipe costs on this machine: seconds per step and peak memory of ``medseg train`` under
several settings (e.g. the spacing and patch a CPU can afford for BraTS).

Each variant is a set of config overrides (``--variant NAME KEY=VALUE ...``). Every run is the real command,
``medseg train --config CFG`` with the variant's overrides, for one epoch of ``--steps`` steps and no
validation, in its own process (so its peak RSS is its own); the step time is that epoch's seconds (from the
run's ``metrics.csv``, loading and caching the cases excluded) over its steps. Machines are noisy, so the
variants run in interleaved rounds (``--rounds``) and each is reported by its median round and as a ratio
to the first variant, with the steps that ``train.max_minutes`` would hold at that pace.

One JSON line per variant and round (appended to ``OUT/rounds.jsonl``; a round already there is not run
again: the tool resumes), then one summary line per variant.

    .venv/bin/python tools/bench_train_cost.py --config configs/brats2018_real.yaml \\
        --variant 1.5mm-96 \\
        --variant 1mm-128 'transforms.spacing=null' 'transforms.patch_size=[128, 128, 128]' \\
            'inference.roi_size=[128, 128, 128]'
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from bench_real import MEDSEG, REPO, append_record, read_records, run_stage


def run_round(args: argparse.Namespace, name: str, overrides: list[str], round_: int) -> dict:
    """Train one epoch of ``args.steps`` steps under ``overrides``; its JSON record."""
    from medseg.config import load_config

    run_dir = args.out / name / f"round_{round_}"
    sets = [
        *overrides,
        "train.epochs=1",
        f"train.iterations_per_epoch={args.steps}",
        "train.val_every=2",  # after the only epoch: never
        "train.warmup_epochs=0",
        "train.max_minutes=null",
        f"train.run_dir={run_dir}",
    ]
    load_config(REPO / args.config, sets)  # a bad override fails here, in one line
    (args.out / name).mkdir(parents=True, exist_ok=True)
    argv = [a for s in sets for a in ("--set", s)]
    _, rss = run_stage([*MEDSEG, "train", "--config", args.config, *argv], args.out / name / "log.txt")
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    return {
        "variant": name,
        "round": round_,
        "overrides": overrides,
        "s_per_step": round(float(rows[-1]["seconds"]) / args.steps, 3),
        "peak_rss_gb": round(rss, 2),
        "config": args.config,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def summarize(args: argparse.Namespace, variants: dict[str, list[str]], records: list[dict]) -> list[dict]:
    """Per variant: the median round's seconds per step, its ratio to the first variant's, the steps the
    config's ``train.max_minutes`` holds at that pace, and the largest peak RSS."""
    from medseg.config import load_config

    lines = []
    base = None
    for name, overrides in variants.items():
        own = [r for r in records if r["variant"] == name]
        pace = statistics.median(r["s_per_step"] for r in own)
        base = base or pace
        minutes = load_config(REPO / args.config, overrides).train.max_minutes
        lines.append(
            {
                "summary": name,
                "rounds": len(own),
                "s_per_step": round(pace, 3),
                "ratio_to_first": round(pace / base, 2),
                "steps_in_max_minutes": None if minutes is None else int(minutes * 60 / pace),
                "peak_rss_gb": max(r["peak_rss_gb"] for r in own),
            }
        )
    return lines


def parse_variants(specs: list[list[str]]) -> dict[str, list[str]]:
    """``--variant NAME KEY=VALUE ...`` arguments as name -> overrides, in the order given."""
    variants: dict[str, list[str]] = {}
    for name, *overrides in specs:
        if name in variants or "=" in name:
            raise SystemExit(f"bench_train_cost: each --variant starts with a new name, got {name!r}")
        variants[name] = overrides
    return variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="relative to the repository")
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE ...]")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_train_cost")
    args = parser.parse_args(argv)
    variants = parse_variants(args.variant)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "rounds.jsonl"
    done = {(r["variant"], r["round"]): r for r in read_records(results)}
    for round_ in range(args.rounds):
        for name, overrides in variants.items():
            if (name, round_) not in done:
                done[(name, round_)] = run_round(args, name, overrides, round_)
                append_record(results, done[(name, round_)])
            print(json.dumps(done[(name, round_)]), flush=True)
    records = [r for (name, round_), r in done.items() if name in variants and round_ < args.rounds]
    for line in summarize(args, variants, records):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
