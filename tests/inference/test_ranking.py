"""Active learning (``medseg rank``): cases built so that the uncertain ones are known, for a model whose
answer is known (a hand-set U-Net that thresholds intensity), against models with random weights."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.cli import main
from medseg.data.cases import discover_cases
from medseg.errors import ConfigError
from medseg.inference import Predictor
from medseg.inference.ranking import Ranking, descriptor_distances, rank_cases, select_diverse

MakeCheckpoint = Callable[..., Path]
SHAPE = (32, 32, 16)  # the one-channel checkpoint's window: one window covers a case


def make_threshold_checkpoint(path: Path, one_channel_checkpoint_at: MakeCheckpoint, *, gain: float = 6.0) -> Path:
    """:func:`~tests.conftest.make_one_channel_checkpoint`'s U-Net with weights set by hand so that it answers
    ``logit(tissue) - logit(background) = gain * z``, ``z`` the image's intensity z-scored (the first layer's
    instance norm) on every other voxel and linearly interpolated between them: it segments the voxels brighter
    than the image's mean, and is unsure exactly where intensities lie near it."""
    one_channel_checkpoint_at(path)
    checkpoint = load_checkpoint(path, training=False)
    state = {key: torch.zeros_like(value) for key, value in checkpoint.state_dict.items()}
    state["model.0.conv.weight"][0, 0, 1, 1, 1] = 1.0  # channel 0: the voxel itself, at stride 2
    state["model.0.adn.A.weight"][:] = 1.0  # PReLU of slope 1: the identity
    taps = torch.tensor([0.5, 1.0, 0.5])  # the transposed convolution interpolates linearly
    state["model.2.conv.weight"][0, 1] = gain * taps[:, None, None] * taps[None, :, None] * taps[None, None, :]
    checkpoint.state_dict = state
    return save_checkpoint(checkpoint, path)


def _write(folder: Path, name: str, array: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), folder / f"{name}_0000.nii.gz")


def _ramp(axis: int, *, low: float = 1.0, high: float = 2.0) -> np.ndarray:
    """Intensities rising evenly from ``low`` to ``high`` along ``axis``: many voxels near the mean."""
    shape = [1, 1, 1]
    shape[axis] = SHAPE[axis]
    return np.broadcast_to(np.linspace(low, high, SHAPE[axis]).reshape(shape), SHAPE).copy()


