"""Tests of the Slicer-free half of the Slicer module (``medseg.integrations.slicer``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medseg.integrations import slicer as bridge
from medseg.labels import BRATS2021, BRATS2023, LabelTable

# --------------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------------


def test_predict_command_is_exact(tmp_path: Path) -> None:
    params = bridge.PredictParameters(
        python_executable="/opt/py/bin/python",
        model=tmp_path / "model.pt",
        input_dir=tmp_path / "in",
        output_dir=tmp_path / "out",
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
        "--progress",
        "json",
        "--device",
        "cpu",
    ]


def test_predict_command_backend_and_extra_args() -> None:
    auto = bridge.PredictParameters("py", "m.pt", "in", "out").command()
    assert "--backend" not in auto
    assert auto[auto.index("--device") + 1] == "auto"
    assert "--mirror" not in auto
    cmd = bridge.PredictParameters(
        "py", "m.pt", "in", "out", device="cuda:1", backend="openvino", mirror=True, extra_args=("--overwrite",)
    ).command()
    assert cmd[cmd.index("--progress") :] == [
        "--progress",
        "json",
        "--device",
        "cuda:1",
        "--backend",
        "openvino",
        "--mirror",
        "--overwrite",
    ]


def test_predict_command_removes_small_pieces_of_every_region() -> None:
    names = bridge.parse_model_info(json.dumps(_info())).piece_names()
    assert names == ("WT", "TC", "ET")
    cmd = bridge.PredictParameters("py", "m.pt", "in", "out", min_piece_ml=0.25, piece_names=names).command()
    assert cmd[-2:] == ["--set", 'inference.min_component_ml={"WT": 0.25, "TC": 0.25, "ET": 0.25}']
    assert "--set" not in bridge.PredictParameters("py", "m.pt", "in", "out", piece_names=names).command()


def test_piece_names_of_a_class_table_are_its_foreground_labels() -> None:
    organs = {"kind": "classes", "labels": {"0": "background", "2": "spleen", "1": "liver", "10": "aorta"}}
    assert bridge.ModelInfo(channels=("CT",), labels=organs).piece_names() == ("liver", "spleen", "aorta")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "gpu"}, "unknown device"),
        ({"device": "cuda:x"}, "unknown device"),
        ({"backend": "onnx"}, "unknown backend"),
        ({"python_executable": "  "}, "no Python"),
        ({"min_piece_ml": -0.1}, "a volume in mL >= 0"),
        ({"min_piece_ml": float("nan")}, "a volume in mL >= 0"),
        ({"min_piece_ml": 0.1}, "needs the model's region or label names"),
    ],
)
def test_predict_parameters_reject_bad_values(kwargs: dict, match: str) -> None:
    base = {"python_executable": "py", "model": "m.pt", "input_dir": "in", "output_dir": "out"}
    with pytest.raises(ValueError, match=match):
        bridge.PredictParameters(**{**base, **kwargs})


def test_info_command() -> None:
    assert bridge.InfoParameters("py", Path("/m/x.pt")).command() == [
        "py",
        "-m",
        "medseg",
        "info",
        "--model",
        str(Path("/m/x.pt")),
        "--json",
    ]


def test_resolve_python_executable(tmp_path: Path) -> None:
    python = tmp_path / "python3"
    python.write_text("")
    assert bridge.resolve_python_executable(str(python)) == str(python)
    with pytest.raises(ValueError, match="not found"):
        bridge.resolve_python_executable(str(tmp_path / "missing"))
    # Empty: PythonSlicer on the search path wins, else this interpreter.
    assert bridge.resolve_python_executable("", search_path=str(tmp_path)) == sys.executable
    if os.name != "nt":
        slicer_python = tmp_path / "PythonSlicer"
        slicer_python.write_text("#!/bin/sh\n")
        slicer_python.chmod(0o755)
        assert bridge.resolve_python_executable(None, search_path=str(tmp_path)) == str(slicer_python)


def test_format_command_round_trips_through_the_shell() -> None:
    if os.name == "nt":
        pytest.skip("POSIX shell quoting")
    import shlex

    args = ["py", "-m", "medseg", "--model", "/a b/it's.pt"]
    assert shlex.split(bridge.format_command(args)) == args


# --------------------------------------------------------------------------------------------------
# Progress stream
# --------------------------------------------------------------------------------------------------


def test_parse_progress_line_known_events() -> None:
    start = bridge.parse_progress_line('{"event": "start", "total": 2}\n')
    assert start == bridge.ProgressEvent(event="start", total=2)
    done = bridge.parse_progress_line(
        json.dumps(
            {
                "event": "case_done",
                "case": "c1",
                "index": 0,
                "total": 2,
                "status": "ok",
                "seconds": 1.5,
                "output": "/o/c1.nii.gz",
                "reason": None,
            }
        )
    )
    assert done is not None
    assert (done.event, done.case, done.index, done.status, done.seconds, done.output, done.reason) == (
        "case_done",
        "c1",
        0,
        "ok",
        1.5,
        "/o/c1.nii.gz",
        None,
    )
    summary = bridge.parse_progress_line('{"event":"done","ok":1,"failed":1,"skipped":0}')
    assert summary is not None and (summary.ok, summary.failed, summary.skipped) == (1, 1, 0)


@pytest.mark.parametrize(
    "line",
    ["", "   ", "loading model...", "{not json", "[1, 2]", '{"no_event": 1}', '{"event": 3}', "Warning: {odd}"],
)
def test_parse_progress_line_ignores_non_events(line: str) -> None:
    assert bridge.parse_progress_line(line) is None


def test_parse_progress_line_is_tolerant() -> None:
    unknown = bridge.parse_progress_line('{"event": "warmup", "extra": [1]}')
    assert unknown is not None and unknown.event == "warmup" and unknown.data["extra"] == [1]
    clamped = bridge.parse_progress_line('{"event": "progress", "case": "c", "fraction": 1.7}')
    assert clamped is not None and clamped.fraction == 1.0
    bad_types = bridge.parse_progress_line('{"event": "case_start", "index": "x", "total": true, "fraction": "nan"}')
    assert bad_types is not None and bad_types.index is None and bad_types.total is None and bad_types.fraction is None


def _events(*objects: dict) -> list[bridge.ProgressEvent]:
    events = [bridge.parse_progress_line(json.dumps(o)) for o in objects]
    assert all(e is not None for e in events)
    return events  # type: ignore[return-value]


def test_run_progress_folds_a_run() -> None:
    progress = bridge.RunProgress()
    assert progress.fraction == 0.0 and progress.message() == "starting medseg..."
    steps = _events(
        {"event": "start", "total": 2},
        {"event": "case_start", "case": "a", "index": 0, "total": 2},
        {"event": "progress", "case": "a", "fraction": 0.5},
    )
    for event in steps:
        progress.update(event)
    assert progress.fraction == pytest.approx(0.25)
    assert progress.message() == "segmenting case 1/2 (a): 50%"
    for event in _events(
        {"event": "case_done", "case": "a", "index": 0, "total": 2, "status": "ok", "seconds": 1, "output": "/o/a"},
        {"event": "case_start", "case": "b", "index": 1, "total": 2},
        {"event": "something_new"},
    ):
        progress.update(event)
    assert progress.fraction == pytest.approx(0.5)
    progress.update(
        _events({"event": "case_done", "case": "b", "index": 1, "total": 2, "status": "failed", "reason": "bad"})[0]
    )
    assert progress.fraction == pytest.approx(1.0)
    progress.update(_events({"event": "done", "ok": 1, "failed": 1, "skipped": 0})[0])
    assert progress.done and progress.outputs == {"a": "/o/a"} and progress.failures == [("b", "bad")]
    assert progress.message() == "done: 1 ok, 1 failed, 0 skipped"


def test_run_progress_without_progress_events_or_indices() -> None:
    progress = bridge.RunProgress()
    for event in _events(
        {"event": "start", "total": 1},
        {"event": "case_start", "case": "x"},
        {"event": "case_done", "case": "x", "status": "skipped", "reason": "exists"},
    ):
        progress.update(event)
    assert progress.fraction == 1.0 and progress.skipped == [("x", "exists")]


# --------------------------------------------------------------------------------------------------
# Model metadata
# --------------------------------------------------------------------------------------------------


def _info(channels: list | None = None) -> dict:
    return {
        "channels": ["T1", "T1ce", "T2", "FLAIR"] if channels is None else channels,
        "labels": BRATS2021.to_dict(),
        "network": {"name": "unet", "kwargs": {}},
        "layout": "brats",
        "medseg_version": "0.1.0",
    }


def test_parse_model_info_compact_pretty_and_noisy() -> None:
    for text in (
        json.dumps(_info()),
        json.dumps(_info(), indent=2),
        "some warning\n" + json.dumps(_info()) + "\n",
    ):
        info = bridge.parse_model_info(text)
        assert info.channels == ("T1", "T1ce", "T2", "FLAIR")
        assert info.labels["name"] == "brats2021"
        assert info.network["name"] == "unet" and info.layout == "brats" and info.medseg_version == "0.1.0"
        assert info.mirroring  # an older medseg's info does not say: medseg predict decides


@pytest.mark.parametrize(("reported", "expected"), [(True, True), (False, False)])
def test_parse_model_info_mirroring(reported: bool, expected: bool) -> None:
    assert bridge.parse_model_info(json.dumps({**_info(), "mirroring": reported})).mirroring is expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no JSON"),
        ("not json at all", "no JSON"),
        (json.dumps({"channels": ["T1"]}), "no label table"),
        (json.dumps({**_info(), "channels": []}), "no input channels"),
    ],
)
def test_parse_model_info_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bridge.parse_model_info(text)


def test_channel_slots() -> None:
    assert bridge.channel_slots(_info()) == ["T1", "T1ce", "T2", "FLAIR"]
    assert bridge.channel_slots({"channels": [" CT "]}) == ["CT"]
    with pytest.raises(ValueError, match="no input channels"):
        bridge.channel_slots({})
    with pytest.raises(ValueError, match="invalid channel name"):
        bridge.channel_slots({"channels": ["T1", ""]})
    with pytest.raises(ValueError, match="repeats"):
        bridge.channel_slots({"channels": ["T1", "T1"]})


# --------------------------------------------------------------------------------------------------
# Segments and terminology
# --------------------------------------------------------------------------------------------------


def test_segments_from_brats2021_table() -> None:
    specs = bridge.segments_from_label_table(BRATS2021.to_dict())
    assert [(s.label, s.name) for s in specs] == [(1, "NCR"), (2, "ED"), (4, "ET")]
    assert specs[0].color == pytest.approx((1.0, 64 / 255, 64 / 255))
    assert specs[0].type == bridge.Code("SCT", "6574001", "Necrosis")
    assert specs[1].type == bridge.Code("SCT", "79654002", "Edema")
    assert specs[2].type == bridge.Code("NCIt", "C113842", "Enhancing Lesion")
    assert all(s.category == bridge.MORPHOLOGICALLY_ALTERED_STRUCTURE for s in specs)
    assert specs[1].terminology_entry() == (
        "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
        "~SCT^79654002^Edema~^^~Anatomic codes - DICOM master list~^^~^^"
    )


def test_segments_from_brats2023_table_uses_label_3() -> None:
    specs = bridge.segments_from_label_table(BRATS2023.to_dict())
    assert [s.label for s in specs] == [1, 2, 3]
    assert specs[2].name == "ET"


def test_segments_from_organ_table_with_int_keys_and_missing_colors() -> None:
    table = LabelTable(
        name="organs",
        labels={
            0: "background",
            1: "liver",
            2: "Spleen",
            3: "kidney_left",
            4: "right kidney",
            5: "aorta",
            6: "pancreas",
            7: "bladder",
        },
        colors={1: (221, 130, 101)},
    )
    data = table.to_dict()
    data["labels"] = {int(k): v for k, v in data["labels"].items()}  # ints are accepted too
    specs = {s.label: s for s in bridge.segments_from_label_table(data)}
    assert sorted(specs) == [1, 2, 3, 4, 5, 6, 7]
    assert specs[1].color == pytest.approx((221 / 255, 130 / 255, 101 / 255))
    expected = {1: "10200004", 2: "78961009", 3: "64033007", 4: "64033007", 5: "15825003", 6: "15776009"}
    for label, code in expected.items():
        assert specs[label].category == bridge.ANATOMICAL_STRUCTURE
        assert specs[label].type is not None and specs[label].type.value == code
    assert specs[3].type_modifier == bridge.LEFT and specs[4].type_modifier == bridge.RIGHT
    assert "~SCT^64033007^Kidney~SCT^7771000^Left~" in (specs[3].terminology_entry() or "")
    # Unknown names: no codes, but still a segment with a distinct fallback colour.
    assert specs[7].type is None and specs[7].terminology_entry() is None
    colors = [s.color for s in specs.values()]
    assert len(set(colors)) == len(colors)
    assert all(0.0 <= c <= 1.0 for color in colors for c in color)


def test_segments_from_label_table_errors() -> None:
    with pytest.raises(ValueError, match="no 'labels'"):
        bridge.segments_from_label_table({})
    with pytest.raises(ValueError, match="not an integer"):
        bridge.segments_from_label_table({"labels": {"x": "a"}})
    with pytest.raises(ValueError, match="uint8"):
        bridge.segments_from_label_table({"labels": {"300": "a"}})
    assert bridge.segments_from_label_table({"labels": {"0": "background"}}) == []


# --------------------------------------------------------------------------------------------------
# Inputs and files
# --------------------------------------------------------------------------------------------------


def test_validate_inputs() -> None:
    channels = ["T1", "T1ce", "T2", "FLAIR"]
    assert bridge.validate_inputs(channels, ["n1", "n2", "n3", "n4"]) == []
    assert bridge.validate_inputs(channels, ["n1", None, "n3", ""]) == [
        "no volume selected for channel T1ce",
        "no volume selected for channel FLAIR",
    ]
    assert bridge.validate_inputs(channels, ["n1", "n2", "n1", "n4"]) == [
        "the same volume is selected for channels T1 and T2"
    ]
    wrong_count = bridge.validate_inputs(channels, ["n1", "n2"])
    assert wrong_count[0] == "the model needs 4 input volumes (T1, T1ce, T2, FLAIR), got 2"
    assert bridge.validate_inputs([], []) == ["no model loaded: choose a medseg checkpoint first"]


def _grid(**changes: object) -> bridge.VolumeGrid:
    base = {
        "dimensions": (10, 12, 8),
        "spacing": (1.0, 1.0, 2.0),
        "origin": (-5.0, 3.0, 0.0),
        "directions": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    }
    return bridge.VolumeGrid(**{**base, **changes})  # type: ignore[arg-type]


def test_check_same_grid() -> None:
    names = ["T1", "T2"]
    assert bridge.check_same_grid([_grid(), _grid(origin=(-5.0, 3.0, 0.0000001))], names) == []
    cases = {
        "voxels": _grid(dimensions=(10, 12, 9)),
        "spacing": _grid(spacing=(1.0, 1.0, 1.0)),
        "origin": _grid(origin=(0.0, 0.0, 0.0)),
        "oriented differently": _grid(directions=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))),
    }
    for word, other in cases.items():
        problems = bridge.check_same_grid([_grid(), other], names)
        assert len(problems) == 2 and word in problems[0] and problems[0].startswith("T2")
        assert "resample" in problems[1]
    with pytest.raises(ValueError):
        bridge.check_same_grid([_grid()], names)


def test_export_file_names() -> None:
    assert bridge.export_file_names("case", 4) == [
        "case_0000.nii.gz",
        "case_0001.nii.gz",
        "case_0002.nii.gz",
        "case_0003.nii.gz",
    ]
    assert bridge.output_file_name("case") == "case.nii.gz"
    for bad in ("", "a/b", "../x", "has space"):
        with pytest.raises(ValueError, match="invalid case id"):
            bridge.export_file_names(bad, 1)
    with pytest.raises(ValueError, match="at least one"):
        bridge.export_file_names("case", 0)


def test_find_output_label_map(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="wrote no label map"):
        bridge.find_output_label_map(tmp_path, "case")
    expected = tmp_path / "case.nii.gz"
    expected.write_bytes(b"x")
    assert bridge.find_output_label_map(tmp_path, "case") == expected
    assert bridge.find_output_label_map(tmp_path, "case", reported=str(tmp_path / "gone.nii.gz")) == expected
    reported = tmp_path / "sub" / "other.nii.gz"
    reported.parent.mkdir()
    reported.write_bytes(b"y")
    assert bridge.find_output_label_map(tmp_path, "case", reported=str(reported)) == reported
    assert bridge.find_output_label_map(tmp_path, "case", reported="sub/other.nii.gz") == reported


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_error_message_prefers_medsegs_own_line() -> None:
    stderr = "some library warning\nmedseg: error: /d/case_0001.nii.gz: image grid differs from channel 0\n"
    assert bridge.error_message_from_stderr(stderr) == "/d/case_0001.nii.gz: image grid differs from channel 0"
    argparse_error = "usage: medseg predict [-h] ...\nmedseg predict: error: unrecognized arguments: --backend torch"
    assert bridge.error_message_from_stderr(argparse_error) == "unrecognized arguments: --backend torch"


def test_error_message_from_traceback_and_missing_medseg() -> None:
    traceback = textwrap.dedent(
        """\
        Traceback (most recent call last):
          File "x.py", line 1, in <module>
        RuntimeError: CUDA out of memory
        """
    )
    assert bridge.error_message_from_stderr(traceback) == "RuntimeError: CUDA out of memory"
    missing = "/usr/bin/python3: No module named medseg\n"
    assert "not installed" in bridge.error_message_from_stderr(missing)
    assert bridge.error_message_from_stderr("medseg: interrupted\n") == "medseg was interrupted"
    assert bridge.error_message_from_stderr("", exit_code=-9) == "medseg exited with code -9 without a message"
    assert bridge.error_message_from_stderr("\n\n") == "medseg failed without a message"


def test_error_message_from_a_real_child_without_medseg(tmp_path: Path) -> None:
    # ``python -I`` isolates the child from this checkout, like an external Python lacking medseg.
    result = subprocess.run(
        [sys.executable, "-I", "-m", "medseg_that_does_not_exist"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode != 0
    assert bridge.error_message_from_stderr(result.stderr).endswith("No module named medseg_that_does_not_exist")


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; read its state where /proc exists.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_kill_process_tree_stops_child_and_grandchild(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(grandchild.pid))
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], **bridge.new_process_group_kwargs())
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(pid_file.read_text())
        assert _alive(grandchild)
        assert bridge.kill_process_tree(child.pid) is True
        assert child.wait(timeout=10) != 0
        deadline = time.monotonic() + 10
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(grandchild)
    finally:
        if child.poll() is None:
            bridge.kill_process_tree(child.pid, force=True)
            child.wait(timeout=10)


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_kill_process_tree_of_a_finished_child_reports_it_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"], **bridge.new_process_group_kwargs())
    child.wait(timeout=30)
    assert bridge.kill_process_tree(child.pid, force=True) is False


def test_match_channel_volumes() -> None:
    channels = ["T1", "T1ce", "T2", "FLAIR"]
    brats2021 = ["BraTS2021_00001_flair", "BraTS2021_00001_t1", "BraTS2021_00001_t1ce", "BraTS2021_00001_t2"]
    assert bridge.match_channel_volumes(channels, brats2021) == [1, 2, 3, 0]
    brats2023 = ["BraTS-GLI-00001-000-t1n", "BraTS-GLI-00001-000-t1c", "BraTS-GLI-00001-000-t2w", "x-t2f"]
    assert bridge.match_channel_volumes(channels, brats2023) == [0, 1, 2, 3]
    # Ambiguous or absent: no guess rather than a wrong one.
    assert bridge.match_channel_volumes(["T1", "T2"], ["a t1", "b t1", "MRHead"]) == [None, None]
    assert bridge.match_channel_volumes(["CT"], ["patient ct"]) == [0]
    assert bridge.match_channel_volumes([], ["x"]) == []
