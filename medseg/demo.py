"""``medseg demo``: phantoms -> train -> predict the held-out set -> evaluate -> HTML report.

Two demos share the steps after data generation (:func:`_train_predict_report`):

- :func:`run_demo` (``medseg demo``, ``medseg demo brats``): BraTS-layout brain MRI phantoms,
  WT/TC/ET regions, ``configs/demo_brats_phantom.yaml``;
- :func:`run_ct_demo` (``medseg demo ct``): abdominal CT organ phantoms in MSD layout, Dice and HD95
  per organ, ``configs/demo_ct_phantom.yaml``.

Every step is resumable: existing phantoms are reused, training resumes from ``last.pt`` (and does
nothing when it already finished), and existing predictions are skipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from medseg.config import Config, load_config
from medseg.data.dataset_json import read_dataset_json
from medseg.errors import ConfigError
from medseg.evaluation import METRICS_PNG, evaluate_folder, format_summary, render_case_overlays, write_report
from medseg.inference import predict_folder
from medseg.io.atomic import atomic_output
from medseg.labels import brats_label_candidates, choose_label_table, get_brats_release
from medseg.phantoms.brats import generate_brats_dataset
from medseg.phantoms.ct import generate_ct_dataset
from medseg.training import train

BRATS_DEMO_NSD_TOLERANCE_MM = 2.0
"""The BraTS demo's phantoms have 1.5 mm voxels: a tolerance finer than one voxel would count only
coinciding surface voxels."""
CT_DEMO_NSD_TOLERANCE_MM = 3.0
"""TotalSegmentator's tolerance for CT organs; the CT phantoms' voxels are 2.5-5 mm."""


def _phantoms(out: Path, *, cases: int, seed: int, release: str, shape: Sequence[int], spacing: float) -> None:
    if out.is_dir() and len([p for p in out.iterdir() if p.is_dir()]) >= cases:
        print(f"reusing phantoms in {out}")
        return
    print(f"generating {cases} BraTS {release} phantoms in {out} ...", flush=True)
    generate_brats_dataset(  # the demo's own folder: a generation it did not finish is redone
        out, cases=cases, seed=seed, release=release, shape=tuple(shape), spacing=spacing, overwrite=True
    )


def _ct_phantoms(out: Path, *, cases: int, seed: int, shape: Sequence[int] | None) -> None:
    meta = out / "dataset.json"
    if meta.is_file() and len(read_dataset_json(meta, style="msd").cases("training")) >= cases:
        print(f"reusing phantoms in {out}")
        return
    print(f"generating {cases} CT organ phantoms in {out} ...", flush=True)
    generate_ct_dataset(out, cases=cases, seed=seed, shape=tuple(shape) if shape else None, overwrite=True)


def _train_predict_report(
    cfg: Config,
    *,
    out_dir: Path,
    test_input: Path,
    test_ref: Path,
    test_cases: int,
    overlay_region: str,
    nsd_tolerance_mm: float,
    lesion_rules: str | None = None,
    image_path: Callable[[str, Path], Path] | None = None,
    title: str = "medseg evaluation report",
) -> dict:
    """Train ``cfg`` (resuming), predict ``test_input`` with ``best.pt``, evaluate against ``test_ref``
    (NSD at ``nsd_tolerance_mm``, lesion-wise scores with ``lesion_rules`` when given), render
    best/median/worst overlays by ``overlay_region`` Dice and write ``report.html``."""
    run_dir = Path(cfg.train.run_dir)
    print(f"training {cfg.network.name} for {cfg.train.epochs} epochs into {run_dir} ...", flush=True)
    train(cfg, resume=(run_dir / "last.pt").is_file())

    print(f"predicting {test_cases} held-out cases ...", flush=True)
    pred_dir = out_dir / "predictions"
    predicted = predict_folder(model=run_dir / "best.pt", input_path=test_input, output_dir=pred_dir)

    summary = evaluate_folder(
        pred_dir=pred_dir,
        ref_dir=test_ref,
        out_dir=out_dir,
        nsd_tolerance_mm=nsd_tolerance_mm,
        lesion_rules=lesion_rules,
    )
    overlays = render_case_overlays(
        metrics_csv=out_dir / "metrics.csv",
        pred_dir=pred_dir,
        ref_dir=test_ref,
        out_dir=out_dir,
        region=overlay_region,
        **({"image_path": image_path} if image_path is not None else {}),
    )
    report = write_report(
        out_dir=out_dir,
        summary=summary,
        curve_png=run_dir / "training_curve.png",
        scores_png=out_dir / METRICS_PNG,
        overlays=overlays,
        flags={result.case: result.flags for result in predicted.results},
        title=title,
    )
    print(f"\nheld-out evaluation ({test_cases} cases); report: {report}")
    print(format_summary(summary))
    return summary


def run_demo(*, out_dir: Path, config: Path, overrides: Sequence[str] = ()) -> dict:
    """Run the whole BraTS pipeline into ``out_dir`` and return the evaluation summary.

    ``out_dir`` receives ``data/{train,test}``, ``train/`` (checkpoints, metrics.csv, curve),
    ``predictions/``, ``metrics.csv``, ``summary.json``, ``overlays/`` and ``report.html``.

    Raises:
        ConfigError: ``data.labels: auto`` with phantoms that auto would take for another table (release
            2024's cases are named as 2023's: ``data.labels: brats2024-gli`` must say what they are).
    """
    out_dir = Path(out_dir)
    train_dir, test_dir, run_dir = out_dir / "data" / "train", out_dir / "data" / "test", out_dir / "train"
    cfg = load_config(config, [*overrides, f"data.root={train_dir}", f"train.run_dir={run_dir}"])
    ph = cfg.phantoms
    release = get_brats_release(ph.release)
    if cfg.data.labels == "auto":
        auto = choose_label_table(brats_label_candidates([release.case_id(0)], release))
        if auto != release.label_table:
            raise ConfigError(
                f"phantoms.release {ph.release} labels its cases as {release.label_table.name}, which data.labels:"
                f" auto would take for {auto.name}; set data.labels: {release.label_table.name}"
            )
    common = {"release": ph.release, "shape": ph.shape, "spacing": ph.spacing}
    _phantoms(train_dir, cases=ph.train_cases, seed=ph.train_seed, **common)
    _phantoms(test_dir, cases=ph.test_cases, seed=ph.test_seed, **common)
    return _train_predict_report(
        cfg,
        out_dir=out_dir,
        test_input=test_dir,
        test_ref=test_dir,
        test_cases=ph.test_cases,
        overlay_region="WT",
        nsd_tolerance_mm=BRATS_DEMO_NSD_TOLERANCE_MM,
        lesion_rules="GLI",  # the phantoms are glioma-like
    )


def run_ct_demo(*, out_dir: Path, config: Path, overrides: Sequence[str] = ()) -> dict:
    """Run the CT organ pipeline into ``out_dir`` and return the evaluation summary (Dice and HD95 per organ).

    Training phantoms (``phantoms.train_seed``) and held-out phantoms (``phantoms.test_seed``) are MSD
    folders ``out_dir/data/{train,test}``; the held-out images ``data/test/imagesTr`` are predicted into
    ``predictions/`` (on each input's own grid) and scored against ``data/test/labelsTr`` with the
    label names of ``data/test/dataset.json``. Also writes ``metrics.csv``, ``summary.json``,
    ``overlays/``, ``report.html`` and ``timing.json`` (seconds per step).
    """
    out_dir = Path(out_dir)
    train_dir, test_dir, run_dir = out_dir / "data" / "train", out_dir / "data" / "test", out_dir / "train"
    cfg = load_config(config, [*overrides, f"data.root={train_dir}", f"train.run_dir={run_dir}"])
    ph = cfg.phantoms
    started = time.monotonic()
    _ct_phantoms(train_dir, cases=ph.train_cases, seed=ph.train_seed, shape=ph.shape)
    _ct_phantoms(test_dir, cases=ph.test_cases, seed=ph.test_seed, shape=ph.shape)
    phantoms_s = time.monotonic() - started
    summary = _train_predict_report(
        cfg,
        out_dir=out_dir,
        test_input=test_dir / "imagesTr",
        test_ref=test_dir,
        test_cases=ph.test_cases,
        overlay_region="pancreas",
        nsd_tolerance_mm=CT_DEMO_NSD_TOLERANCE_MM,
        image_path=lambda case, ref_path: ref_path.parent.parent / "imagesTr" / ref_path.name,
        title="medseg CT organ demo",
    )
    total_s = time.monotonic() - started
    mean_dice = sum(r["dice"]["mean"] for r in summary["regions"].values()) / len(summary["regions"])
    timing = {"phantoms_s": round(phantoms_s, 1), "total_s": round(total_s, 1), "mean_dice": round(mean_dice, 4)}
    with atomic_output(out_dir / "timing.json") as tmp:
        tmp.write_text(json.dumps(timing, indent=2) + "\n")
    print(f"mean organ Dice {mean_dice:.4f}; {total_s / 60:.1f} min in all ({phantoms_s:.0f} s generating phantoms)")
    return summary
