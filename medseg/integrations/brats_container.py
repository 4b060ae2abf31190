"""The entry point of a BraTS challenge container: segment every case under ``/input`` into ``/output``.

BraTS 2025's orchestrator (the ``brats`` package, github.com/BrainLesion/BraTS: ``brats/core/docker.py`` and
``brats/core/segmentation_algorithms.py``) runs a container with the cases mounted at ``/input``, one folder
per case::

    /input/BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1c.nii.gz   (and -t1n, -t2f, -t2w)

and an empty ``/output`` mounted beside it, as the calling user rather than root. It expects one label map per
case there, ``/output/<case>.nii.gz``, and loads every file it finds in ``/output`` as NIfTI, so nothing else
may be left there. The label maps hold the challenge's own label values (the checkpoint's table, e.g.
``brats2024-gli``: 1 NETC, 2 SNFH, 3 ET, 4 RC) on each case's own grid.

This module is a thin layer over :func:`medseg.inference.predict_folder`: it predicts into a scratch folder
and moves only the label maps to the output folder. ``docker/Dockerfile`` (see ``docs/guides/brats_container.md``)
calls it as ``python -m medseg.integrations.brats_container``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from medseg.data.brats import case_files, detect_release
from medseg.errors import MedsegError, MedsegInputError, OutputError
from medseg.inference import predict_folder

INPUT_DIR = Path("/input")
OUTPUT_DIR = Path("/output")
MODEL_PATH = Path("/opt/medseg/model.pt")
"""Where ``docker/Dockerfile`` copies the checkpoint (build argument ``MODEL``), or where one is mounted."""


def case_dirs(input_dir: Path) -> list[Path]:
    """The case folders of ``input_dir``, sorted by name, each checked to hold its four modalities.

    Raises:
        MedsegInputError: ``input_dir`` is missing or holds no case folder, or a case lacks a modality
            (naming the missing file).
    """
    if not input_dir.is_dir():
        raise MedsegInputError("input folder not found", path=input_dir)
    cases = sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise MedsegInputError("no case folders (expected <case>/<case>-t1n.nii.gz, -t1c, -t2w, -t2f)", path=input_dir)
    for case in cases:
        case_files(case, detect_release(case))
    return cases


def segment_cases(
    *, input_dir: Path, output_dir: Path, model: Path | Sequence[Path], device: str = "auto"
) -> list[Path]:
    """Segment every case folder of ``input_dir`` into ``output_dir/<case>.nii.gz`` (see the module docstring).

    Args:
        input_dir: one folder per case, BraTS file names (:func:`case_dirs`).
        output_dir: receives the label maps and nothing else (created if missing).
        model: a medseg checkpoint, or several (an ensemble of folds).
        device: ``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The label maps written, one per case, in case order.

    Raises:
        MedsegInputError: as :func:`case_dirs`, or a case that could not be segmented (its reason).
        CheckpointError: ``model`` is not a readable medseg checkpoint.
        OutputError: a label map cannot be moved into ``output_dir``.
    """
    cases = case_dirs(Path(input_dir))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="medseg-brats-") as scratch:
        summary = predict_folder(model=model, input_path=input_dir, output_dir=Path(scratch), device=device)
        failed = [r for r in summary.results if r.status == "failed"]
        if failed:
            raise MedsegInputError(f"{len(failed)} case(s) failed; first: {failed[0].reason}", path=input_dir)
        for case in cases:
            target = output_dir / f"{case.name}.nii.gz"
            try:
                shutil.move(Path(scratch) / f"{case.name}.nii.gz", target)
            except OSError as exc:
                raise OutputError(f"cannot write the label map: {exc.strerror or exc}", path=target) from None
            written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """The container's command: ``--input``, ``--output`` and ``--model`` default to the challenge's paths.
    Returns the exit code: 0, or that of a medseg error, printed as one line."""
    parser = argparse.ArgumentParser(prog="medseg-brats-container", description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=INPUT_DIR, help=f"case folders (default {INPUT_DIR})")
    parser.add_argument("--output", type=Path, default=OUTPUT_DIR, help=f"label maps (default {OUTPUT_DIR})")
    parser.add_argument(
        "--model", type=Path, nargs="+", default=[MODEL_PATH], help=f"checkpoint(s) (default {MODEL_PATH})"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    try:
        written = segment_cases(input_dir=args.input, output_dir=args.output, model=args.model, device=args.device)
    except MedsegError as exc:
        print(f"medseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {len(written)} label map(s) to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
