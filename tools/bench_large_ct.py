"""Benchmark inference on a whole-body-sized CT: the label path's memory and time, before and after slabs.

A 512 x 512 x 800 CT (0.715 x 0.715 x 1.0 mm, int16 HU) is built once from a real abdominal CT,
TotalSegmentator's example (122 x 101 x 30 voxels of 3 mm): padded with air to a square field of view,
resampled linearly to 512 x 512 in-plane and 1 mm slices, and tiled along z (every other copy mirrored,
so the seams are continuous) to 800 slices. It and HU copies of the OpenKBP ``validation-pats`` CTs
(the set stores HU + 1000) are cached under ``--work``, never in the repository.

Two configurations run the same model on the same cases, each in its own process (its peak RSS is its
own), timed end to end (start, load the model, read, predict, write the NIfTI label map):

- ``full``: the label map from full-resolution probabilities, ``Predictor.predict_probabilities`` then
  ``labels_from_probabilities``: what every prediction computed before the slab path, and what
  ``medseg predict --save-probabilities`` still computes;
- ``slabs``: ``medseg predict`` (``Predictor.predict``, :mod:`medseg.inference.restore`).

``--previous DIR`` adds ``previous``: ``medseg predict`` run from another medseg checkout (e.g. a
worktree of the commit before the slab path), the true "before".

Agreement: per-label Dice between the ``full`` and ``slabs`` label maps on the large CT and on the real
CTs at their own grids (TotalSegmentator's example CT and the OpenKBP validation CTs); a label absent
from both maps is not scored. The model is ``--checkpoint`` (default: the CT demo's, trained on
phantoms with ``medseg demo ct`` under ``--work`` when missing: about 10 minutes on 2 cores).

Every configuration prints one JSON line per case; the last line is the summary (bytes per input voxel
is peak RSS over the case's voxels; ratios are after / before).

    .venv/bin/python tools/bench_large_ct.py
    .venv/bin/python tools/bench_large_ct.py --previous /tmp/medseg-before --validation-cases 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
from bench_real import REAL, REPO, run_stage

EXAMPLE_CT = REAL / "totalsegmentator_example" / "example_ct_sm.nii.gz"
LARGE_SHAPE = (512, 512, 800)
LARGE_SLICE_MM = 1.0
AIR_HU = -1024.0
OPENKBP_OFFSET = -1000  # OpenKBP stores HU + 1000


def build_large_ct(path: Path) -> Path:
    """Write the 512 x 512 x 800 int16 HU CT to ``path`` (once) and return it."""
    if path.exists():
        return path
    import nibabel as nib
    from scipy import ndimage

    ct = nib.load(EXAMPLE_CT)
    hu = np.asarray(ct.dataobj, dtype=np.float32)
    spacing = np.asarray(ct.header.get_zooms()[:3], dtype=np.float64)
    side = round(max(hu.shape[:2] * spacing[:2]) / spacing[0])  # a square field of view
    square = np.full((side, side, hu.shape[2]), AIR_HU, dtype=np.float32)
    x0, y0 = (side - hu.shape[0]) // 2, (side - hu.shape[1]) // 2
    square[x0 : x0 + hu.shape[0], y0 : y0 + hu.shape[1]] = hu
    in_plane = side * spacing[0] / LARGE_SHAPE[0]
    zoom = (LARGE_SHAPE[0] / side, LARGE_SHAPE[1] / side, spacing[2] / LARGE_SLICE_MM)
    block = ndimage.zoom(square, zoom, order=1, mode="nearest", grid_mode=True).astype(np.int16)
    blocks = [block if i % 2 == 0 else block[:, :, ::-1] for i in range(-(-LARGE_SHAPE[2] // block.shape[2]))]
    volume = np.concatenate(blocks, axis=2)[:, :, : LARGE_SHAPE[2]]
    affine = np.diag([in_plane, in_plane, LARGE_SLICE_MM, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial.nii.gz")
    nib.save(nib.Nifti1Image(volume, affine), partial)
    partial.replace(path)
    return path


def validation_cts(folder: Path, count: int) -> list[Path]:
    """HU copies of the first ``count`` OpenKBP validation CTs in ``folder`` (written once)."""
    import nibabel as nib

    patients = sorted((REAL / "openkbp" / "validation-pats").glob("pt_*"), key=lambda p: int(p.name[3:]))
    out = []
    for patient in patients[:count]:
        path = folder / f"openkbp_{patient.name}.nii.gz"
        if not path.exists():
            ct = nib.load(patient / "ct.nii.gz")
            hu = (np.asarray(ct.dataobj, dtype=np.int32) + OPENKBP_OFFSET).astype(np.int16)
            folder.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(hu, ct.affine), path)
        out.append(path)
    return out


def demo_checkpoint(work: Path) -> Path:
    """The CT demo's model, trained under ``work`` when missing."""
    checkpoint = work / "demo_ct" / "train" / "best.pt"
    if not checkpoint.exists():
        command = [sys.executable, "-m", "medseg", "demo", "ct", "--out", str(work / "demo_ct")]
        run_stage(command, work / "demo_ct.log")
    return checkpoint


