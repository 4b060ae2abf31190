"""Benchmark CPU inference: MONAI's plain sliding window against medseg's Predictor, end to end.

For each network (the default ResU-Net and the nnU-Net-like DynUNet), on one full-size BraTS phantom
case (4 x 240 x 240 x 155, 1 mm):

- ``baseline``: MONAI ``sliding_window_inference`` (roi 128, overlap 0.5, gaussian), eager torch fp32,
  on the whole reoriented, normalised volume (no crop); only the sliding window and the label map
  are timed, not the file I/O, which flatters the baseline;
- ``predictor``: ``Predictor.from_checkpoint(...)`` with default settings, from loading the
  checkpoint to the label map written as NIfTI (reading the four channel files included);
- ``predictor_monai_tiling`` / ``predictor_roi_windows``: the Predictor with ``inference.tiling:
  monai`` (crop, then MONAI's windows at overlap 0.5: the quality reference for the tiling; the
  summary gives the default Predictor's Dice against it) and with tight windows no larger than
  ``roi_size`` (``inference.max_window`` = roi);
- ``predictor_uncropped_monai``: the Predictor doing what the baseline does (no crop, MONAI's windows
  at overlap 0.5) on its own backend: its Dice against the baseline checks that the Predictor's
  pipeline adds no disagreement of its own, and its time is what the backend alone gains;
- ``predictor_unbounded`` (networks with a default ``inference.max_window_voxels``, the DynUNet): the
  Predictor without that budget, to show what the budget costs in time and saves in memory;
- ``predictor_mirrored``: the Predictor with test-time mirroring along all three axes
  (``inference.mirror_axes: [0, 1, 2]``, eight passes), what it costs and what it changes;
- ``baseline_shifted``: the baseline with every window moved a quarter of the roi along each axis
  (one repeat). Its Dice against the baseline is how much the network's answer moves with window
  placement alone, whatever the inference code: roughly the best agreement to expect from any
  inference that places windows differently (cropping does).

Every configuration runs its repeats in one process: ``median_s`` is warm (OpenVINO compiles a window
shape once per process), ``first_s`` is the first repeat, compile included.

Every label map is also scored against the phantom's ground truth (``dice_vs_reference``), so a
disagreement with the baseline can be told apart from a loss of accuracy. ``far_false_positives``
counts each region's voxels more than 20 mm from the true region, and ``differences_vs_baseline``
says where a map and the baseline's differ: how many voxels, and which fractions of them lie within
1.5 mm of the true boundary (boundary jitter) or more than 20 mm from the true region.

The networks need trained weights (agreement on random weights means nothing once the background is
cropped away): the first run trains each on full-size 1 mm phantoms (``RECIPES``; on 2 CPU cores
about 20 min for ResU-Net and 100 min for DynUNet) and caches the checkpoints under ``runs/bench/``;
a cached checkpoint that another network or recipe stage trained is refused, not measured.
``--weights NAME=CHECKPOINT`` measures given weights instead (trained elsewhere, e.g. on a GPU); the
summary names the checkpoint each network's figures come from.
Every configuration runs in its own process, so its peak RSS is its own. Each prints one JSON line;
the last line is a summary.

    .venv/bin/python tools/bench_inference.py            # full run
    .venv/bin/python tools/bench_inference.py --quick    # small case, tiny networks, one repeat
    .venv/bin/python tools/bench_inference.py --networks dynunet --weights dynunet=gpu-run/best.pt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medseg.labels import LabelTable

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ["t1", "t1ce", "t2", "flair"]


def _network(name: str, quick: bool) -> dict[str, Any]:
    if not quick:
        return {"name": name, "kwargs": {}}
    if name == "resunet":
        return {"name": name, "kwargs": {"channels": [8, 16, 32], "strides": [2, 2]}}
    return {"name": name, "kwargs": {"filters": [8, 16, 32, 64], "strides": [1, 2, 2, 2], "kernel_size": [3] * 4}}


@dataclass(frozen=True)
class Stage:
    """One training run of a recipe: cubic patch edge (voxels), epochs of 20 steps, batch size and peak
    learning rate. The cosine schedule anneals to zero over exactly these epochs, so a short run still
    ends with a settled model."""

    patch: int
    epochs: int
    batch_size: int = 2
    lr: float = 3e-3


# Training recipe per network on this benchmark's 1 mm phantoms. Each later stage is a new run that
# starts from the previous stage's weights (``train.init_weights``). The DynUNet's second stage
# fine-tunes on patches the size of the baseline's 128³ windows, which holds its answers steadier
# across window placements (see the README's performance section). On 2 CPU cores ResU-Net takes
# ~20 min, DynUNet ~60 + ~40 min (once; cached).
RECIPES: dict[str, list[Stage]] = {
    "resunet": [Stage(patch=96, epochs=60)],
    "dynunet": [Stage(patch=64, epochs=42), Stage(patch=128, epochs=6, batch_size=1, lr=1e-3)],
}
QUICK_RECIPES: dict[str, list[Stage]] = {
    "resunet": [Stage(patch=32, epochs=2)],
    "dynunet": [Stage(patch=32, epochs=2), Stage(patch=64, epochs=1, batch_size=1, lr=1e-3)],
}


def train_checkpoint(name: str, *, out: Path, quick: bool) -> Path:
    """A briefly trained checkpoint of network ``name``, cached at ``out/checkpoints/<name>.pt`` (with
    each earlier stage's at ``<name>-stage<i>.pt``).

    Patches are drawn from the whole volume (no crop to the brain's box), so the network also sees the
    background-heavy windows that the uncropped baseline feeds it.
    """
    suffix = "-quick" if quick else ""
    stages = (QUICK_RECIPES if quick else RECIPES)[name]
    folder = out / "checkpoints"
    targets = [folder / f"{name}{suffix}-stage{i}.pt" for i in range(1, len(stages))] + [folder / f"{name}{suffix}.pt"]
    for stage, target, init in zip(stages, targets, [None, *targets[:-1]], strict=True):
        if target.is_file():
            _check_cached(target, name, stage)
        else:
            _train_stage(name, stage, root=_train_phantoms(out, quick), target=target, init=init, quick=quick)
    return targets[-1]


def _check_cached(target: Path, name: str, stage: Stage) -> None:
    """Refuse a cached checkpoint that another recipe trained: the figures would not be this recipe's."""
    from medseg.checkpoint import load_checkpoint

    config = load_checkpoint(target, training=False).config
    train = config["train"]
    cached = Stage(config["transforms"]["patch_size"][0], train["epochs"], train["batch_size"], train["lr"])
    if (config["network"]["name"], cached) != (name, stage):
        raise SystemExit(
            f"{target}: a {config['network']['name']} trained as {cached}, but the recipe asks for a {name} "
            f"trained as {stage}; delete it to retrain"
        )


def phantom_folder(root: Path, **kwargs: Any) -> Path:
    """``root`` holding the BraTS phantoms of ``generate_brats_dataset(**kwargs)``, generated once: into a
    ``.partial`` folder renamed when complete, so an interrupted generation is redone, never reused."""
    from medseg.phantoms.brats import generate_brats_dataset

    if not root.is_dir():
        partial = root.with_name(root.name + ".partial")
        generate_brats_dataset(partial, overwrite=True, **kwargs)
        partial.rename(root)
    return root


def _train_phantoms(out: Path, quick: bool) -> Path:
    shape, spacing = ((96, 96, 64), 2.5) if quick else ((240, 240, 155), 1.0)
    root = out / f"train_phantoms{'-quick' if quick else '-1mm'}"
    return phantom_folder(root, cases=3 if quick else 8, seed=21, shape=shape, spacing=spacing, workers=1)


def _train_stage(name: str, stage: Stage, *, root: Path, target: Path, init: Path | None, quick: bool) -> None:
    from medseg.config import config_from_dict
    from medseg.training import train

    run_dir = target.parent.parent / "train" / target.stem
    config = config_from_dict(
        {
            "seed": 0,
            "data": {"root": str(root), "num_folds": 3 if quick else 8, "num_workers": 0 if quick else 1},
            "transforms": {"patch_size": [stage.patch] * 3, "samples_per_case": 1, "crop_foreground": False},
            "network": _network(name, quick),
            "train": {
                "run_dir": str(run_dir),
                "epochs": stage.epochs,
                "iterations_per_epoch": 3 if quick else 20,
                "batch_size": stage.batch_size,
                "val_every": 1000,
                "warmup_epochs": 1,
                "lr": stage.lr,
                "schedule": "cosine",
                "amp": False,
                "init_weights": None if init is None else str(init),
            },
            "inference": {"roi_size": [64 if quick else 128] * 3, "sw_batch_size": 1},
        }
    )
    train(config, resume=(run_dir / "last.pt").is_file(), device="cpu")  # an interrupted run goes on
    target.parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "last.pt").replace(target)


def make_case(out: Path, quick: bool) -> Path:
    """The benchmark case folder (one BraTS 2021 phantom from a seed unseen in training)."""
    shape, spacing = ((120, 120, 80), 2.0) if quick else ((240, 240, 155), 1.0)
    root = phantom_folder(out / f"case{'-quick' if quick else ''}", cases=1, seed=99, shape=shape, spacing=spacing)
    return sorted(p for p in root.iterdir() if p.is_dir())[0]


# --------------------------------------------------------------------------- one configuration


def _case_files(case: Path) -> list[Path]:
    return [next(case.glob(f"*_{c}.nii.gz")) for c in CHANNELS]


def run_baseline(
    checkpoint: Path, case: Path, out_file: Path, repeats: int, shift: int = 0, device: str = "cpu"
) -> list[float]:
    """MONAI's plain sliding window on ``device`` (fp32); ``shift`` > 0 pads the volume's low corner by that
    many voxels of background first (removed from the output), moving every window by ``shift`` voxels per
    axis."""
    import torch
    import torch.nn.functional as F
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference

    from medseg.checkpoint import load_checkpoint
    from medseg.config import TransformConfig
    from medseg.data.cases import InputCase
    from medseg.inference import read_case
    from medseg.io import write_nifti
    from medseg.keys import IMAGE
    from medseg.postprocessing import outputs_to_labels
    from medseg.transforms import inference_transforms

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    ckpt = load_checkpoint(checkpoint, training=False)
    model = ckpt.build_model().to(device)
    image = read_case(InputCase(case.name, tuple(_case_files(case))))
    cfg = TransformConfig(**{**ckpt.config["transforms"], "crop_foreground": False})
    transforms = inference_transforms(cfg)
    seconds = []
    for _ in range(repeats):
        data = transforms({IMAGE: MetaTensor(torch.as_tensor(image.array), affine=image.geometry.affine)})
        x = data[IMAGE]
        tick = time.perf_counter()
        with torch.no_grad():
            logits = sliding_window_inference(
                F.pad(x.unsqueeze(0).as_tensor().to(device), [shift, 0] * 3),
                ckpt.config["inference"]["roi_size"],
                1,
                model,
                overlap=0.5,
                mode="gaussian",
            )[..., shift:, shift:, shift:].cpu()
        probs = torch.sigmoid(logits[0]) if ckpt.label_table.kind == "regions" else torch.softmax(logits[0], 0)
        restored = transforms.inverse(
            {IMAGE: MetaTensor(probs, affine=x.affine, applied_operations=x.applied_operations)}
        )
        labels = outputs_to_labels(torch.as_tensor(restored[IMAGE]), ckpt.label_table)
        seconds.append(time.perf_counter() - tick)
    write_nifti(labels, image.geometry, out_file, reference=image)
    return seconds


def run_predictor(
    checkpoint: Path, case: Path, out_file: Path, repeats: int, overrides: dict[str, Any], device: str = "cpu"
) -> tuple[list[float], dict[str, Any]]:
    from medseg.checkpoint import load_checkpoint
    from medseg.config import InferenceConfig
    from medseg.data.cases import InputCase
    from medseg.inference import Predictor, read_case
    from medseg.io import write_nifti

    inference = None
    if overrides:
        inference = InferenceConfig(**{**load_checkpoint(checkpoint, training=False).config["inference"], **overrides})
    seconds = []
    info: dict[str, Any] = {}
    for _ in range(repeats):
        tick = time.perf_counter()
        predictor = Predictor.from_checkpoint(checkpoint, device=device, inference=inference)
        image = read_case(InputCase(case.name, tuple(_case_files(case))))
        labels = predictor.predict(image)
        write_nifti(labels, image.geometry, out_file, reference=image)
        seconds.append(time.perf_counter() - tick)
        info = {"backend": predictor.backends[0].name, "tiling": predictor.inference.tiling}
    return seconds, info


def worker(args: argparse.Namespace) -> None:
    spec = json.loads(args.worker)
    checkpoint, case, out_file = Path(spec["checkpoint"]), Path(spec["case"]), Path(spec["out_file"])
    if spec["kind"] == "baseline":
        seconds = run_baseline(checkpoint, case, out_file, spec["repeats"], spec.get("shift", 0))
        info = {"backend": "torch", "tiling": f"monai-0.5-nocrop-shift{spec.get('shift', 0)}"}
    else:
        seconds, info = run_predictor(checkpoint, case, out_file, spec["repeats"], spec.get("overrides", {}))
    print(json.dumps({"seconds": seconds, "peak_rss_gb": round(peak_rss_gb(), 3), **info}), flush=True)


def peak_rss_gb() -> float:
    """This process's peak resident memory in GiB (Linux).

    ``VmHWM`` belongs to the process's own address space; ``getrusage``'s ``ru_maxrss`` survives
    ``exec`` and would report the driver's peak (it trains in-process) for every worker.
    """
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024**2  # kB


# --------------------------------------------------------------------------- driver


def region_masks(labels: np.ndarray, table: LabelTable) -> dict[str, np.ndarray]:
    """The boolean ``(X, Y, Z)`` mask of each region (BraTS WT/TC/ET) or label in a label map."""
    return {name: np.isin(labels, v) for name, v in table.evaluation_sets().items()}


def dice_per_region(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> dict[str, float]:
    """Dice of two label maps' region masks, per region; 1.0 where both are empty."""
    from medseg.evaluation.metrics import dice

    return {name: round(dice(x[name], y[name]), 4) for name in x}


# A voxel within NEAR_MM of a true region's boundary is boundary jitter; one of a predicted region further
# than FAR_MM from the true region is a false positive far from it (false oedema in the cortex).
NEAR_MM, FAR_MM = 1.5, 20.0


@dataclass(frozen=True)
class Truth:
    """The reference label map's region masks, and each voxel's distance (mm) to the nearest voxel on the
    other side of each region's boundary: to the region from outside it, out of it from inside."""

    masks: dict[str, np.ndarray]
    distance_mm: dict[str, np.ndarray]

    @classmethod
    def read(cls, reference: Path, table: LabelTable) -> Truth:
        from scipy.ndimage import distance_transform_edt

        from medseg.io import read_nifti

        image = read_nifti(reference)
        spacing = image.geometry.spacing
        masks = region_masks(np.asarray(image.array), table)
        distance = {
            name: np.where(m, distance_transform_edt(m, sampling=spacing), distance_transform_edt(~m, sampling=spacing))
            for name, m in masks.items()
        }
        return cls(masks, distance)

    def far_false_positives(self, masks: dict[str, np.ndarray]) -> dict[str, int]:
        """Voxels of each region of a label map (its ``region_masks``) further than FAR_MM from the true region."""
        return {name: int((m & (self.distance_mm[name] > FAR_MM)).sum()) for name, m in masks.items()}

    def differences(self, x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
        """Per region, the voxels on which two label maps' region masks differ, and the fractions of them
        within NEAR_MM of the true boundary and further than FAR_MM from the true region."""
        out = {}
        for name in x:
            differ = x[name] ^ y[name]
            distance = self.distance_mm[name][differ]
            far = distance[~self.masks[name][differ]] > FAR_MM
            n = int(differ.sum())
            out[name] = {
                "voxels": n,
                "near_boundary": round(float((distance <= NEAR_MM).mean()), 3) if n else 0.0,
                "far": round(float(far.sum() / n), 3) if n else 0.0,
            }
        return out


def run_config(spec: dict[str, Any], script: str = __file__) -> dict[str, Any]:
    """Run one configuration in a fresh process (``script --worker SPEC``); its last stdout line, as JSON."""
    proc = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"configuration {spec['name']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small case, tiny networks, one repeat (smoke test)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench", help="cache and output folder")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; 1 with --quick)")
    parser.add_argument("--networks", nargs="+", default=["resunet", "dynunet"])
    parser.add_argument("--no-study", action="store_true", help="skip the tiling study configurations")
    parser.add_argument(
        "--weights",
        nargs="+",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="measure these weights under NAME instead of training the recipe (e.g. a DynUNet trained on a GPU)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI: spinning OpenMP threads starve workers
    repeats = args.repeats or (1 if args.quick else 3)
    out = args.out.resolve()
    labels_dir = out / "labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    case = make_case(out, args.quick)
    reference = next(case.glob("*_seg.nii.gz"))
    machine = {
        "cores": len(os.sched_getaffinity(0)),
        "load_1min_at_start": round(os.getloadavg()[0], 2),
        "case": case.name,
        "quick": args.quick,
    }
    summary: dict[str, Any] = {"summary": True, **machine, "networks": {}}
    from medseg.checkpoint import load_checkpoint
    from medseg.io import read_nifti
    from medseg.networks.registry import default_window_voxels

    given = dict(item.split("=", 1) for item in args.weights)
    for name in given.keys() - set(args.networks):
        raise SystemExit(f"--weights {name}=...: {name} is not among --networks {' '.join(args.networks)}")
    for name in args.networks:
        checkpoint = Path(given[name]).resolve() if name in given else train_checkpoint(name, out=out, quick=args.quick)
        loaded = load_checkpoint(checkpoint, training=False)
        summary["networks"][name] = {"checkpoint": str(checkpoint)}
        table, roi = loaded.label_table, loaded.config["inference"]["roi_size"]
        truth = Truth.read(reference, table)
        configs = [
            ("baseline", {"kind": "baseline", "repeats": repeats}),
            ("predictor", {"kind": "predictor", "repeats": repeats}),
        ]
        if not args.no_study:
            uncropped = {"tiling": "monai", "crop_foreground": False}
            configs += [
                ("baseline_shifted", {"kind": "baseline", "repeats": 1, "shift": roi[0] // 4}),
                ("predictor_monai_tiling", {"kind": "predictor", "repeats": repeats, "overrides": {"tiling": "monai"}}),
                ("predictor_roi_windows", {"kind": "predictor", "repeats": repeats, "overrides": {"max_window": roi}}),
                ("predictor_uncropped_monai", {"kind": "predictor", "repeats": repeats, "overrides": uncropped}),
                (
                    "predictor_mirrored",
                    {"kind": "predictor", "repeats": repeats, "overrides": {"mirror_axes": [0, 1, 2]}},
                ),
            ]
            if default_window_voxels(loaded.network["name"], loaded.network["kwargs"]) is not None:
                unbounded = {"max_window_voxels": 2**40}  # one window per axis where max_window allows
                configs.append(
                    ("predictor_unbounded", {"kind": "predictor", "repeats": repeats, "overrides": unbounded})
                )
        results: dict[str, dict[str, Any]] = {}
        for config_name, spec in configs:
            out_file = labels_dir / f"{name}-{config_name}{'-quick' if args.quick else ''}.nii.gz"
            spec = {
                **spec,
                "name": config_name,
                "checkpoint": str(checkpoint),
                "case": str(case),
                "out_file": str(out_file),
            }
            load = round(os.getloadavg()[0], 2)
            result = run_config(spec)
            masks = region_masks(np.asarray(read_nifti(out_file).array), table)
            median = statistics.median(result["seconds"])
            row = {
                "network": name,
                "config": config_name,
                "median_s": round(median, 2),
                "first_s": round(result["seconds"][0], 2),  # the Predictor's first compiles for OpenVINO
                "seconds": [round(s, 2) for s in result["seconds"]],
                "peak_rss_gb": result["peak_rss_gb"],
                "backend": result["backend"],
                "tiling": result["tiling"],
                "load_1min": load,
            }
            if config_name != "baseline":  # the shifted baseline's Dice: how much window placement alone moves
                base = results["baseline"]
                if spec["kind"] == "predictor":
                    row["speedup"] = round(base["median_s"] / median, 2)
                row["dice_vs_baseline"] = dice_per_region(base["masks"], masks)
                row["differences_vs_baseline"] = truth.differences(base["masks"], masks)
            row["dice_vs_reference"] = dice_per_region(truth.masks, masks)
            row["far_false_positives"] = truth.far_false_positives(masks)
            print(json.dumps(row), flush=True)
            results[config_name] = {**row, "masks": masks}
        pred = results["predictor"]
        if "predictor_monai_tiling" in results:  # the tiling's effect alone: same crop, MONAI overlap 0.5
            crop_monai = results["predictor_monai_tiling"]["masks"]
            pred["dice_vs_crop_overlap_0.5"] = dice_per_region(crop_monai, pred["masks"])
        summary["networks"][name] |= {
            "baseline_s": results["baseline"]["median_s"],
            "predictor_s": pred["median_s"],
            "speedup": pred["speedup"],
            "min_dice": min(pred["dice_vs_baseline"].values()),
            "baseline_dice_vs_reference": results["baseline"]["dice_vs_reference"],
            "predictor_dice_vs_reference": pred["dice_vs_reference"],
            "peak_rss_gb": max(r["peak_rss_gb"] for r in results.values()),
            "predictor_peak_rss_gb": pred["peak_rss_gb"],
            "predictor_dice_vs_crop_overlap_0.5": pred.get("dice_vs_crop_overlap_0.5"),
            "shifted_baseline_dice": results.get("baseline_shifted", {}).get("dice_vs_baseline"),
            **{
                f"{k}_min_dice": min(v["dice_vs_baseline"].values())
                for k, v in results.items()
                if k.startswith("predictor_")
            },
        }
    summary["load_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
