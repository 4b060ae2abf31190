"""Active learning: which unlabelled cases to label next (``medseg rank``).

:func:`rank_cases` predicts every case with a :class:`~medseg.inference.Predictor` and scores it with one of the
size-free case scores of :mod:`medseg.inference.uncertainty` (:data:`~medseg.inference.uncertainty.CASE_SCORES`,
nats). The ``entropy_*`` scores work with any model; the ``mutual_information_*`` scores (BALD, Houlsby et al.
2011; Gal et al., ICML 2017, "Deep Bayesian active learning with image data") need several passes per case: an
ensemble, test-time mirroring (``inference.mirror_axes``) or Monte Carlo dropout (``inference.dropout_samples``).

Taking the K highest scores alone picks near-duplicates, since cases alike are uncertain alike (Kirsch et al.,
NeurIPS 2019, "BatchBALD", show it for BALD). :func:`select_diverse` therefore walks the cases from the highest
score down and skips a case whose descriptor lies within ``min_distance`` of one already chosen; only when
fewer than K cases are left does it take the skipped ones, by score. A case's descriptor holds, in physical
units, the predicted volume of each foreground label (mL), the image's extent along each voxel axis (mm) and the
mean and standard deviation of each channel's intensities. Each feature is divided by its standard deviation
over the cases ranked (one that does not vary is left out), and the distance of two cases is the root mean
square of their differences: 0 for a scan given twice, about 1.4 (the square root of 2) for two cases drawn
independently.

A case where nothing is predicted has no score (its scores average over the predicted foreground); it comes
before every scored case, since a model that finds nothing of the structure is at its least reliable there.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.cases import InputCase, discover_cases, read_cases_file
from medseg.errors import ConfigError, MedsegError, MedsegInputError, first_line
from medseg.inference.predictor import Predictor, read_case
from medseg.inference.quality import volumes_ml
from medseg.inference.uncertainty import CASE_SCORES, case_scores
from medseg.io import Image, atomic_output
from medseg.progress import track

DEFAULT_SCORE = "entropy_boundary"
"""The score :func:`rank_cases` ranks by unless told otherwise: it needs only one pass."""


@dataclass(frozen=True)
class ScoredCase:
    """One predicted case.

    Attributes:
        case: the case id.
        scores: its :data:`~medseg.inference.uncertainty.CASE_SCORES` (nats); empty when nothing was predicted.
        features: its descriptor for :func:`select_diverse` (see the module docstring), by name, in physical
            units: ``<label>_ml``, ``extent_<axis>_mm``, ``<channel>_mean``, ``<channel>_std``.
    """

    case: str
    scores: dict[str, float]
    features: dict[str, float]


@dataclass(frozen=True)
class RankedCase:
    """A case chosen for labelling.

    Attributes:
        rank: 1 for the first to label.
        scored: the case, its scores and its descriptor.
        nearest: the case chosen before it whose descriptor is closest (None for the first).
        distance: the distance to ``nearest`` (see the module docstring).
        filled: taken although within ``min_distance`` of ``nearest``, because fewer than K cases were left.
    """

    rank: int
    scored: ScoredCase
    nearest: str | None
    distance: float | None
    filled: bool = False


@dataclass
class Ranking:
    """What :func:`rank_cases` gives: the chosen cases in order, every case scored, and those that failed."""

    score: str
    chosen: list[RankedCase]
    scored: list[ScoredCase]
    failed: dict[str, str] = field(default_factory=dict)


def case_features(
    image: Image, labels: np.ndarray, *, names: dict[int, str], channels: Sequence[str]
) -> dict[str, float]:
    """The descriptor of a case (see the module docstring).

    Args:
        image: the case's ``(C, X, Y, Z)`` image.
        labels: its predicted ``(X, Y, Z)`` label map on the image's grid.
        names: label value -> name (0 is background).
        channels: the name of each of the image's channels.
    """
    features = {f"{name}_ml": ml for name, ml in volumes_ml(labels, image.geometry.spacing, names).items()}
    extents = np.asarray(image.geometry.shape) * np.asarray(image.geometry.spacing)
    features.update({f"extent_{axis}_mm": round(float(e), 3) for axis, e in zip("xyz", extents, strict=True)})
    for name, channel in zip(channels, image.array, strict=True):
        features[f"{name}_mean"] = round(float(channel.mean(dtype=np.float64)), 6)
        features[f"{name}_std"] = round(float(channel.std(dtype=np.float64)), 6)
    return features


def score_case(predictor: Predictor, case: InputCase) -> ScoredCase:
    """Read and predict ``case``; its uncertainty scores (``inference.uncertainty_band_mm``) and descriptor.

    Raises:
        MedsegInputError: the case cannot be read, or does not fit the model.
    """
    image = read_case(case)
    prediction = predictor.predict_with_uncertainty(image)
    labels = predictor.labels_from_probabilities(prediction.probabilities, image)
    assert prediction.uncertainty is not None
    spacing, band_mm = image.geometry.spacing, predictor.inference.uncertainty_band_mm
    scores = case_scores(prediction.uncertainty, labels, spacing=spacing, band_mm=band_mm)
    features = case_features(image, labels, names=predictor.table.labels, channels=predictor.channels)
    return ScoredCase(case.id, scores, features)


def descriptor_distances(features: Sequence[dict[str, float]]) -> np.ndarray:
    """``(N, N)`` distances between the descriptors of ``N`` cases: the root mean square difference of the
    features, each divided by its standard deviation over the ``N`` cases (features that do not vary left out;
    all 0 when none varies)."""
    names = sorted({name for f in features for name in f})
    x = np.array([[f.get(name, 0.0) for name in names] for f in features], dtype=np.float64).reshape(len(features), -1)
    spread = x.std(0)
    varying = spread > 1e-12 * np.maximum(np.abs(x).max(0), 1.0)
    z = x[:, varying] / spread[varying]
    if z.shape[1] == 0:
        return np.zeros((len(features), len(features)))
    return np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).mean(-1))


def select_diverse(
    scores: Sequence[float | None], distances: np.ndarray, *, top: int, min_distance: float
) -> list[tuple[int, int | None, float | None, bool]]:
    """Choose ``top`` of ``N`` cases by score with a diversity rule (see the module docstring).

    Args:
        scores: each case's score; ``None`` (nothing predicted) comes before every score. Ties keep the
            given order.
        distances: ``(N, N)`` distances between the cases' descriptors (:func:`descriptor_distances`).
        top: how many to choose (fewer when there are fewer cases).
        min_distance: a case closer than this to one already chosen is skipped while others are left.

    Returns:
        One ``(index, nearest, distance, filled)`` per chosen case, in order: its index, the index of the
        closest case chosen before it and the distance to it (``None`` for the first), and whether it was
        taken from the skipped ones.
    """
    order = sorted(range(len(scores)), key=lambda i: (scores[i] is not None, -(scores[i] or 0.0)))
    chosen: list[int] = []
    skipped: list[int] = []
    for i in order:
        if len(chosen) == top:
            break
        if chosen and min(distances[i, j] for j in chosen) < min_distance:
            skipped.append(i)
        else:
            chosen.append(i)
    filled = skipped[: max(0, top - len(chosen))]
    picks: list[tuple[int, int | None, float | None, bool]] = []
    for i in chosen + filled:
        earlier = [j for j, *_ in picks]
        nearest = min(earlier, key=lambda j: distances[i, j]) if earlier else None
        distance = None if nearest is None else round(float(distances[i, nearest]), 4)
        picks.append((i, nearest, distance, i in filled))
    return picks


def check_score(score: str, predictor: Predictor) -> None:
    """Refuse a score that is not one of :data:`~medseg.inference.uncertainty.CASE_SCORES`, or a mutual
    information score for a model that makes one pass per case (it would be 0 for every case).

    Raises:
        ConfigError: naming the score and what to do.
    """
    if score not in CASE_SCORES:
        raise ConfigError(f"unknown score {score!r}; use one of {', '.join(CASE_SCORES)}")
    if score.startswith("mutual_information") and predictor.passes_per_case == 1:
        raise ConfigError(
            f"score {score} needs several passes per case, and this model makes one: give several checkpoints,"
            " --mirror, or --set inference.dropout_samples=N (a network with dropout)"
        )


def rank_cases(
    *,
    predictor: Predictor,
    cases: Sequence[InputCase],
    top: int,
    score: str = DEFAULT_SCORE,
    min_distance: float = 0.5,
    progress: bool = True,
) -> Ranking:
    """Predict and score every case, and choose ``top`` to label next (see the module docstring).

    A case that cannot be read or predicted is left out and named in :attr:`Ranking.failed` with the reason.

    Raises:
        ConfigError: a bad ``score`` (:func:`check_score`).
        MedsegInputError: ``top`` below 1 or a negative ``min_distance``.
    """
    check_score(score, predictor)
    if top < 1 or min_distance < 0:
        raise MedsegInputError(f"--top must be at least 1 and --min-distance at least 0, got {top} and {min_distance}")
    scored: list[ScoredCase] = []
    failed: dict[str, str] = {}
    for case in track(cases, total=len(cases), desc="rank", unit="case", enabled=progress):
        try:
            scored.append(score_case(predictor, case))
        except MedsegError as exc:
            failed[case.id] = str(exc)
        except Exception as exc:  # one broken case must not stop a ranking of hundreds (as in a batch)
            failed[case.id] = f"{type(exc).__name__}: {first_line(exc)}"
    distances = descriptor_distances([s.features for s in scored])
    picks = select_diverse([s.scores.get(score) for s in scored], distances, top=top, min_distance=min_distance)
    chosen = [
        RankedCase(rank + 1, scored[i], None if nearest is None else scored[nearest].case, distance, filled)
        for rank, (i, nearest, distance, filled) in enumerate(picks)
    ]
    return Ranking(score, chosen, scored, failed)


def rank_folder(
    *,
    model: str | Path | Sequence[str | Path],
    input_path: str | Path | None,
    top: int,
    cases_file: str | Path | None = None,
    score: str = DEFAULT_SCORE,
    min_distance: float = 0.5,
    output: str | Path | None = None,
    device: str = "auto",
    backend: str = "auto",
    inference_overrides: Sequence[str] = (),
    progress: bool = True,
) -> Ranking:
    """:func:`rank_cases` over the cases under ``input_path`` (a file or a folder of cases, as ``medseg predict``
    finds them), or those of ``cases_file`` (a JSON list of cases or a manifest, see
    :func:`~medseg.data.cases.read_cases_file`), with the checkpoint(s) ``model`` (several: an ensemble), writing
    the ranking to ``output`` (:func:`write_ranking`) when given.

    Raises:
        CheckpointError: ``model`` is not a readable medseg checkpoint.
        ConfigError: as :func:`rank_cases`, or a bad inference override.
        MedsegInputError: no cases under ``input_path``, or neither it nor ``cases_file`` given.
    """
    predictor = Predictor.from_checkpoint(
        model, device=device, backend=backend, inference_overrides=inference_overrides
    )
    check_score(score, predictor)
    if cases_file is not None:
        cases = read_cases_file(cases_file, channels=predictor.channels)
    elif input_path is None:
        raise MedsegInputError("give an input path or a cases file")
    else:
        cases = discover_cases(input_path, channels=predictor.channels)
    ranking = rank_cases(
        predictor=predictor, cases=cases, top=top, score=score, min_distance=min_distance, progress=progress
    )
    if output is not None:
        write_ranking(ranking, output)
    return ranking


def write_ranking(ranking: Ranking, path: str | Path) -> Path:
    """Write ``ranking``'s chosen cases as CSV (UTF-8, atomically): ``rank``, ``case``, the score ranked by
    (blank where nothing was predicted), ``nearest`` and ``distance`` (:class:`RankedCase`), ``note``, every
    descriptor feature, then the other case scores.

    Raises:
        MedsegInputError: ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise MedsegInputError("the ranking goes to a CSV file, not a folder", path=path)
    features = sorted({name for r in ranking.chosen for name in r.scored.features})
    others = [s for s in CASE_SCORES if s != ranking.score]
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rank", "case", ranking.score, "nearest", "distance", "note", *features, *others])
        for r in ranking.chosen:
            s = r.scored
            writer.writerow(
                [
                    r.rank,
                    s.case,
                    s.scores.get(ranking.score, ""),
                    r.nearest or "",
                    "" if r.distance is None else r.distance,
                    _note(r),
                    *[s.features.get(name, "") for name in features],
                    *[s.scores.get(name, "") for name in others],
                ]
            )
    return path


def _note(r: RankedCase) -> str:
    """Why a chosen case stands where it does, when the score alone does not say."""
    if not r.scored.scores:
        return "nothing predicted"
    return "near an earlier choice; taken to make up the number" if r.filled else ""