def predict_full(checkpoint: Path, images: list[Path], output: Path) -> None:
    """The ``full`` configuration, in this process: each image's label map from its full-resolution
    probabilities, written as ``medseg predict`` names it."""
    from medseg.data.cases import discover_cases
    from medseg.inference import Predictor, read_case
    from medseg.io import write_label_map

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    output.mkdir(parents=True, exist_ok=True)
    for path in images:
        for case in discover_cases(path, channels=predictor.channels):
            image = read_case(case)
            labels = predictor.labels_from_probabilities(predictor.predict_probabilities(image), image)
            write_label_map(
                labels, image.geometry, output / f"{case.id}.nii.gz", table=predictor.table, reference=image
            )


def agreement(a: Path, b: Path) -> dict:
    """Dice of each label value present in either label map (NIfTI files on one grid), and how many
    voxels the two maps label differently."""
    import nibabel as nib

    x, y = (np.asarray(nib.load(p).dataobj) for p in (a, b))
    dice = {}
    for value in np.union1d(np.unique(x), np.unique(y)):
        if value == 0:
            continue
        inter = np.count_nonzero((x == value) & (y == value))
        dice[str(int(value))] = round(2 * inter / (np.count_nonzero(x == value) + np.count_nonzero(y == value)), 5)
    return {"dice": dice, "differing_voxels": int(np.count_nonzero(x != y)), "voxels": int(x.size)}


def run_configuration(name: str, args: argparse.Namespace, checkpoint: Path, image: Path, output: Path) -> dict:
    """Run configuration ``name`` on ``image`` in its own process: seconds and peak RSS."""
    (output / image.name).unlink(missing_ok=True)
    env, cwd = None, REPO
    if name == "full":
        command = [sys.executable, __file__, "--worker-full", str(checkpoint), str(image), str(output)]
    else:
        command = [sys.executable, "-m", "medseg", "predict", "--model", str(checkpoint), "--input", str(image)]
        command += ["--output", str(output), "--device", "cpu", "--progress", "none", "--overwrite"]
        if name == "previous":
            env, cwd = {**os.environ, "PYTHONPATH": str(args.previous)}, args.previous  # python -m: cwd first
    try:
        seconds, peak_gb = run_stage(command, args.work / f"{name}.log", env, cwd)
    except SystemExit as failure:  # e.g. killed for memory: a figure too
        return {"failed": str(failure)}
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(peak_gb, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: the CT demo's model (trained when missing)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_large_ct")
    parser.add_argument("--previous", type=Path, help="a medseg checkout to run as 'previous'")
    parser.add_argument("--validation-cases", type=int, default=5, help="OpenKBP validation CTs to compare on")
    parser.add_argument("--worker-full", nargs=3, metavar=("CHECKPOINT", "IMAGE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.worker_full:
        checkpoint, image, output = map(Path, args.worker_full)
        predict_full(checkpoint, [image], output)
        return
    if not REAL.is_dir():
        raise SystemExit(f"bench_large_ct: {REAL} is absent: the real CTs are not on this machine")
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or demo_checkpoint(args.work)
    large = build_large_ct(args.work / "large_ct.nii.gz")
    real = [
        REAL / "totalsegmentator_example" / "example_ct_sm.nii.gz",
        *validation_cts(args.work / "real", args.validation_cases),
    ]
    names = ["full", "slabs", *(["previous"] if args.previous else [])]
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    results: dict[str, dict] = {}
    agreements: dict[str, dict] = {}
    for image in [large, *real]:
        case = image.name.removesuffix(".nii.gz")
        voxels = int(np.prod(LARGE_SHAPE)) if image == large else None
        for name in names:
            figures = run_configuration(name, args, checkpoint, image, args.work / name)
            if voxels and "failed" not in figures:
                figures["bytes_per_voxel"] = round(figures["peak_rss_gb"] * 2**30 / voxels, 1)
            if voxels:
                results[name] = figures
            print(json.dumps({"case": case, "configuration": name, **figures, "machine": machine}), flush=True)
        maps = [args.work / name / image.name for name in ("full", "slabs")]
        if not all(p.exists() for p in maps):
            continue
        agreements[case] = agreement(*maps)
        print(json.dumps({"case": case, "slabs_vs_full": agreements[case]}), flush=True)
    before = "previous" if "seconds" in results.get("previous", {}) else "full"
    summary = {
        "summary": "bench_large_ct",
        "checkpoint": str(checkpoint),
        "shape": list(LARGE_SHAPE),
        "before": before,
        "rss_ratio": round(results["slabs"]["peak_rss_gb"] / results[before]["peak_rss_gb"], 3),
        "time_ratio": round(results["slabs"]["seconds"] / results[before]["seconds"], 3),
        **{name: figures for name, figures in results.items()},
        "min_dice_slabs_vs_full": min((d for a in agreements.values() for d in a["dice"].values()), default=None),
        "differing_voxels": sum(a["differing_voxels"] for a in agreements.values()),
        "machine": machine,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