def _two_levels(axis: int, *, seed: int) -> np.ndarray:
    """Half the image at 1, half at 2 (split along ``axis``), with a little noise: few voxels near the mean."""
    array = np.ones(SHAPE)
    index = [slice(None)] * 3
    index[axis] = slice(SHAPE[axis] // 2, None)
    array[tuple(index)] = 2.0
    return array + np.random.default_rng(seed).normal(0, 0.02, SHAPE)


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    """Three cases a thresholding model is sure of and two it is not (``unsure_*``)."""
    folder = tmp_path / "unlabelled"
    for i, axis in enumerate((0, 1, 0)):
        _write(folder, f"clear_{i}", _two_levels(axis, seed=i))
    _write(folder, "unsure_0", _ramp(0))
    _write(folder, "unsure_1", _ramp(1, low=1.0, high=3.0))
    return folder


def _ranking(checkpoint: Path, folder: Path, k: int, **kwargs: object) -> Ranking:
    predictor = Predictor.from_checkpoint(checkpoint, backend="torch", device="cpu")
    cases = discover_cases(folder, channels=predictor.channels)
    return rank_cases(predictor=predictor, cases=cases, top=k, progress=False, **kwargs)  # type: ignore[arg-type]


def _finds_the_unsure_cases(ranking: Ranking) -> bool:
    """The test a useful ranking of :func:`pool` passes: the two unsure cases first, each scored at least
    twice as uncertain as any clear case."""
    top = {r.scored.case: r.scored.scores[ranking.score] for r in ranking.chosen[:2]}
    clear = [s.scores[ranking.score] for s in ranking.scored if s.case.startswith("clear")]
    return sorted(top) == ["unsure_0", "unsure_1"] and min(top.values()) >= 2 * max(clear)


def test_a_thresholding_model_ranks_the_cases_near_its_threshold_first_and_random_models_do_not(
    pool: Path, tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint
) -> None:
    meaningful = make_threshold_checkpoint(tmp_path / "threshold.pt", one_channel_checkpoint_at)
    for score in ("entropy_foreground", "entropy_boundary"):
        assert _finds_the_unsure_cases(_ranking(meaningful, pool, 2, score=score, min_distance=0.0)), score
    # the same architecture with random weights is unsure of every voxel (probabilities near 0.5): its scores
    # hardly differ between cases (seeds 0, 1 and 2 are all the seeds tried)
    for seed in (0, 1, 2):
        random = one_channel_checkpoint_at(tmp_path / f"random{seed}.pt", seed=seed)
        assert not _finds_the_unsure_cases(_ranking(random, pool, 2, score="entropy_foreground", min_distance=0.0))


def test_case_scores_follow_the_share_of_voxels_near_the_threshold(
    pool: Path, tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint
) -> None:
    checkpoint = make_threshold_checkpoint(tmp_path / "threshold.pt", one_channel_checkpoint_at)
    predictor = Predictor.from_checkpoint(checkpoint, backend="torch", device="cpu")
    ranking = rank_cases(
        predictor=predictor, cases=discover_cases(pool, channels=["image"]), top=5, min_distance=0.0, progress=False
    )
    by_case = {s.case: s for s in ranking.scored}
    # a ramp's z-scores spread evenly over [-1.7, 1.7]: the foreground (z > 0) holds p = sigmoid(6 z) for z in
    # (0, 1.7], whose mean binary entropy is about 0.1 nats; two levels give z = +-1, entropy 0.016 nats
    # inside, more only along the step
    z = np.linspace(0, np.sqrt(3), 10001)[1:]
    p = 1 / (1 + np.exp(-6 * z))
    expected = float(np.mean(-p * np.log(p) - (1 - p) * np.log(1 - p)))
    assert by_case["unsure_0"].scores["entropy_foreground"] == pytest.approx(expected, rel=0.25)
    for i in range(3):
        assert by_case[f"clear_{i}"].scores["entropy_foreground"] < expected / 2
    # a single pass disagrees with nothing
    assert all(s.scores["mutual_information_foreground"] == 0.0 for s in ranking.scored)
    # the descriptor: predicted tissue in mL (1 mm voxels: about half of the 16384 voxels), extent, intensities
    features = by_case["unsure_1"].features
    assert features["tissue_ml"] == pytest.approx(16.384 / 2, rel=0.1)
    assert features["extent_x_mm"] == 32.0 and features["image_mean"] == pytest.approx(2.0, rel=1e-5)


def test_the_diversity_rule_skips_a_duplicate_until_it_is_needed() -> None:
    features = [{"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 0.0}, {"a": 3.0, "b": 1.0}, {"a": 1.0, "b": 1.0}]
    distances = descriptor_distances(features)
    assert distances[0, 1] == 0.0 and distances[0, 2] == pytest.approx(distances[2, 0]) and distances[0, 2] > 1.0
    scores = [0.9, 0.8, 0.5, None]
    # None (nothing predicted) first, then by score; case 1 is case 0 again, so case 2 comes before it
    picks = select_diverse(scores, distances, top=3, min_distance=0.5)
    assert [i for i, *_ in picks] == [3, 0, 2]
    assert picks[0][1:] == (None, None, False)
    # without the rule, the duplicate is taken; with too few others left, it makes up the number
    assert [i for i, *_ in select_diverse(scores, distances, top=3, min_distance=0.0)] == [3, 0, 1]
    four = select_diverse(scores, distances, top=4, min_distance=0.5)
    assert [i for i, *_ in four] == [3, 0, 2, 1] and four[3][1:] == (0, 0.0, True)
    # one feature that does not vary leaves the distances alone
    same = descriptor_distances([{**f, "c": 7.0} for f in features])
    np.testing.assert_allclose(same, distances)


def test_medseg_rank_writes_the_cases_to_label_next_and_skips_a_copy(
    pool: Path, tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = make_threshold_checkpoint(tmp_path / "threshold.pt", one_channel_checkpoint_at)
    (pool / "unsure_0_copy_0000.nii.gz").write_bytes((pool / "unsure_0_0000.nii.gz").read_bytes())
    out = tmp_path / "ranking.csv"
    argv = ["rank", "--model", str(checkpoint), "--input", str(pool), "--top", "2", "--backend", "torch"]
    assert main([*argv, "--score", "entropy_foreground", "--output", str(out), "--progress", "none"]) == 0
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    # the unsure cases score alike (ties keep the order of the ids); the copy lies at distance 0 from unsure_0,
    # so unsure_1 comes second
    assert [r["case"] for r in rows] == ["unsure_0", "unsure_1"]
    assert rows[0]["rank"] == "1" and rows[1]["nearest"] == "unsure_0" and float(rows[1]["distance"]) > 0.5
    assert float(rows[0]["entropy_foreground"]) == float(rows[1]["entropy_foreground"]) > 0.1
    assert {"tissue_ml", "image_mean", "image_std", "mutual_information_boundary"} <= set(rows[0])
    assert "2 of 6 cases chosen by entropy_foreground, 0 failed" in capsys.readouterr().err
    # with the rule off, the copy is chosen too
    assert main([*argv, "--score", "entropy_foreground", "--min-distance", "0", "--progress", "none"]) == 0
    assert [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()] == ["unsure_0", "unsure_0_copy"]


def test_mutual_information_needs_several_passes(
    pool: Path, tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = one_channel_checkpoint_at(tmp_path / "random.pt")
    argv = ["rank", "--model", str(checkpoint), "--input", str(pool), "--top", "2", "--progress", "none"]
    assert main([*argv, "--score", "mutual_information_boundary"]) == 2
    assert "needs several passes per case" in capsys.readouterr().err
    assert main([*argv, "--score", "entropy"]) == 2
    assert "unknown score 'entropy'; use one of entropy_foreground" in capsys.readouterr().err
    predictor = Predictor.from_checkpoint(checkpoint, backend="torch", device="cpu", inference_overrides=[])
    with pytest.raises(ConfigError, match="needs several passes"):
        rank_cases(predictor=predictor, cases=[], top=1, score="mutual_information_foreground")
    # mirror images make the passes of a random network disagree: the score is then defined and positive
    assert main([*argv, "--score", "mutual_information_boundary", "--mirror", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(float(line.split("\t")[2]) > 0 for line in lines)


def test_medseg_rank_takes_a_list_of_cases(
    pool: Path, tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = make_threshold_checkpoint(tmp_path / "threshold.pt", one_channel_checkpoint_at)
    listing = tmp_path / "cases.json"
    names = ["clear_0", "unsure_1", "missing"]
    listing.write_text(json.dumps([{"id": n, "images": [str(pool / f"{n}_0000.nii.gz")]} for n in names]))
    argv = ["rank", "--model", str(checkpoint), "--cases", str(listing), "--top", "3", "--progress", "none"]
    assert main(argv) == 1  # a case that cannot be read fails the run, after the others are ranked
    captured = capsys.readouterr()
    assert [line.split("\t")[1] for line in captured.out.splitlines()] == ["unsure_1", "clear_0"]
    assert (
        "medseg: error: missing: " in captured.err
        and "2 of 2 cases chosen by entropy_boundary, 1 failed" in captured.err
    )
