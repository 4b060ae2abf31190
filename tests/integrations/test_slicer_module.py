"""Tests of the Slicer module's files that need no Slicer: they compile, the Slicer-free parts import
without Slicer, Qt or torch, the child-process runner streams and cancels, the ``.ui`` file is valid
Qt Designer XML holding every widget the panel looks up, and CMake lists every file."""

from __future__ import annotations

import ast
import json
import os
import py_compile
import re
import subprocess
import sys
import textwrap
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from medseg.integrations import slicer as bridge
from medseg.protocol import BACKENDS, parse_event_line

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "tools" / "slicer" / "MedSeg"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedSeg.ui"
PYTHON_FILES = sorted((REPO / "tools" / "slicer").rglob("*.py"))


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def test_module_layout() -> None:
    for relative in (
        "CMakeLists.txt",
        "MedSeg.py",
        "README.md",
        "MedSegLib/__init__.py",
        "MedSegLib/widget.py",
        "MedSegLib/logic.py",
        "MedSegLib/process.py",
        "MedSegLib/bridge.py",
        "Resources/UI/MedSeg.ui",
        "Resources/Icons/MedSeg.png",
        "Testing/make_tiny_checkpoint.py",
    ):
        assert (MODULE_DIR / relative).is_file(), relative


@pytest.mark.parametrize("path", PYTHON_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_python_files_compile(path: Path, tmp_path: Path) -> None:
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def test_module_file_is_small_and_declares_the_slicer_classes() -> None:
    source = (MODULE_DIR / "MedSeg.py").read_text()
    tree = ast.parse(source)
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes == {
        "MedSeg": ["ScriptedLoadableModule"],
        "MedSegWidget": ["ScriptedLoadableModuleWidget"],
        "MedSegLogic": ["ScriptedLoadableModuleLogic"],
        "MedSegTest": ["ScriptedLoadableModuleTest"],
    }
    assert len(source.splitlines()) < 200
    # The self-test really runs something: it segments and checks segments.
    test_source = ast.get_source_segment(source, next(n for n in tree.body if getattr(n, "name", "") == "MedSegTest"))
    assert test_source is not None and "logic.segment(" in test_source and "GetNumberOfSegments" in test_source


def test_cmake_lists_every_python_file_and_resource() -> None:
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MedSeg")
    assert "slicerMacroBuildScriptedModule" in cmake
    listed = set(re.findall(r"^\s+(\S+\.(?:py|png|ui))\s*$", cmake, flags=re.MULTILINE))
    on_disk = {str(p.relative_to(MODULE_DIR)).replace(os.sep, "/") for p in MODULE_DIR.rglob("*")}
    on_disk = {p for p in on_disk if p.endswith((".py", ".png", ".ui")) and "__pycache__" not in p}
    assert listed == on_disk


def test_icon_is_128_png() -> None:
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "MedSeg.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


# --------------------------------------------------------------------------------------------------
# Light imports
# --------------------------------------------------------------------------------------------------

_IMPORT_CHECK = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import MedSegLib.process, MedSegLib.bridge
    heavy = sorted(m for m in ("slicer", "qt", "vtk", "torch", "numpy", "ctk") if m in sys.modules)
    names = [MedSegLib.bridge.bridge.__name__, MedSegLib.bridge.protocol.__name__]
    print(json.dumps({"modules": names, "heavy": heavy}))
    """
)


def test_slicer_free_parts_import_without_slicer_qt_or_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, str(MODULE_DIR)], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert json.loads(result.stdout) == {"modules": ["medseg.integrations.slicer", "medseg.protocol"], "heavy": []}


def test_bridge_says_how_to_install_medseg_where_it_is_missing(tmp_path: Path) -> None:
    # ``-I -S`` keeps the checkout and site-packages (an editable install) off sys.path, like
    # Slicer's Python without medseg installed.
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _IMPORT_CHECK, str(MODULE_DIR)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode != 0
    assert "ImportError: medseg is not installed in Slicer's Python; install it" in result.stderr
    assert 'slicer.util.pip_install("--no-deps medseg")' in result.stderr


def test_module_imports_slicer_only_where_expected() -> None:
    # widget and logic are Slicer-side; process and bridge must not import Slicer or Qt at all.
    for name in ("process.py", "bridge.py", "__init__.py"):
        tree = ast.parse((MODULE_DIR / "MedSegLib" / name).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"slicer", "qt", "ctk", "vtk", "torch", "numpy"}, name


# --------------------------------------------------------------------------------------------------
# The child process runner
# --------------------------------------------------------------------------------------------------


def _fake_medseg(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "fake_medseg.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, str(script)]


def test_child_process_streams_stdout_and_stderr(medseglib: None, tmp_path: Path) -> None:
    from MedSegLib.process import STDERR, STDOUT, ChildProcess

    args = _fake_medseg(
        tmp_path,
        """
        import json, os, sys
        print(json.dumps({"event": "start", "total": 1}))
        print("a log line")
        print(json.dumps({"event": "case_start", "case": "case", "index": 0, "total": 1}))
        print("medseg: error: /x/case_0001.nii.gz: grid differs", file=sys.stderr)
        print("unbuffered=" + os.environ.get("PYTHONUNBUFFERED", ""))
        sys.exit(2)
        """,
    )
    process = ChildProcess(args)
    assert process.pid is None and process.returncode is None and not process.is_finished()
    process.start()
    lines: list[tuple[str, str]] = []
    code = process.wait(on_line=lambda stream, text: lines.append((stream, text)), timeout=60)
    assert code == 2
    stdout = [text for stream, text in lines if stream == STDOUT]
    assert stdout[1] == "a log line" and stdout[-1] == "unbuffered=1"
    assert [e.event for e in map(parse_event_line, stdout) if e] == ["start", "case_start"]
    assert (STDERR, "medseg: error: /x/case_0001.nii.gz: grid differs") in lines
    assert bridge.error_message_from_stderr(process.stderr_text) == "/x/case_0001.nii.gz: grid differs"
    with pytest.raises(RuntimeError, match="already started"):
        process.start()


def test_child_process_poll_does_not_block(medseglib: None, tmp_path: Path) -> None:
    from MedSegLib.process import ChildProcess

    args = _fake_medseg(tmp_path, "import time\nprint('first', flush=True)\ntime.sleep(30)\n")
    process = ChildProcess(args)
    process.start()
    try:
        deadline = time.monotonic() + 20
        seen: list[tuple[str, str]] = []
        while not seen and time.monotonic() < deadline:
            tick = time.monotonic()
            seen = process.poll()
            assert time.monotonic() - tick < 0.5
            time.sleep(0.02)
        assert seen == [("stdout", "first")]
        assert not process.is_finished()
    finally:
        process.kill()


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_child_process_cancel_stops_the_tree(medseglib: None, tmp_path: Path) -> None:
    from MedSegLib.process import ChildProcess

    pid_file = tmp_path / "grandchild.pid"
    args = _fake_medseg(
        tmp_path,
        f"""
        import signal, subprocess, sys, time
        # A child that ignores SIGTERM and a grandchild: cancel must escalate and reach both.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(grandchild.pid))
        print("ready", flush=True)
        time.sleep(60)
        """,
    )
    process = ChildProcess(args, kill_grace_seconds=0.5)
    process.start()
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    tick = time.monotonic()
    process.cancel()
    process.cancel()  # idempotent
    code = process.wait(timeout=30)
    assert process.cancelled and code < 0
    assert time.monotonic() - tick < 20
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        stat = Path(f"/proc/{grandchild}/stat")
        if stat.exists() and stat.read_text().split()[2] == "Z":
            break  # dead, waiting to be reaped by init
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild survived cancel")


def test_child_process_wait_timeout_kills(medseglib: None, tmp_path: Path) -> None:
    from MedSegLib.process import ChildProcess

    process = ChildProcess(_fake_medseg(tmp_path, "import time\ntime.sleep(60)\n"))
    process.start()
    with pytest.raises(TimeoutError):
        process.wait(timeout=0.5)
    assert process.returncode is not None


def test_child_process_reports_a_missing_program(medseglib: None, tmp_path: Path) -> None:
    from MedSegLib.process import ChildProcess

    with pytest.raises(OSError):
        ChildProcess([str(tmp_path / "no-such-python")]).start()


# --------------------------------------------------------------------------------------------------
# The logic, with a stand-in for Slicer
# --------------------------------------------------------------------------------------------------


class _FakeSegmentation:  # VTK's method names
    """The part of ``vtkSegmentation`` the logic uses; segments are ``{"name", "color", "tags"}`` dicts."""

    def __init__(self, segments: dict[str, dict]) -> None:
        self.segments = dict(segments)

    def GetNumberOfSegments(self) -> int:
        return len(self.segments)

    def GetNthSegmentID(self, index: int) -> str:
        return list(self.segments)[index]

    def RemoveAllSegments(self) -> None:
        self.segments.clear()

    def CopySegmentFromSegmentation(self, source: _FakeSegmentation, segment_id: str) -> None:
        self.segments[segment_id] = dict(source.segments[segment_id])


class _FakeNode:
    """A segmentation node: what ``slicer.util.loadSegmentation`` returns, or one the user chose."""

    def __init__(self, name: str, segments: dict[str, dict], storage: object | None = None) -> None:
        self.name, self.segmentation, self.storage = name, _FakeSegmentation(segments), storage
        self.transform, self.reference, self.displayed = None, None, False

    def GetSegmentation(self) -> _FakeSegmentation:
        return self.segmentation

    def GetStorageNode(self) -> object | None:
        return self.storage

    def SetName(self, name: str) -> None:
        self.name = name

    def CreateDefaultDisplayNodes(self) -> None:
        self.displayed = True

    def SetAndObserveTransformNodeID(self, node_id: str | None) -> None:
        self.transform = node_id

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume: object) -> None:
        self.reference = volume


class _FakeVolume:
    def GetName(self) -> str:
        return "t1"

    def GetTransformNodeID(self) -> str:
        return "vtkMRMLLinearTransformNode1"


def _load_segmentation(path: str) -> _FakeNode:
    """Slicer's segmentation loader, played by medseg's own ``.seg.nrrd`` reader: segment ids, names, colours
    and tags as Slicer reads them from the header."""
    from medseg.io import read_image

    segments = read_image(path).meta["segments"]
    return _FakeNode(
        Path(path).name,
        {s["id"]: {"name": s["name"], "color": s["color"], "tags": s["tags"]} for s in segments},
        storage=f"storage of {path}",
    )


@pytest.fixture
def fake_slicer(medseglib: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> types.SimpleNamespace:
    """A ``slicer`` module with the calls the logic makes; ``removed`` lists the nodes it removed."""
    removed: list[object] = []
    scene = types.SimpleNamespace(RemoveNode=removed.append, GenerateUniqueName=lambda name: name)
    fake = types.ModuleType("slicer")
    fake.util = types.SimpleNamespace(loadSegmentation=_load_segmentation)  # type: ignore[attr-defined]
    fake.mrmlScene = scene  # type: ignore[attr-defined]
    fake.app = types.SimpleNamespace(temporaryPath=str(tmp_path), processEvents=lambda: None)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "slicer", fake)
    return types.SimpleNamespace(removed=removed)


_WRITE_SEG_NRRD = """
    import sys
    import numpy as np
    from medseg.io import Geometry, write_label_map
    from medseg.labels import BRATS2021
    from medseg.protocol import CaseFinished, CaseStarted, RunFinished, RunStarted

    out = sys.argv[1]
    print(RunStarted(total=1).to_line(), flush=True)
    print(CaseStarted(case="case", index=0, total=1).to_line(), flush=True)
    print('{"event": "case_start", "case": 7}')  # malformed: shown as text, not fatal
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[1:3, 1:3, 1:3] = 4
    write_label_map(labels, Geometry((6, 5, 4), np.eye(4)), out, table=BRATS2021)
    print(CaseFinished(case="case", index=0, total=1, status="ok", seconds=0.1, output=out).to_line())
    print(RunFinished(ok=1, failed=0, skipped=0).to_line())
"""


def _run(tmp_path: Path, segmentation: object | None) -> object:
    from MedSegLib.logic import Run, SegmentationRequest
    from MedSegLib.process import ChildProcess

    from medseg.labels import BRATS2021
    from medseg.protocol import ModelDescription, PredictParameters

    temp_dir = tmp_path / "medseg-run"
    (temp_dir / "output").mkdir(parents=True)
    description = ModelDescription(
        channels=("T1", "T1ce", "T2", "FLAIR"),
        labels=BRATS2021,
        network={"name": "unet", "kwargs": {}},
        layout="brats",
        mirroring=True,
        inference={},
        medseg_version="0.1.0",
    )
    output = temp_dir / "output" / bridge.output_file_name(bridge.CASE_ID)
    args = [*_fake_medseg(tmp_path, _WRITE_SEG_NRRD), str(output)]
    process = ChildProcess(args, env={**os.environ, "PYTHONPATH": str(REPO)})
    parameters = PredictParameters(
        python_executable=sys.executable,
        model="m.pt",
        input_dir=temp_dir / "input",
        output_dir=temp_dir / "output",
        output_format=bridge.OUTPUT_FORMAT,
    )
    request = SegmentationRequest(
        model="m.pt", model_info=description, volumes=[_FakeVolume()], segmentation=segmentation
    )
    process.start()
    return Run(request=request, temp_dir=temp_dir, parameters=parameters, process=process)


def _finish(run: object, lines: list[tuple[str, str, object]]) -> object:
    from MedSegLib.logic import SegmentationLogic

    logic = SegmentationLogic()
    deadline = time.monotonic() + 120
    while not logic.step(run, lambda stream, text, event: lines.append((stream, text, event))):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "the fake medseg did not finish"
        time.sleep(0.05)
    return logic.finish(run)  # type: ignore[arg-type]


def test_logic_follows_the_events_and_loads_the_seg_nrrd(fake_slicer: types.SimpleNamespace, tmp_path: Path) -> None:
    from medseg.labels import BRATS2021

    run = _run(tmp_path, segmentation=None)
    lines: list[tuple[str, str, object]] = []
    node = _finish(run, lines)
    events = [event for _, _, event in lines if event is not None]
    assert [e.event for e in events] == ["start", "case_start", "case_done", "done"]  # type: ignore[attr-defined]
    assert [text for _, text, event in lines if event is None] == ['{"event": "case_start", "case": 7}']
    assert run.progress.done and run.progress.fraction == 1.0  # type: ignore[attr-defined]
    # every label of the table, absent (NCR, ED) or present (ET), named, coloured and coded by medseg
    segments = list(node.GetSegmentation().segments.values())  # type: ignore[attr-defined]
    expected = BRATS2021.segments()
    assert [s["name"] for s in segments] == [e.display_name for e in expected]
    assert [tuple(round(c * 255) for c in s["color"]) for s in segments] == [e.color for e in expected]
    assert [s["tags"]["TerminologyEntry"] for s in segments] == [e.concept.slicer_terminology() for e in expected]
    assert node.name == "t1 medseg" and node.transform == "vtkMRMLLinearTransformNode1"  # type: ignore[attr-defined]
    assert node.displayed and isinstance(node.reference, _FakeVolume)  # type: ignore[attr-defined]
    assert fake_slicer.removed == [f"storage of {run.temp_dir / 'output' / 'case.seg.nrrd'}"]  # type: ignore[attr-defined]
    assert not run.temp_dir.exists()  # type: ignore[attr-defined]


def test_logic_replaces_the_segments_of_a_chosen_node(fake_slicer: types.SimpleNamespace, tmp_path: Path) -> None:
    chosen = _FakeNode("mine", {"old": {"name": "old", "color": (0, 0, 0), "tags": {}}})
    run = _run(tmp_path, segmentation=chosen)
    assert _finish(run, []) is chosen
    assert [s["name"] for s in chosen.segmentation.segments.values()] == [
        "Necrotic tumour core",
        "Peritumoral edema",
        "Enhancing tumour",
    ]
    assert chosen.name == "mine" and chosen.transform == "vtkMRMLLinearTransformNode1"
    loaded = [node for node in fake_slicer.removed if isinstance(node, _FakeNode)]
    assert len(loaded) == 1 and loaded[0] is not chosen  # the loaded node is removed once its segments are copied


# --------------------------------------------------------------------------------------------------
# The .ui file and the widget code agree
# --------------------------------------------------------------------------------------------------


def _ui_widgets() -> dict[str, str]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}  # type: ignore[misc]


def test_ui_is_qt_designer_xml() -> None:
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == "MedSeg"
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == "MedSeg"
    names = [w.get("name") for w in root.iter("widget")] + [w.get("name") for w in root.iter("layout")]
    assert all(names) and len(names) == len(set(names)), "every widget and layout needs a unique name"
    # Every non-Qt class used is declared as a custom widget.
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if c and not c.startswith("Q")} <= declared


def test_ui_has_the_expected_widgets() -> None:
    widgets = _ui_widgets()
    assert widgets["modelPathLineEdit"] == "ctkPathLineEdit"
    assert widgets["pythonPathLineEdit"] == "ctkPathLineEdit"
    assert widgets["outputSegmentationSelector"] == "qMRMLNodeComboBox"
    assert widgets["deviceComboBox"] == widgets["backendComboBox"] == "QComboBox"
    assert widgets["applyButton"] == widgets["cancelButton"] == "QPushButton"
    assert widgets["progressBar"] == "QProgressBar"
    assert widgets["logTextEdit"] == "QPlainTextEdit"
    root = ET.parse(UI_FILE).getroot()
    container = next(w for w in root.iter("widget") if w.get("name") == "channelsContainer")
    layout = container.find("layout")
    assert layout is not None and layout.get("class") == "QFormLayout"  # the panel calls addRow/removeRow
    selector = next(w for w in root.iter("widget") if w.get("name") == "outputSegmentationSelector")
    types = [s.text for s in selector.iter("string") if s.text and s.text.startswith("vtkMRML")]
    assert types == ["vtkMRMLSegmentationNode"]


def test_ui_combo_items_match_the_bridge() -> None:
    root = ET.parse(UI_FILE).getroot()
    for name, expected in (("deviceComboBox", bridge.DEVICES), ("backendComboBox", BACKENDS)):
        combo = next(w for w in root.iter("widget") if w.get("name") == name)
        items = [item.findtext("property/string") for item in combo.findall("item")]
        assert tuple(items) == expected


def _names_used_by(source: str) -> set[str]:
    names = set(re.findall(r"\bui\.([A-Za-z_]\w*)", source))
    names |= set(re.findall(r"findChild\([^,]+,\s*[\"'](\w+)[\"']\)", source))
    return names


def test_every_widget_the_code_uses_is_in_the_ui() -> None:
    sources = [MODULE_DIR / "MedSeg.py", *sorted((MODULE_DIR / "MedSegLib").glob("*.py"))]
    used = set().union(*(_names_used_by(p.read_text()) for p in sources))
    assert {"applyButton", "cancelButton", "progressBar", "channelsContainer"} <= used  # the regex works
    missing = used - set(_ui_widgets())
    assert not missing, f"used in code but not in MedSeg.ui: {sorted(missing)}"


def test_name_extraction_catches_drift() -> None:
    assert _names_used_by("self.ui.applyButton.enabled = True\nx = self.ui.fooBar") == {"applyButton", "fooBar"}
    assert _names_used_by('w = slicer.util.findChild(panel, "statusLabel")') == {"statusLabel"}
