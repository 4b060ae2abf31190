"""The ``medseg`` command: a thin argparse layer over the Python API of each stage.

Each handler imports its stage lazily (so ``medseg --help`` does not import torch), calls one API
function, and returns an exit code. A :class:`~medseg.errors.MedsegError` becomes one line on stderr
and exit code 2; ``--debug`` shows tracebacks instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg import __version__
from medseg.errors import MedsegError, first_line
from medseg.protocol import BACKENDS, LABEL_FORMATS


def _phantoms_brats(args: argparse.Namespace) -> int:
    from medseg.phantoms.brats import generate_brats_dataset

    paths = generate_brats_dataset(
        args.out,
        cases=args.cases,
        seed=args.seed,
        release=args.release,
        shape=tuple(args.shape),
        spacing=args.spacing,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    print(f"wrote {len(paths)} BraTS {args.release} phantom cases to {args.out}")
    return 0


def _phantoms_ct(args: argparse.Namespace) -> int:
    from medseg.phantoms.ct import generate_ct_dataset

    paths = generate_ct_dataset(
        args.out, cases=args.cases, seed=args.seed, workers=args.workers, overwrite=args.overwrite
    )
    print(f"wrote {len(paths)} CT phantom cases to {args.out}")
    return 0


def _manifest_build(args: argparse.Namespace) -> int:
    import dataclasses

    from medseg.data.manifest import build_manifest, save_manifest
    from medseg.errors import MedsegInputError
    from medseg.labels import get_label_table

    try:
        labels = None if args.labels == "auto" else get_label_table(args.labels)
    except KeyError as exc:
        raise MedsegInputError(f"--labels: {exc.args[0]}") from None
    manifest = build_manifest(args.root, layout=args.layout, num_folds=args.folds, seed=args.seed, labels=labels)
    save_manifest(dataclasses.replace(manifest, root=args.root), args.out)  # names its folder
    print(f"wrote {args.out}: {len(manifest.cases)} cases, {args.folds} folds, labels {manifest.label_table.name}")
    return 0


def _manifest_check(args: argparse.Namespace) -> int:
    from medseg.data.manifest import check_manifest, dataset_root, load_manifest

    manifest = load_manifest(args.manifest)
    problems = check_manifest(manifest, root=dataset_root(manifest, args.root))
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {args.manifest}", file=sys.stderr)
        return 1
    print(f"{args.manifest}: all cases present and consistent")
    return 0


def _train(args: argparse.Namespace) -> int:
    from medseg.config import load_config
    from medseg.errors import ConfigError
    from medseg.training import train, validate_config

    config = load_config(args.config, args.set)
    try:
        validate_config(config)
    except ConfigError as exc:  # name the config file, as load_config's own errors do
        raise ConfigError(exc.reason, path=exc.path or args.config) from None
    result = train(config, resume=args.resume, device=args.device)
    print(f"training finished: best mean Dice {result.best_score:.4f} at epoch {result.best_epoch}; {result.run_dir}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from medseg.config import load_config
    from medseg.distributed import resolve_device
    from medseg.planning import (
        check_max_patch_voxels,
        fingerprint_dataset,
        format_suggestions,
        missing_labels,
        plan_transforms,
        train_command,
        unusual_spacing,
        write_plan,
    )

    config = load_config(args.config, args.set)
    check_max_patch_voxels(args.max_patch_voxels)  # before the dataset is read
    fingerprint = fingerprint_dataset(config, device=resolve_device(args.device), workers=args.workers)
    suggestions = plan_transforms(fingerprint, config, max_patch_voxels=args.max_patch_voxels)
    out = write_plan(fingerprint, suggestions, args.out, config_path=args.config)
    print(f"{len(fingerprint.cases)} labelled case(s), {fingerprint.orientation} axes; written to {out}")
    print(format_suggestions(suggestions))
    for line in unusual_spacing(fingerprint) + missing_labels(fingerprint):
        print(f"medseg: note: {line}", file=sys.stderr)
    print(f"train with: {train_command(args.config, overrides=args.set, suggestions=suggestions)}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from medseg.data.cases import Shard
    from medseg.errors import MedsegInputError
    from medseg.inference import check_output, predict_folder, run_batch
    from medseg.training import load_fold_model, out_of_fold_batch

    loading = _loading_kwargs(args)
    running = {
        "output_dir": args.output,
        "fmt": args.format,
        "save_probabilities": args.save_probabilities,
        "save_uncertainty": args.save_uncertainty,
        "shard": Shard.parse(args.shard) if args.shard else None,
        "overwrite": args.overwrite,
        "progress": args.progress,
    }
    if args.cross_validation:
        if args.input is not None or args.cases is not None:
            raise MedsegInputError("--cross-validation predicts the folds' own validation cases: drop --input/--cases")
        running["output_dir"] = check_output(args.output, args.format)  # before any model is loaded
        folds = [load_fold_model(m, data_root=args.data_root, **loading) for m in args.model]
        summary = run_batch(out_of_fold_batch(folds, fmt=args.format), **running)
    elif args.data_root is not None:
        raise MedsegInputError("--data-root goes with --cross-validation")
    elif args.input is None and args.cases is None:
        raise MedsegInputError("give --input (a file or folder) or --cases (a JSON list of cases)")
    else:
        summary = predict_folder(model=args.model, input_path=args.input, cases_file=args.cases, **loading, **running)
    if args.progress != "json":
        print(
            f"{summary.ok} ok, {summary.skipped} skipped, {summary.failed} failed; {summary.summary_path}",
            file=sys.stderr,
        )
    return 0 if summary.failed == 0 else 1


def _rank(args: argparse.Namespace) -> int:
    from medseg.inference.ranking import rank_folder

    ranking = rank_folder(
        model=args.model,
        input_path=args.input,
        cases_file=args.cases,
        top=args.top,
        score=args.score,
        min_distance=args.min_distance,
        output=args.output,
        **_loading_kwargs(args),
        progress=args.progress == "bar",
    )
    for case, reason in ranking.failed.items():
        print(f"medseg: error: {case}: {reason}", file=sys.stderr)
    for r in ranking.chosen:
        value = r.scored.scores.get(ranking.score)
        print(f"{r.rank}\t{r.scored.case}\t{'nothing predicted' if value is None else value}")
    where = f"; {args.output}" if args.output is not None else ""
    print(
        f"{len(ranking.chosen)} of {len(ranking.scored)} cases chosen by {ranking.score},"
        f" {len(ranking.failed)} failed{where}",
        file=sys.stderr,
    )
    return 0 if not ranking.failed else 1


def _calibrate(args: argparse.Namespace) -> int:
    from medseg.inference.calibration import CalibrationParams, calibrate, format_calibration

    result = calibrate(
        model=args.model,
        ref_dir=args.ref,
        out=args.out,
        input_path=args.input,
        cases_file=args.cases,
        **_loading_kwargs(args),
        params=CalibrationParams(voxels_per_case=args.voxels_per_case, seed=args.seed, ece_bins=args.ece_bins),
    )
    print(format_calibration(result))
    print(f"apply with: medseg predict --model {args.out} ... --set inference.temperature_scaling=true")
    return 0


def _loading_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """How ``predict``, ``rank`` and ``calibrate`` load their model: ``--device``, ``--backend`` and the
    inference overrides of ``--set`` and ``--mirror [AXIS ...]`` (no axes: all three)."""
    mirror = [] if args.mirror is None else [f"inference.mirror_axes={args.mirror or [0, 1, 2]}"]
    return {"device": args.device, "backend": args.backend, "inference_overrides": [*args.set, *mirror]}


def _export(args: argparse.Namespace) -> int:
    from medseg.inference import export_model

    path = export_model(model=args.model, fmt=args.format, out=args.out)
    print(f"wrote {args.format} model to {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from medseg.evaluation import evaluate_folder, format_summary

    tolerance = {} if args.nsd_tolerance is None else {"nsd_tolerance_mm": args.nsd_tolerance}
    summary = evaluate_folder(
        **_scoring_kwargs(args),
        **tolerance,
        scoring=args.scoring,
        only_predicted=args.only_predicted,
        ece_bins=args.ece_bins,
    )
    print(format_summary(summary))
    return 0


def _tune_postprocessing(args: argparse.Namespace) -> int:
    from medseg.postprocessing import criterion_name, format_trials, set_argument, tune_min_component_ml

    candidates = {"candidates": args.candidates} if args.candidates else {}
    chosen, trials = tune_min_component_ml(**_scoring_kwargs(args), **candidates)
    print(format_trials(trials, chosen, criterion_name(args.lesion_wise)))
    if chosen:
        print(f'apply with: medseg predict ... --set "{set_argument(chosen)}"')
    else:
        print("removing pieces did not help")
    return 0


def _add_scoring_arguments(p: argparse.ArgumentParser, *, lesion_help: str) -> None:
    """The arguments that ``evaluate`` and ``tune-postprocessing`` share (see :func:`_scoring_kwargs`)."""
    p.add_argument(
        "--pred",
        type=Path,
        required=True,
        help="folder of <case> predictions (NIfTI, NRRD, .seg.nrrd, MHA, DICOM-SEG .dcm: medseg predict's output)",
    )
    p.add_argument(
        "--ref",
        type=Path,
        required=True,
        help="reference dataset folder (BraTS, MSD labelsTs/ or labelsTr/, or flat layout) or a medseg manifest",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--labels",
        default="auto",
        help="auto (the reference's dataset.json, else the table medseg predict wrote beside the predictions,"
        " else the BraTS table its file names, case ids and label values leave; an error where tables that give"
        " values other meanings remain), a table name (brats2021, brats2024-gli, btcv, ...), or a path to a"
        " dataset.json or medseg manifest",
    )
    p.add_argument(
        "--labels-from",
        type=Path,
        default=None,
        metavar="CKPT",
        help="the label table of this checkpoint (the model that made the predictions), instead of --labels",
    )
    p.add_argument(
        "--lesion-wise",
        default=None,
        metavar="RULES",
        help=f"{lesion_help}: BraTS 2023's GLI (adult glioma), SSA, MEN, PED or MET, BraTS 2024's"
        " brats2024-gli, brats2024-ped, brats2024-met or brats2024-men-rt, or BraTS 2025's brats2025-met,"
        " brats2025-gli, brats2025-ped, brats2025-men (pre-operative), brats2025-men-rt or brats2025-goat"
        " (lesions matched one to one, as brats-evaluation on Panoptica; each with its label table:"
        " brats2025-met, brats2024-gli, brats2024-ped, brats2023, brats2024-men-rt, brats2023)",
    )
    p.add_argument("--workers", type=int, default=1, help="cases scored at once, each in its own process (default 1)")


def _add_mirror_argument(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--mirror", type=int, nargs="*", choices=[0, 1, 2], metavar="AXIS", help=help)


def _scoring_kwargs(args: argparse.Namespace) -> dict:
    labels = args.labels
    if args.labels_from is not None:
        from medseg.checkpoint import load_checkpoint
        from medseg.errors import MedsegInputError

        if labels != "auto":
            raise MedsegInputError("give --labels or --labels-from, not both")
        labels = load_checkpoint(args.labels_from, training=False).label_table
    return {
        "pred_dir": args.pred,
        "ref_dir": args.ref,
        "out_dir": args.out,
        "labels": labels,
        "lesion_rules": args.lesion_wise,
        "workers": args.workers,
    }


def _compare(args: argparse.Namespace) -> int:
    from medseg.evaluation import compare_evaluations, format_comparison

    rows = compare_evaluations(eval_dirs=args.eval_dirs, out_dir=args.out, names=args.names)
    print(format_comparison(rows))
    return 0


def _info(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from medseg.checkpoint import load_checkpoint
    from medseg.config import InferenceConfig, TransformConfig, mirroring_allowed
    from medseg.data.manifest import manifest_from_dict
    from medseg.inference import INFERENCE_PREPROCESSING
    from medseg.inference.quality import training_fingerprint
    from medseg.protocol import ModelDescription, TrainingData

    ckpt = load_checkpoint(args.model, training=False)
    training_data = None
    if ckpt.manifest is not None:  # checkpoints keep the manifest they were trained on
        fold = int(ckpt.config["data"]["fold"])
        training, validation = manifest_from_dict(ckpt.manifest, path=args.model).split(fold)
        training_data = TrainingData(
            fold=fold,
            num_folds=int(ckpt.manifest["num_folds"]),
            training_cases=len(training),
            validation_cases=tuple(case.id for case in validation),
        )
    transforms = ckpt.section("transforms", TransformConfig)
    info = ModelDescription(
        channels=tuple(ckpt.channels),
        labels=ckpt.label_table,
        network=ckpt.network,
        layout=ckpt.layout,
        mirroring=mirroring_allowed(transforms),
        inference=dataclasses.asdict(ckpt.section("inference", InferenceConfig)),  # defaults for older checkpoints
        medseg_version=ckpt.medseg_version,
        training_data=training_data,
        preprocessing={key: getattr(transforms, key) for key in INFERENCE_PREPROCESSING},
        training_fingerprint=ckpt.training_fingerprint,
    )
    if args.json:
        print(info.to_json())
        return 0
    names = ", ".join(f"{v}={n}" for v, n in sorted(info.labels.labels.items()))
    print(
        f"network {info.network['name']}; channels {', '.join(info.channels)}; labels {names}; test-time"
        f" mirroring {'available' if info.mirroring else 'refused (trained without flips)'}"
    )
    print(f"preprocessing: {_preprocessing_text(info.preprocessing)}")
    settings = " ".join(f"{key}={json.dumps(value)}" for key, value in info.inference.items())
    print(f"inference (medseg predict --set inference.KEY=VALUE changes one): {settings}")
    fingerprint = training_fingerprint(ckpt)
    if fingerprint is not None:
        print(fingerprint.describe())
    if training_data is not None:
        print(
            f"trained on fold {training_data.fold} of {training_data.num_folds}: {training_data.training_cases}"
            f" training cases, validated on {len(training_data.validation_cases)}:"
            f" {', '.join(training_data.validation_cases)}"
        )
    return 0


def _preprocessing_text(p: dict) -> str:
    """One line of a model's preprocessing (:attr:`~medseg.protocol.ModelDescription.preprocessing`): what
    a user checks before giving it their scans."""
    spacing = p["spacing"]
    resample = "as stored"
    if spacing is not None:
        resample = f"{' x '.join(f'{s:g}' for s in spacing)} mm ({p['interpolation']} interpolation)"
    if p["intensity"] == "ct_window":
        low, high = p["hu_window"]
        intensity = f"CT window [{low:g}, {high:g}] HU scaled to [0, 1]"
    else:
        intensity = "z-score over nonzero voxels"
    if p["intensity_offset"]:
        intensity = f"stored values {p['intensity_offset']:+g} first, then {intensity}"
    if p["clip_percentiles"] is not None:
        low, high = p["clip_percentiles"]
        intensity = f"nonzero voxels clipped to their {low:g}-{high:g} percentiles, then {intensity}"
    crop = "none"
    if p["crop_foreground"]:
        threshold = p["foreground_threshold"]
        crop = "box of nonzero voxels" if threshold is None else f"box of voxels above {threshold:g}"
    return f"orientation {p['orientation']}; spacing {resample}; intensity {intensity}; crop {crop}"


_DEMO_DEFAULTS = {  # output folder, bundled config (medseg/configs/)
    "brats": (Path("runs/demo"), "demo_brats_phantom"),
    "ct": (Path("runs/demo_ct"), "demo_ct_phantom"),
}


def _demo(args: argparse.Namespace) -> int:
    from medseg.config import bundled_configs
    from medseg.demo import run_ct_demo, run_demo

    out, config = _DEMO_DEFAULTS[args.kind]
    run = run_ct_demo if args.kind == "ct" else run_demo
    run(out_dir=args.out or out, config=args.config or bundled_configs()[config], overrides=args.set)
    return 0


def _quiet_library_noise() -> None:
    """Hide dependency chatter a user cannot act on (shown again with ``--debug``): MONAI's
    deprecation notices and its note that the optional GPU DICOM decoder (nvImageCodec) is absent."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\.")
    warnings.filterwarnings("ignore", message=r".*nvImageCodec", category=UserWarning)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="medseg", description="3D medical image segmentation on MONAI.")
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    phantoms = sub.add_parser("phantoms", help="generate synthetic datasets").add_subparsers(dest="kind", required=True)
    p = phantoms.add_parser("brats", help="BraTS-layout brain MRI phantoms with tumours")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--release",
        choices=["2021", "2023", "2024"],
        default="2021",
        help="2021 (labels 1/2/4), 2023 (1/2/3) or 2024 (post-treatment glioma: 1/2/3 and 4 resection cavity)",
    )
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        default=[240, 240, 155],
        help="voxel grid as stored in the NIfTI file (first, second, third axis)",
    )
    p.add_argument("--spacing", type=float, default=1.0, help="isotropic voxel size in mm")
    p.set_defaults(handler=_phantoms_brats)
    p = phantoms.add_parser("ct", help="abdominal CT organ phantoms in MSD layout")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_phantoms_ct)
    for p in phantoms.choices.values():
        p.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
        p.add_argument("--overwrite", action="store_true", help="replace cases that already exist in --out")

    manifest = sub.add_parser("manifest", help="build or check a dataset manifest").add_subparsers(
        dest="action", required=True
    )
    p = manifest.add_parser("build", help="scan a dataset folder and write a manifest JSON")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--layout", choices=["brats", "msd", "nnunet", "openkbp"], default="brats")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--labels",
        default="auto",
        help="auto (the layout's table), or a table name (brats2024-ped, ...): needed where the layout cannot"
        " tell, e.g. BraTS PED cases (2023's labels or 2024's)",
    )
    p.set_defaults(handler=_manifest_build)
    p = manifest.add_parser("check", help="verify a manifest's files exist and agree in shape and affine")
    p.add_argument("manifest", type=Path)
    p.add_argument("--root", type=Path, default=None, help="the dataset folder (default: the root the manifest names)")
    p.set_defaults(handler=_manifest_check)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", type=Path, required=True, help="a YAML file, or the name of a bundled config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun each process takes cuda:LOCAL_RANK)"
    )
    p.set_defaults(handler=_train)

    p = sub.add_parser(
        "plan", help="measure a config's dataset (spacing, shape, intensity) and suggest spacing, window and patch"
    )
    p.add_argument("--config", type=Path, required=True, help="a YAML file, or the name of a bundled config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", type=Path, required=True, help="folder for fingerprint.json, plan.json, fingerprint.png")
    p.add_argument("--workers", type=int, default=0, help="processes reading cases (default 0: this one)")
    p.add_argument("--max-patch-voxels", type=int, default=128**3, help="the largest patch to suggest (default 128^3)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (where statistics are computed)")
    p.set_defaults(handler=_plan)

    p = sub.add_parser("predict", help="segment an image, a DICOM series or a folder of cases")
    p.add_argument(
        "--model",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        help="a medseg checkpoint (.pt), or several that preprocess alike (e.g. the folds of a configuration): their"
        " mean logits",
    )
    p.add_argument(
        "--input",
        type=Path,
        help="an image file, a DICOM series folder, or a folder of cases (searched recursively)",
    )
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument(
        "--format",
        choices=LABEL_FORMATS,
        default="nifti",
        help="label-map format (dicom-seg only for DICOM input)",
    )
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>_probabilities.nii.gz (float32)")
    p.add_argument(
        "--save-uncertainty",
        action="store_true",
        help="also write <case>_uncertainty.nii.gz (entropy and mutual information, nats) and per-case"
        " uncertainty scores in summary.csv",
    )
    p.add_argument(
        "--cases",
        type=Path,
        default=None,
        help='JSON list of cases [{"id": ..., "images": [...]}] instead of discovering them under --input',
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="process only shard I of N (1-based, split by a stable hash of the case id); "
        "writes summary.shard-I-of-N.csv",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    _add_mirror_argument(
        p,
        "test-time mirroring: average over mirror images along these axes (0 1 2: R, A, S; all three, 8 passes,"
        " when none is given)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="inference.KEY=VALUE",
        help="change one of the checkpoint's inference settings, e.g. inference.min_component_ml={WT: 0.1}",
    )
    p.add_argument(
        "--cross-validation",
        action="store_true",
        help="instead of --input: each --model (one per fold) segments the cases of the fold it validated on",
    )
    p.add_argument(
        "--data-root", type=Path, default=None, help="with --cross-validation: the dataset's folder, if it moved"
    )
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar")
    p.set_defaults(handler=_predict)

    p = sub.add_parser("rank", help="active learning: the unlabelled cases to label next, most uncertain first")
    p.add_argument(
        "--model",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        help="a medseg checkpoint (.pt), or several that preprocess alike (an ensemble: their passes disagree)",
    )
    p.add_argument("--input", type=Path, default=None, help="the unlabelled cases: an image file or a folder")
    p.add_argument("--cases", type=Path, default=None, help="instead of --input: a JSON list of cases or a manifest")
    p.add_argument("--top", type=int, required=True, metavar="K", help="how many cases to choose")
    p.add_argument(
        "--score",
        default="entropy_boundary",
        metavar="NAME",
        help="the per-case uncertainty to rank by: entropy_ or mutual_information_ + foreground or boundary"
        " (default entropy_boundary; mutual_information_* need several passes: an ensemble, --mirror or"
        " --set inference.dropout_samples=N)",
    )
    p.add_argument(
        "--min-distance",
        type=float,
        default=0.5,
        help="skip a case whose descriptor (predicted volumes, extent, intensity statistics; in standard"
        " deviations over the cases) lies closer than this to one chosen before it (default 0.5; 0: no rule)",
    )
    p.add_argument("--output", type=Path, default=None, help="write the chosen cases as CSV (ranking.csv)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    _add_mirror_argument(p, "average over mirror images along these axes (as medseg predict --mirror): more passes")
    p.add_argument("--set", action="append", default=[], metavar="inference.KEY=VALUE")
    p.add_argument("--progress", choices=["bar", "none"], default="bar")
    p.set_defaults(handler=_rank)

    p = sub.add_parser(
        "calibrate", help="fit a temperature (temperature scaling) on validation cases into a copy of a checkpoint"
    )
    p.add_argument("--model", type=Path, required=True, help="a medseg checkpoint (.pt)")
    p.add_argument("--input", type=Path, default=None, help="the validation cases' images: a file or a folder of cases")
    p.add_argument("--cases", type=Path, default=None, help="instead of --input: a JSON list of cases")
    p.add_argument("--ref", type=Path, required=True, help="their reference label maps (dataset folder or manifest)")
    p.add_argument("--out", type=Path, required=True, help="the calibrated checkpoint to write (may be --model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    _add_mirror_argument(p, "fit for predictions averaged over these mirror images (as medseg predict --mirror)")
    p.add_argument("--set", action="append", default=[], metavar="inference.KEY=VALUE")
    p.add_argument("--voxels-per-case", type=int, default=100_000, help="voxels sampled per case (default 100000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the voxel sample")
    p.add_argument("--ece-bins", type=int, default=15, metavar="B", help="equal-width ECE bins (default 15)")
    p.set_defaults(handler=_calibrate)

    p = sub.add_parser("export", help="export a checkpoint's network as TorchScript or ONNX")
    p.add_argument("--model", type=Path, required=True, help="a medseg checkpoint (.pt)")
    p.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    p.add_argument("--out", type=Path, required=True, help="output file (.pt for TorchScript, .onnx)")
    p.set_defaults(handler=_export)

    p = sub.add_parser("evaluate", help="Dice, HD95 (mm) and NSD per region of predictions against references")
    _add_scoring_arguments(p, lesion_help="also score lesion-wise Dice and HD95 (BraTS) with these rules")
    p.add_argument(
        "--only-predicted",
        action="store_true",
        help="leave references without a prediction out (e.g. some folds' --cross-validation predictions),"
        " rather than score them as empty",
    )
    p.add_argument(
        "--nsd-tolerance",
        type=float,
        default=None,
        metavar="MM",
        help="the normalised surface Dice's tolerance in mm (default 1, as FLARE; TotalSegmentator reports 3)",
    )
    p.add_argument(
        "--scoring",
        default="auto",
        metavar="SCORING",
        help="how HD95 and NSD measure surfaces and score an empty mask: voxels (MONAI's surface voxels, the"
        " grid's diagonal), elements (area-weighted surface elements, the diagonal), brats2023 (elements, 374 mm:"
        " the BraTS 2023/2024 scripts), brats2025 (Panoptica's surface voxels, 373 mm); auto: brats2025 with BraTS"
        " 2025 lesion rules, else the label table's BraTS year, else voxels",
    )
    p.add_argument(
        "--ece-bins",
        type=int,
        default=15,
        metavar="B",
        help="equal-width bins of the expected calibration error, scored where --pred holds"
        " <case>_probabilities.nii.gz (default 15)",
    )
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser(
        "tune-postprocessing",
        help="choose inference.min_component_ml on a model's validation predictions and their references",
    )
    _add_scoring_arguments(p, lesion_help="score by lesion-wise Dice (BraTS) with these rules, not by Dice")
    p.add_argument("--candidates", type=float, nargs="+", default=None, metavar="ML", help="volumes to try, in mL")
    p.set_defaults(handler=_tune_postprocessing)

    p = sub.add_parser("compare", help="compare models evaluated on the same cases, region by region")
    p.add_argument("eval_dirs", type=Path, nargs="+", metavar="EVAL_DIR", help="medseg evaluate output folders")
    p.add_argument("--out", type=Path, required=True, help="where comparison.csv and comparison.png go")
    p.add_argument("--names", nargs="+", default=None, help="a name per folder (default: the folder names)")
    p.set_defaults(handler=_compare)

    p = sub.add_parser("info", help="describe a checkpoint: channels, labels, network")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object, medseg.protocol.ModelDescription (read by the Slicer module)",
    )
    p.set_defaults(handler=_info)

    p = sub.add_parser("demo", help="phantoms -> train -> predict -> evaluate -> report")
    p.add_argument(
        "kind", nargs="?", choices=sorted(_DEMO_DEFAULTS), default="brats", help="brats (default) or ct organs"
    )
    p.add_argument("--out", type=Path, default=None, help="default: runs/demo (brats), runs/demo_ct (ct)")
    p.add_argument("--config", type=Path, default=None, help="default: the bundled demo_<kind>_phantom config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medseg`` console script; returns the process exit code."""
    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. Training runs
    # augmentation workers beside the compute threads, and on a small CPU spinning threads that
    # wait for a descheduled peer made steps up to 20x slower (measured on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        return args.handler(args)
    _quiet_library_noise()
    try:
        return args.handler(args)
    except MedsegError as exc:
        print(f"medseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, never a traceback
        message = f"unexpected {type(exc).__name__}: {first_line(exc)} (rerun with --debug)"
        print(f"medseg: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
