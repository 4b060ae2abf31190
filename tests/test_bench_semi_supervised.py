"""tools/bench_semi_supervised.py: its summary on records with known answers, its per-case Dice, and its split
of the real hippocampus cases (skipped where ``../shared/data/real`` is absent)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
LoadTool = Callable[[str], ModuleType]


def _record(arm: str, seed: int, dice: list[float]) -> dict:
    per_case = {f"c{i}": d for i, d in enumerate(dice)}
    return {
        "arm": arm,
        "seed": seed,
        "per_case_dice": per_case,
        "mean_dice": sum(dice) / len(dice),
        "train_minutes": 1.0,
    }


def test_summary_pairs_cases_averaged_over_seeds_and_gives_the_share_of_the_gap(
    tmp_path: Path, load_tool: LoadTool
) -> None:
    bench = load_tool("bench_semi_supervised")
    records = {}
    for seed, shift in ((0, 0.0), (1, 0.02)):  # seed 1: every arm 0.02 better
        for arm, dice in (
            ("supervised_few", [0.60, 0.70, 0.80, 0.70]),
            ("mean_teacher", [0.63, 0.73, 0.82, 0.74]),  # gains 0.03, 0.03, 0.02, 0.04: mean 0.03
            ("supervised_all", [0.66, 0.76, 0.86, 0.76]),  # gap 0.06
        ):
            records[(arm, seed)] = _record(arm, seed, [d + shift for d in dice])
    records[("supervised_few", 2)] = _record("supervised_few", 2, [0.0] * 4)  # seed 2 unfinished: left out
    records[("fixmatch", 0)] = _record("fixmatch", 0, [0.60, 0.70, 0.80, 0.66])  # seed 0 only: gain -0.01
    summary = bench.summarize(records)
    assert set(summary["methods"]) == {"mean_teacher", "fixmatch"}  # no self_training record: left out
    teacher, fixmatch = summary["methods"]["mean_teacher"], summary["methods"]["fixmatch"]
    assert teacher["seeds"] == [0, 1] and fixmatch["seeds"] == [0]
    assert teacher["held_out_cases"] == 4
    assert teacher["gain"] == pytest.approx(0.03)
    assert teacher["gap_to_all_labelled"] == pytest.approx(0.06)
    assert teacher["share_of_gap_closed"] == pytest.approx(0.5)
    assert teacher["meets_target"] is True
    assert teacher["mean_dice"]["supervised_few"] == pytest.approx(0.71)
    assert fixmatch["gain"] == pytest.approx(-0.01) and fixmatch["meets_target"] is False
    assert fixmatch["share_of_gap_closed"] == pytest.approx(-0.01 / 0.06, abs=1e-3)
    json.dumps(summary)  # a JSON line
    plot = bench.plot_summary(records, summary, tmp_path / "semi_supervised.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_case_dice_averages_the_labels_scored_in_each_case(tmp_path: Path, load_tool: LoadTool) -> None:
    bench = load_tool("bench_semi_supervised")
    path = tmp_path / "metrics.csv"
    path.write_text(
        "case,region,dice,hd95,nsd,nsd_tolerance_mm\n"
        "a,Anterior,0.8,1,1,1\na,Posterior,0.6,1,1,1\nb,Anterior,0.9,1,1,1\nb,Posterior,,,,1\n"
    )
    assert bench.per_case_dice(path) == pytest.approx({"a": 0.7, "b": 0.9})


@pytest.mark.skipif(
    not (REPO.parent / "shared" / "data" / "real" / "msd_hippocampus").is_dir(),
    reason="the real hippocampus cases (../shared/data/real/msd_hippocampus) are not on this machine",
)
def test_split_holds_the_same_40_cases_out_for_every_seed(tmp_path: Path, load_tool: LoadTool) -> None:
    from medseg.data.manifest import load_manifest

    bench = load_tool("bench_semi_supervised")
    splits = [bench.split_manifests(tmp_path / str(s), split_seed=0, held_out=40, labelled=20, seed=s) for s in (0, 1)]
    held_out = [{c.id for c in load_manifest(s["held_out"]).cases} for s in splits]
    assert len(held_out[0]) == 40 and held_out[0] == held_out[1]
    labelled = []
    for split in splits:
        few = load_manifest(split["few"])
        train = [c for c in few.cases if c.fold == 0]
        assert {c.id for c in few.cases if c.fold == 1} == held_out[0]
        assert sum(c.label is not None for c in train) == 20 and sum(c.label is None for c in train) == 148
        assert not {c.id for c in train} & held_out[0]
        labelled.append({c.id for c in train if c.label is not None})
        everything = load_manifest(split["all"])
        assert sum(c.fold == 0 and c.label is not None for c in everything.cases) == 168
    assert labelled[0] != labelled[1]  # each seed draws its own 20


def test_student_checkpoint_holds_the_students_weights_without_the_training_state(
    tmp_path: Path, load_tool: LoadTool, one_channel_checkpoint_at: Callable[..., Path]
) -> None:
    import dataclasses

    import torch

    from medseg.checkpoint import load_checkpoint, save_checkpoint

    bench = load_tool("bench_semi_supervised")
    teacher = load_checkpoint(one_channel_checkpoint_at(tmp_path / "teacher.pt", seed=0), training=False)
    student = load_checkpoint(one_channel_checkpoint_at(tmp_path / "student_src.pt", seed=1), training=False)
    run = save_checkpoint(
        dataclasses.replace(teacher, training={"epoch": 3, "student": student.state_dict}), tmp_path / "last.pt"
    )
    out = load_checkpoint(bench.student_checkpoint(run, tmp_path / "student" / "student.pt"))
    assert out.training is None
    assert out.network == teacher.network and out.config == teacher.config
    for key, weights in student.state_dict.items():
        assert torch.equal(out.state_dict[key], weights)
    assert any(not torch.equal(out.state_dict[k], v) for k, v in teacher.state_dict.items())  # not the teacher's
