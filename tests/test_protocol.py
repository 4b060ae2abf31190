"""The records between the command line and its clients: progress events, model description, command lines."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from medseg.cli import build_parser
from medseg.errors import ProtocolError
from medseg.io.writers import LabelFormat
from medseg.labels import BRATS2021, LabelTable
from medseg.protocol import (
    EVENTS,
    LABEL_FORMATS,
    CaseFinished,
    CaseStarted,
    InfoParameters,
    ModelDescription,
    PredictParameters,
    RunFinished,
    RunStarted,
    TrainingData,
    parse_event_line,
)

# --------------------------------------------------------------------------------------------------
# Progress events
# --------------------------------------------------------------------------------------------------

EVENT_EXAMPLES = [
    RunStarted(total=3),
    RunStarted(total=1, shard="2/4"),
    CaseStarted(case="c1", index=0, total=3),
    CaseFinished(
        case="c1",
        index=0,
        total=3,
        status="ok",
        seconds=1.5,
        output="/o/c1.nii.gz",
        volumes_ml={"NCR": 1.25},
        uncertainty={"entropy_boundary": 0.25},
        flags=["touches_border", "uncertain"],
    ),
    CaseFinished(case="c2", index=1, total=3, status="failed", seconds=0.1, reason="c2.nii.gz: not 3-D"),
    CaseFinished(case="c3", index=2, total=3, status="skipped", output="/o/c3.nii.gz", reason="outputs exist"),
    CaseFinished(case="study_2", index=2, total=3, status="ok", series_uid="1.2.3", series_description="T1 axial"),
    RunFinished(ok=1, failed=1, skipped=1),
]


@pytest.mark.parametrize("event", EVENT_EXAMPLES, ids=lambda e: e.event)
def test_events_round_trip_through_one_line(event: object) -> None:
    line = event.to_line()  # type: ignore[attr-defined]
    assert "\n" not in line
    assert json.loads(line)["event"] == type(event).event
    assert parse_event_line(line + "\n") == event


def test_every_event_is_registered_under_its_name() -> None:
    assert {"start": RunStarted, "case_start": CaseStarted, "case_done": CaseFinished, "done": RunFinished} == EVENTS


def test_event_lines_are_the_wire_format_clients_read() -> None:
    assert json.loads(RunFinished(ok=3, failed=0, skipped=0).to_line()) == {
        "event": "done",
        "ok": 3,
        "failed": 0,
        "skipped": 0,
    }
    finished = json.loads(EVENT_EXAMPLES[3].to_line())
    fields = ["event", "case", "index", "total", "status", "seconds", "output", "reason", "volumes_ml"]
    fields += ["series_uid", "series_description", "uncertainty", "flags"]
    assert list(finished) == fields  # fields are only ever added, at the end


@pytest.mark.parametrize(
    "line",
    ["", "   ", "loading model...", "{not json", "[1, 2]", '{"no_event": 1}', '{"event": 3}', "Warning: {odd}"],
)
def test_lines_that_are_no_events_read_as_none(line: str) -> None:
    assert parse_event_line(line) is None


def test_events_of_a_newer_medseg_are_ignored_and_new_fields_too() -> None:
    assert parse_event_line('{"event": "warmup", "seconds": 2}') is None
    line = '{"event": "case_start", "case": "a", "index": 0, "total": 1, "eta_seconds": 5}'
    assert parse_event_line(line) == CaseStarted(case="a", index=0, total=1)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"event": "start"}', "'total' must be int, got None"),
        ('{"event": "start", "total": true}', "'total' must be int"),
        ('{"event": "case_start", "case": "a", "index": "0", "total": 1}', "'index' must be int"),
        ('{"event": "case_done", "case": "a", "index": 0, "total": 1, "status": "ok"}', "'seconds' must be float"),
        ('{"event": "case_done", "case": "a", "index": 0, "total": 1, "status": "great", "seconds": 1}', "status"),
        (
            '{"event": "case_done", "case": "a", "index": 0, "total": 1, "status": "ok", "seconds": 1,'
            ' "volumes_ml": {"x": "big"}}',
            "'x' must be float",
        ),
    ],
)
def test_malformed_events_are_refused(line: str, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_event_line(line)


# --------------------------------------------------------------------------------------------------
# Model description
# --------------------------------------------------------------------------------------------------


def _description(**changes: object) -> ModelDescription:
    fields: dict[str, object] = {
        "channels": ("T1", "T1ce", "T2", "FLAIR"),
        "labels": BRATS2021,
        "network": {"name": "unet", "kwargs": {"channels": [8, 16]}},
        "layout": "brats",
        "mirroring": True,
        "inference": {"roi_size": [64, 64, 64], "min_component_ml": {}},
        "medseg_version": "0.1.0",
        "training_data": TrainingData(fold=1, num_folds=5, training_cases=8, validation_cases=("c1", "c2")),
        "preprocessing": {"orientation": "RAS", "spacing": [1.5, 1.5, 2.0], "intensity": "ct_window"},
    }
    return ModelDescription(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize("training_data", [True, False])
def test_model_description_round_trips_through_json(training_data: bool) -> None:
    description = _description() if training_data else _description(training_data=None)
    assert ModelDescription.from_json(description.to_json()) == description
    assert ("training_data" in json.loads(description.to_json())) is training_data


def test_model_description_prints_the_segments_of_its_labels() -> None:
    data = _description().to_dict()
    assert data["labels"] == BRATS2021.to_dict()
    assert [s["name"] for s in data["segments"]] == ["NCR", "ED", "ET"]
    assert data["segments"][2] == {
        "value": 4,
        "name": "ET",
        "display_name": "Enhancing tumour",
        "color": [255, 230, 0],
        "category": ["SCT", "49755003", "Morphologically Abnormal Structure"],
        "type": ["NCIt", "C113842", "Enhancing Lesion"],
        "modifier": None,
    }


def test_model_description_from_pretty_or_noisy_output() -> None:
    text = _description().to_json()
    for output in (json.dumps(json.loads(text), indent=2), f"some warning\n{text}\n"):
        assert ModelDescription.from_json(output) == _description()


def test_model_description_of_an_older_medseg_allows_mirroring() -> None:
    data = _description().to_dict()
    del data["mirroring"], data["inference"], data["preprocessing"]
    description = ModelDescription.from_dict(data)
    assert description.mirroring and description.inference == {} and description.preprocessing == {}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no JSON object"),
        ("not json at all", "no JSON object"),
        (json.dumps({"channels": ["T1"]}), "'labels' must be dict"),
        (json.dumps({**_description().to_dict(), "labels": {"name": "x"}}), "label table is malformed"),
        (json.dumps({**_description().to_dict(), "channels": []}), "no input channels"),
        (json.dumps({**_description().to_dict(), "channels": ["T1", ""]}), "invalid channel name"),
        (json.dumps({**_description().to_dict(), "channels": ["T1", "T1"]}), "repeats channel name"),
        (json.dumps({**_description().to_dict(), "mirroring": "yes"}), "'mirroring' must be bool"),
    ],
)
def test_malformed_model_descriptions_are_refused(text: str, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        ModelDescription.from_json(text)


# --------------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------------


def test_predict_command_is_exact(tmp_path: Path) -> None:
    params = PredictParameters(
        python_executable="/opt/py/bin/python",
        model=tmp_path / "model.pt",
        input_dir=tmp_path / "in",
        output_dir=tmp_path / "out",
        output_format="seg.nrrd",
        device="cpu",
    )
    assert params.command() == [
        "/opt/py/bin/python",
        "-m",
        "medseg",
        "predict",
        "--model",
        str(tmp_path / "model.pt"),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--format",
        "seg.nrrd",
        "--progress",
        "json",
        "--device",
        "cpu",
    ]


def test_predict_command_backend_mirror_pieces_and_extra_args() -> None:
    base = {"python_executable": "py", "model": "m.pt", "input_dir": "in", "output_dir": "out"}
    auto = PredictParameters(**base).command()
    assert "--backend" not in auto and "--mirror" not in auto and "--set" not in auto
    assert auto[auto.index("--device") + 1] == "auto" and auto[auto.index("--format") + 1] == "nifti"
    names = BRATS2021.evaluation_names
    cmd = PredictParameters(
        **base,
        device="cuda:1",
        backend="openvino",
        mirror=True,
        min_piece_ml=0.25,
        piece_names=names,
        extra_args=("--overwrite",),
    ).command()
    assert cmd[cmd.index("--device") :] == [
        "--device",
        "cuda:1",
        "--backend",
        "openvino",
        "--mirror",
        "--set",
        'inference.min_component_ml={"WT": 0.25, "TC": 0.25, "ET": 0.25}',
        "--overwrite",
    ]


def test_the_cli_parses_the_predict_command_as_meant(tmp_path: Path) -> None:
    params = PredictParameters(
        python_executable="py",
        model=tmp_path / "m.pt",
        input_dir=tmp_path / "in",
        output_dir=tmp_path / "out",
        output_format="seg.nrrd",
        device="cuda:0",
        backend="torch",
        mirror=True,
        min_piece_ml=1.0,
        piece_names=("liver",),
    )
    args = build_parser().parse_args(params.command()[3:])  # after "py -m medseg"
    assert args.command == "predict" and args.model == [tmp_path / "m.pt"]
    assert (args.input, args.output, args.format) == (tmp_path / "in", tmp_path / "out", "seg.nrrd")
    assert (args.progress, args.device, args.backend, args.mirror) == ("json", "cuda:0", "torch", [])
    assert args.set == ['inference.min_component_ml={"liver": 1.0}']


def test_the_cli_parses_the_info_command() -> None:
    command = InfoParameters(python_executable="py", model=Path("/m/x.pt")).command()
    assert command[:3] == ["py", "-m", "medseg"]
    args = build_parser().parse_args(command[3:])
    assert args.command == "info" and args.model == Path("/m/x.pt") and args.json


def test_the_writers_take_the_protocols_formats() -> None:
    assert typing.get_args(LabelFormat) == LABEL_FORMATS


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"device": "gpu"}, "unknown device"),
        ({"device": "cuda:x"}, "unknown device"),
        ({"backend": "onnx"}, "unknown backend"),
        ({"output_format": "png"}, "unknown output format"),
        ({"python_executable": "  "}, "no Python"),
        ({"min_piece_ml": -0.1}, "a volume in mL >= 0"),
        ({"min_piece_ml": float("nan")}, "a volume in mL >= 0"),
        ({"min_piece_ml": 0.1}, "needs the model's region or label names"),
    ],
)
def test_predict_parameters_refuse_bad_values(changes: dict, match: str) -> None:
    base = {"python_executable": "py", "model": "m.pt", "input_dir": "in", "output_dir": "out"}
    with pytest.raises(ProtocolError, match=match):
        PredictParameters(**{**base, **changes})


def test_protocol_imports_no_torch_or_numpy() -> None:
    code = "import sys, medseg.protocol; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_table_without_foreground_has_no_segments() -> None:
    description = _description(labels=LabelTable(name="empty", labels={0: "background"}))
    assert ModelDescription.from_json(description.to_json()).to_dict()["segments"] == []
