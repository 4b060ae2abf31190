"""``medseg demo``: BraTS phantoms -> train -> predict the held-out set -> evaluate -> HTML report.

Every step is resumable: existing phantoms are reused, training resumes from ``last.pt`` (and does
nothing when it already finished), and existing predictions are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medseg.config import load_config
from medseg.evaluation import evaluate_folder, format_summary
from medseg.inference import predict_folder
from medseg.phantoms.brats import generate_brats_dataset
from medseg.report import render_case_overlays, write_report
from medseg.training import train


def _phantoms(out: Path, *, cases: int, seed: int, release: str, shape: Sequence[int], spacing: float) -> None:
    if out.is_dir() and len([p for p in out.iterdir() if p.is_dir()]) >= cases:
        print(f"reusing phantoms in {out}")
        return
    print(f"generating {cases} BraTS {release} phantoms in {out} ...", flush=True)
    generate_brats_dataset(out, cases=cases, seed=seed, release=release, shape=tuple(shape), spacing=spacing)


def run_demo(*, out_dir: Path, config: Path, overrides: Sequence[str] = ()) -> dict:
    """Run the whole pipeline into ``out_dir`` and return the evaluation summary.

    ``out_dir`` receives ``data/{train,test}``, ``train/`` (checkpoints, metrics.csv, curve),
    ``predictions/``, ``metrics.csv``, ``summary.json``, ``overlays/`` and ``report.html``.
    """
    out_dir = Path(out_dir)
    train_dir, test_dir, run_dir = out_dir / "data" / "train", out_dir / "data" / "test", out_dir / "train"
    cfg = load_config(config, [*overrides, f"data.root={train_dir}", f"train.run_dir={run_dir}"])
    ph = cfg.phantoms
    common = {"release": ph.release, "shape": ph.shape, "spacing": ph.spacing}
    _phantoms(train_dir, cases=ph.train_cases, seed=ph.train_seed, **common)
    _phantoms(test_dir, cases=ph.test_cases, seed=ph.test_seed, **common)

    print(f"training {cfg.network.name} for {cfg.train.epochs} epochs into {run_dir} ...", flush=True)
    train(cfg, resume=(run_dir / "last.pt").is_file())

    print(f"predicting {ph.test_cases} held-out cases ...", flush=True)
    pred_dir = out_dir / "predictions"
    predict_folder(model=run_dir / "best.pt", input_path=test_dir, output_dir=pred_dir)

    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=test_dir, out_dir=out_dir)
    overlays = render_case_overlays(
        metrics_csv=out_dir / "metrics.csv", pred_dir=pred_dir, ref_dir=test_dir, out_dir=out_dir
    )
    report = write_report(out_dir=out_dir, summary=summary, curve_png=run_dir / "training_curve.png", overlays=overlays)
    print(f"\nheld-out evaluation ({ph.test_cases} cases); report: {report}")
    print(format_summary(summary))
    return summary
