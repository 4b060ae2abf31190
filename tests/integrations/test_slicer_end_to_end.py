"""End to end: the exact commands the Slicer module runs, on a phantom case exported as the module
exports it, with a tiny checkpoint; the ``.seg.nrrd``'s segments and geometry are checked against the model
description and the input.

Slicer's ``exportNode`` writes each volume with ITK's NIfTI writer; here SimpleITK (the same writer)
reads each phantom channel and writes it as ``case_000N.nii.gz`` in the checkpoint's channel order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medseg.integrations import slicer as bridge
from medseg.io import read_image
from medseg.protocol import InfoParameters, ModelDescription, PredictParameters, parse_event_line

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "tools" / "slicer" / "MedSeg"

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    script = MODULE_DIR / "Testing" / "make_tiny_checkpoint.py"
    subprocess.run([sys.executable, str(script), str(path)], check=True, env=_env(), capture_output=True)
    return path


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medseg.phantoms.brats import generate_brats_case

    root = tmp_path_factory.mktemp("phantom")
    return generate_brats_case(0, root, seed=0, release="2021", shape=(40, 48, 36), spacing=1.5)


@pytest.fixture(scope="module")
def info(checkpoint: Path) -> ModelDescription:
    command = InfoParameters(python_executable=sys.executable, model=checkpoint).command()
    result = subprocess.run(command, capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stderr
    return ModelDescription.from_json(result.stdout)


def _parameters(checkpoint: Path, tmp_path: Path, **changes: object) -> PredictParameters:
    """What the module asks for: ``--format seg.nrrd`` into its temporary folder."""
    fields: dict = {
        "python_executable": sys.executable,
        "model": checkpoint,
        "input_dir": tmp_path / "input",
        "output_dir": tmp_path / "output",
        "output_format": bridge.OUTPUT_FORMAT,
        "device": "cpu",
    }
    return PredictParameters(**{**fields, **changes})


def _export_like_the_module(case_dir: Path, channels: list[str], input_dir: Path) -> list[Path]:
    """Choose each channel's volume by name (as the panel guesses) and write it with ITK."""
    sources = sorted(p for p in case_dir.glob("*.nii.gz") if not p.name.endswith("_seg.nii.gz"))
    guesses = bridge.match_channel_volumes(channels, [p.name.removesuffix(".nii.gz") for p in sources])
    assert None not in guesses, f"cannot tell the channels apart in {[p.name for p in sources]}"
    assert bridge.validate_inputs(channels, [str(sources[g]) for g in guesses]) == []  # type: ignore[index]
    input_dir.mkdir(parents=True)
    paths = []
    for guess, name in zip(guesses, bridge.export_file_names(bridge.CASE_ID, len(channels)), strict=True):
        image = sitk.ReadImage(str(sources[guess]))  # type: ignore[index]
        sitk.WriteImage(image, str(input_dir / name), useCompression=True)
        paths.append(input_dir / name)
    return paths


def test_info_describes_the_checkpoint(info: ModelDescription) -> None:
    assert info.channels == ("T1", "T1ce", "T2", "FLAIR")
    assert [(s.value, s.name) for s in info.labels.segments()] == [(1, "NCR"), (2, "ED"), (4, "ET")]
    assert {s.concept.type.meaning for s in info.labels.segments()} == {"Necrosis", "Edema", "Enhancing Lesion"}
    assert info.mirroring  # trained with flips (the default config)


