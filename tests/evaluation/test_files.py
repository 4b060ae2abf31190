"""The score files: what ``medseg evaluate`` writes is read back exactly; old, mixed or malformed files
are one-line errors naming the file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from medseg.errors import MedsegInputError
from medseg.evaluation.files import (
    Metrics,
    read_lesion_metrics_csv,
    read_metrics_csv,
    write_lesion_metrics_csv,
    write_metrics_csv,
)
from medseg.evaluation.lesion_wise import LesionScore
from medseg.evaluation.metrics import RegionScore


def test_files_read_back_what_was_written(tmp_path: Path) -> None:
    scores = {
        "c1": {"WT": RegionScore(0.912345, 3.5, 0.75), "ET": RegionScore(1.0, 0.0, 1.0)},
        "c2": {"WT": RegionScore(0.0, 373.128664, 0.0), "ET": RegionScore(0.5, 12.25, 0.125)},
    }
    write_metrics_csv(tmp_path / "metrics.csv", Metrics(scores, 2.5))
    assert read_metrics_csv(tmp_path / "metrics.csv") == Metrics(scores, 2.5)
    lesions = {"c1": {"WT": LesionScore(0.25, 280.5, 1, 0, 3)}, "c2": {"WT": LesionScore(1.0, 0.0, 0, 0, 0)}}
    write_lesion_metrics_csv(tmp_path / "lesions.csv", lesions, "MET")
    read = read_lesion_metrics_csv(tmp_path / "lesions.csv")
    assert (read.scores, read.rules) == (lesions, "MET")
    # BraTS 2025 MET: NSD and the detection counts by size; no large lesion: no score (NaN), counts kept
    met = {
        "c1": {"ET": LesionScore(0.5, 186.5, 1, 2, 1, 0.375, 1, 1, 0, 1)},
        "c2": {"ET": LesionScore(math.nan, math.nan, 0, 0, 2, math.nan, 0, 0, 0, 0)},
    }
    write_lesion_metrics_csv(tmp_path / "met.csv", met, "brats2025-met")
    read_met = read_lesion_metrics_csv(tmp_path / "met.csv").scores
    assert read_met["c1"] == met["c1"]
    assert all(math.isnan(v) for v in read_met["c2"]["ET"][:2]) and math.isnan(read_met["c2"]["ET"].nsd)
    assert read_met["c2"]["ET"][2:5] == (0, 0, 2) and read_met["c2"]["ET"][6:] == (0, 0, 0, 0)
    rows = (tmp_path / "met.csv").read_text().splitlines()
    assert rows[1] == "c1,ET,0.500000,186.500000,0.375000,1,2,1,0.400000,1,1,0,1,brats2025-met"
    assert rows[2] == "c2,ET,nan,nan,nan,0,0,2,0.000000,0,0,0,0,brats2025-met"


def test_lesion_files_written_before_nsd_and_size_counts_read_alike(tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    old.write_text("case,region,dice,hd95,tp,fn,fp,f1,rules\nc1,WT,0.5,2.0,1,0,1,0.666667,GLI\n")
    score = read_lesion_metrics_csv(old).scores["c1"]["WT"]
    assert score == LesionScore(0.5, 2.0, 1, 0, 1)  # no NSD, no counts by size


def test_read_metrics_csv_refuses_old_and_mixed_files(tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    old.write_text("case,region,dice,hd95\nc1,WT,0.9,2.0\n")
    with pytest.raises(MedsegInputError, match=r"no column nsd, nsd_tolerance_mm \(run medseg evaluate again\)"):
        read_metrics_csv(old)
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("case,region,dice,hd95,nsd,nsd_tolerance_mm\nc1,WT,0.9,2.0,0.8,1\nc2,WT,0.9,2.0,0.8,2\n")
    with pytest.raises(MedsegInputError, match=r"NSDs at several tolerances \[1.0, 2.0\] mm"):
        read_metrics_csv(mixed)


def test_lesion_files_with_mixed_rules_or_bad_counts_are_refused(tmp_path: Path) -> None:
    header = "case,region,dice,hd95,tp,fn,fp,rules\n"
    mixed = tmp_path / "mixed.csv"
    mixed.write_text(header + "c1,WT,0.5,2.0,1,0,1,GLI\nc2,WT,0.5,2.0,1,0,1,MET\n")
    with pytest.raises(MedsegInputError, match=r"one set of lesion rules, found \['GLI', 'MET'\]"):
        read_lesion_metrics_csv(mixed)
    bad = tmp_path / "bad.csv"
    bad.write_text(header + "c1,WT,0.5,2.0,one,0,1,GLI\n")
    with pytest.raises(MedsegInputError, match=r"bad.csv: not a medseg lesion_metrics.csv"):
        read_lesion_metrics_csv(bad)
    with pytest.raises(MedsegInputError, match=r"lesion metrics file not found"):
        read_lesion_metrics_csv(tmp_path / "none.csv")
