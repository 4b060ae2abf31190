"""Tests of the Slicer-free half of the Slicer module (``medseg.integrations.slicer``); the records it reads
are tested in ``tests/test_protocol.py``, the segments' names, colours and codes in ``tests/test_labels.py``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medseg.integrations import slicer as bridge
from medseg.protocol import CaseFinished, CaseStarted, RunFinished, RunStarted, parse_event_line

# --------------------------------------------------------------------------------------------------
# The child's Python
# --------------------------------------------------------------------------------------------------


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
# Progress
# --------------------------------------------------------------------------------------------------


def _ok(case: str, index: int, total: int) -> CaseFinished:
    return CaseFinished(case=case, index=index, total=total, status="ok", seconds=1.0, output=f"/o/{case}.seg.nrrd")


def test_run_progress_folds_a_run() -> None:
    progress = bridge.RunProgress()
    assert progress.fraction == 0.0 and progress.message() == "starting medseg..."
    progress.update(RunStarted(total=2))
    assert progress.message() == "0/2 cases finished"
    progress.update(CaseStarted(case="a", index=0, total=2))
    assert progress.fraction == 0.0 and progress.message() == "segmenting case 1/2 (a)..."
    progress.update(_ok("a", 0, 2))
    progress.update(CaseStarted(case="b", index=1, total=2))
    assert progress.fraction == pytest.approx(0.5) and progress.message() == "segmenting case 2/2 (b)..."
    progress.update(CaseFinished(case="b", index=1, total=2, status="failed", seconds=0.5, reason="bad"))
    assert progress.fraction == pytest.approx(1.0)
    progress.update(RunFinished(ok=1, failed=1, skipped=0))
    assert progress.done and progress.outputs == {"a": "/o/a.seg.nrrd"} and progress.failures == [("b", "bad")]
    assert progress.message() == "done: 1 ok, 1 failed, 0 skipped"


def test_run_progress_of_medsegs_own_lines() -> None:
    # what batch prints, read back through the protocol: a skipped case has no case_start
    lines = [
        RunStarted(total=1).to_line(),
        "a log line",
        CaseFinished(case="x", index=0, total=1, status="skipped", reason="outputs exist").to_line(),
        RunFinished(ok=0, failed=0, skipped=1).to_line(),
    ]
    progress = bridge.RunProgress()
    for event in filter(None, map(parse_event_line, lines)):
        progress.update(event)
    assert progress.done and progress.fraction == 1.0 and progress.skipped == [("x", "outputs exist")]


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


def test_the_panel_and_medseg_agree_on_one_grid() -> None:
    """The panel refuses exactly what ``medseg predict`` refuses: the same tolerances."""
    import inspect

    from medseg.io.image import GRID_TOLERANCE

    defaults = inspect.signature(bridge.check_same_grid).parameters
    assert defaults["tolerance_mm"].default == defaults["tolerance_dir"].default == GRID_TOLERANCE
    near = _grid(spacing=(1.0, 1.0, 2.0 + 5 * GRID_TOLERANCE))
    assert bridge.check_same_grid([_grid(), near], ["T1", "T2"])


def test_export_file_names() -> None:
    assert bridge.export_file_names("case", 4) == [
        "case_0000.nii.gz",
        "case_0001.nii.gz",
        "case_0002.nii.gz",
        "case_0003.nii.gz",
    ]
    assert bridge.output_file_name("case") == "case.seg.nrrd"
    for bad in ("", "a/b", "../x", "has space"):
        with pytest.raises(ValueError, match="invalid case id"):
            bridge.export_file_names(bad, 1)
    with pytest.raises(ValueError, match="at least one"):
        bridge.export_file_names("case", 0)


def test_find_output_segmentation(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="wrote no segmentation"):
        bridge.find_output_segmentation(tmp_path, "case")
    expected = tmp_path / "case.seg.nrrd"
    expected.write_bytes(b"x")
    assert bridge.find_output_segmentation(tmp_path, "case") == expected
    assert bridge.find_output_segmentation(tmp_path, "case", reported=str(tmp_path / "gone.seg.nrrd")) == expected
    reported = tmp_path / "sub" / "other.seg.nrrd"
    reported.parent.mkdir()
    reported.write_bytes(b"y")
    assert bridge.find_output_segmentation(tmp_path, "case", reported=str(reported)) == reported
    assert bridge.find_output_segmentation(tmp_path, "case", reported="sub/other.seg.nrrd") == reported


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