# the briefly trained model predicts one large piece per region (WT about 210 mL, TC 185, ET 136):
# 150 mL removes the ET piece (it becomes necrosis) and keeps the others
@pytest.mark.parametrize(
    ("mirror", "min_piece_ml"), [(False, 0.0), (True, 0.0), (False, 150.0)], ids=["plain", "mirrored", "pieces"]
)
def test_predict_command_on_an_exported_phantom(
    medseglib: None,
    tmp_path: Path,
    checkpoint: Path,
    phantom_case: Path,
    info: ModelDescription,
    mirror: bool,
    min_piece_ml: float,
) -> None:
    from MedSegLib.process import STDOUT, ChildProcess

    inputs = _export_like_the_module(phantom_case, list(info.channels), tmp_path / "input")
    output_dir = tmp_path / "output"
    output_dir.mkdir()
    parameters = _parameters(
        checkpoint,
        tmp_path,
        mirror=mirror,
        min_piece_ml=min_piece_ml,
        piece_names=info.labels.evaluation_names if min_piece_ml else (),
    )
    assert ("--mirror" in parameters.command()) == mirror
    assert ("--set" in parameters.command()) == (min_piece_ml > 0)
    process = ChildProcess(parameters.command(), env=_env())
    process.start()
    progress = bridge.RunProgress()
    events: list[str] = []

    def on_line(stream: str, text: str) -> None:
        event = parse_event_line(text) if stream == STDOUT else None
        if event is not None:
            events.append(event.event)
            progress.update(event)

    code = process.wait(on_line=on_line, timeout=300)
    assert code == 0, process.stderr_text
    assert events[0] == "start" and events[-1] == "done"
    assert {"case_start", "case_done"} <= set(events)
    assert progress.done and progress.fraction == 1.0 and progress.failures == []

    label_map = bridge.find_output_segmentation(
        output_dir, bridge.CASE_ID, reported=progress.outputs.get(bridge.CASE_ID)
    )
    assert label_map == output_dir / "case.seg.nrrd"
    written = read_image(label_map).meta["segments"]  # every label, as the model description says
    expected = info.labels.segments()
    assert [(s["label_value"], s["name"]) for s in written] == [(e.value, e.display_name) for e in expected]
    assert [s["tags"]["TerminologyEntry"] for s in written] == [e.concept.slicer_terminology() for e in expected]

    reference = sitk.ReadImage(str(inputs[0]))
    output = sitk.ReadImage(str(label_map))
    assert output.GetPixelID() == sitk.sitkUInt8
    assert output.GetSize() == reference.GetSize()
    np.testing.assert_allclose(output.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(output.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(output.GetDirection(), reference.GetDirection(), atol=1e-6)
    values = set(np.unique(sitk.GetArrayViewFromImage(output)).tolist())
    assert values <= {0, *info.labels.foreground_labels}
    if min_piece_ml:  # no region keeps a 26-connected piece under the minimum
        labels = sitk.GetArrayFromImage(output)
        voxel_ml = float(np.prod(output.GetSpacing())) / 1000
        for region in info.labels.regions:
            pieces, _ = ndimage.label(np.isin(labels, region.labels), structure=np.ones((3, 3, 3)))
            sizes = np.bincount(pieces.ravel())[1:]
            assert (sizes * voxel_ml >= min_piece_ml).all(), (region.name, sorted(sizes))
        assert 4 not in values and {1, 2} <= values


def test_predict_failure_gives_medsegs_one_line_message(
    medseglib: None, tmp_path: Path, checkpoint: Path, phantom_case: Path, info: ModelDescription
) -> None:
    from MedSegLib.process import ChildProcess

    inputs = _export_like_the_module(phantom_case, list(info.channels), tmp_path / "input")
    inputs[-1].unlink()  # a channel missing, as if an export had failed
    process = ChildProcess(_parameters(checkpoint, tmp_path).command(), env=_env())
    process.start()
    code = process.wait(timeout=300)
    assert code != 0
    message = bridge.error_message_from_stderr(process.stderr_text, exit_code=code)
    assert "medseg: error:" in process.stderr_text
    assert message and "Traceback" not in message and not message.startswith("medseg:")


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_cancel_stops_a_real_predict_run(
    medseglib: None, tmp_path: Path, checkpoint: Path, phantom_case: Path, info: ModelDescription
) -> None:
    from MedSegLib.process import ChildProcess

    _export_like_the_module(phantom_case, list(info.channels), tmp_path / "input")
    process = ChildProcess(_parameters(checkpoint, tmp_path).command(), env=_env(), kill_grace_seconds=2.0)
    process.start()
    process.cancel()  # while it is still importing torch
    code = process.wait(timeout=60)
    assert process.cancelled and code != 0
    assert not (tmp_path / "output" / "case.seg.nrrd").exists()
