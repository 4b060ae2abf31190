"""Benchmark the CUDA paths on one GPU: inference (fp32 baseline against the Predictor's fp16) and
training (fp32 against fp16 autocast with gradient scaling).

For each network (the default ResU-Net and the nnU-Net-like DynUNet, with seeded random weights: these
are timings; the fp16 label maps' agreement with fp32 on trained weights is ``tests/test_cuda.py``'s),
on the full-size BraTS phantom case of ``tools/bench_inference.py`` (4 x 240 x 240 x 155, 1 mm):

- ``baseline``: MONAI ``sliding_window_inference`` (roi 128, overlap 0.5, gaussian) in fp32 (torch's
  defaults, so cuDNN may use TF32) on the whole reoriented, normalised volume, no crop; the sliding
  window and the label map are timed, not the file I/O;
- ``predictor``: ``Predictor.from_checkpoint(..., device="cuda")`` with default settings (fp16 autocast,
  crop to the brain, medseg's tiling), from loading the checkpoint to the label map written as NIfTI;
- ``train_fp32`` / ``train_amp`` (``--train``, the DynUNet): ``medseg``'s own training loop on 128³
  patches, batch 2, from three full-size phantoms (data loading included, as a user gets it); the
  seconds per step of the second epoch (warm, no validation) and the peak GPU memory.

Each configuration runs in its own process (``tools/bench_inference.py``'s workers). Prints one JSON
line per configuration and a final summary line with the ratios.

    python tools/bench_cuda.py --train
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench_inference import CHANNELS, make_case, phantom_folder, run_baseline, run_config, run_predictor

REPO = Path(__file__).resolve().parents[1]
ROI = [128, 128, 128]
STEPS_PER_EPOCH = 8


def random_checkpoint(name: str, path: Path) -> Path:
    """A checkpoint of network ``name`` (default arguments) with seeded random weights, BraTS 2021
    labels, 128³ inference windows and otherwise the default config."""
    import torch

    from medseg.checkpoint import Checkpoint, save_checkpoint
    from medseg.config import Config
    from medseg.labels import BRATS2021
    from medseg.networks import build_network

    torch.manual_seed(0)
    config = Config().to_dict()
    config["network"] = {"name": name, "kwargs": {}}
    config["inference"]["roi_size"] = ROI
    model = build_network(name, in_channels=len(CHANNELS), out_channels=BRATS2021.num_outputs, kwargs={})
    checkpoint = Checkpoint(
        network=config["network"],
        channels=CHANNELS,
        label_table=BRATS2021,
        config=config,
        state_dict=model.state_dict(),
    )
    return save_checkpoint(checkpoint, path)


def train_seconds_per_step(out: Path, *, amp: bool) -> dict[str, Any]:
    """Train the DynUNet for three epochs of ``STEPS_PER_EPOCH`` steps on :func:`_train_phantoms`; the second epoch's
    seconds per step and the run's peak GPU memory (GiB)."""
    import torch

    from medseg.checkpoint import load_checkpoint
    from medseg.config import config_from_dict
    from medseg.training import train

    run_dir = out / "train" / ("amp" if amp else "fp32")
    config = config_from_dict(
        {
            "seed": 0,
            "data": {"root": str(_train_phantoms(out)), "num_folds": 3, "num_workers": 4},
            "transforms": {"patch_size": ROI, "samples_per_case": 1},
            "network": {"name": "dynunet", "kwargs": {}},
            "train": {
                "run_dir": str(run_dir),
                "epochs": 3,
                "iterations_per_epoch": STEPS_PER_EPOCH,
                "batch_size": 2,
                "val_every": 1000,
                "amp": amp,
            },
            "inference": {"roi_size": ROI},
        }
    )
    torch.cuda.reset_peak_memory_stats()
    train(config, device="cuda")
    history = load_checkpoint(run_dir / "last.pt").training["history"]
    return {
        "seconds_per_step": round(history[1]["seconds"] / STEPS_PER_EPOCH, 3),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2),
        "train_loss": [round(r["train_loss"], 4) for r in history],
    }


def _train_phantoms(out: Path) -> Path:
    return phantom_folder(out / "train_phantoms", cases=3, seed=21, shape=(240, 240, 155), spacing=1.0, workers=3)


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.cuda.reset_peak_memory_stats()
    checkpoint, case, out_file = Path(spec["checkpoint"]), Path(spec["case"]), Path(spec["out_file"])
    if spec["kind"] == "baseline":
        seconds = run_baseline(checkpoint, case, out_file, spec["repeats"], device="cuda")
    else:
        seconds, _ = run_predictor(checkpoint, case, out_file, spec["repeats"], {}, device="cuda")
    return {"seconds": seconds, "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_cuda", help="cache and output folder")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up")
    parser.add_argument("--networks", nargs="+", default=["resunet", "dynunet"])
    parser.add_argument("--train", action="store_true", help="also time the DynUNet's training steps")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))), flush=True)
        return 0
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda: no CUDA device")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    case = make_case(out, quick=False)
    summary: dict[str, Any] = {"summary": True, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name in args.networks:
        checkpoint = random_checkpoint(name, out / f"{name}-random.pt")
        medians = {}
        for kind in ("baseline", "predictor"):
            spec = {"name": f"{name}-{kind}", "kind": kind, "repeats": args.repeats + 1, "checkpoint": str(checkpoint)}
            spec.update(case=str(case), out_file=str(out / f"{name}-{kind}.nii.gz"))
            result = run_config(spec, __file__)
            warm = result["seconds"][1:]
            medians[kind] = statistics.median(warm)
            row = {"network": name, "config": kind, "median_s": round(medians[kind], 3)}
            row.update(first_s=round(result["seconds"][0], 3), peak_gpu_gb=result["peak_gpu_gb"])
            print(json.dumps(row), flush=True)
        summary[name] = {f"{k}_s": round(v, 3) for k, v in medians.items()}
        summary[name]["speedup"] = round(medians["baseline"] / medians["predictor"], 2)
    if args.train:
        steps = {}
        for amp in (False, True):
            steps[amp] = train_seconds_per_step(out, amp=amp)
            print(json.dumps({"network": "dynunet", "config": "train_amp" if amp else "train_fp32", **steps[amp]}))
        summary["train_amp_speedup"] = round(steps[False]["seconds_per_step"] / steps[True]["seconds_per_step"], 2)
        summary["train_amp_memory_ratio"] = round(steps[True]["peak_gpu_gb"] / steps[False]["peak_gpu_gb"], 2)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
