"""The Slicer-free half of the 3D Slicer module (``tools/slicer/MedSeg``).

The module runs inference out of process: it exports the chosen volumes as nnU-Net-style channel
files, runs ``medseg predict --format seg.nrrd --progress json`` as a child process (the command line of
:class:`medseg.protocol.PredictParameters`), follows its progress events (:mod:`medseg.protocol`), and
loads the ``.seg.nrrd`` it writes, whose segments are named, coloured and coded from the model's label
table. Everything here that does not need Slicer lives in this module, so it can be tested with plain
pytest:

- :func:`resolve_python_executable` chooses the Python that runs medseg;
- :class:`RunProgress` folds a run's progress events into the panel's progress bar and status;
- :func:`validate_inputs`, :func:`match_channel_volumes`, :func:`check_same_grid`, :func:`export_file_names`
  and :func:`find_output_segmentation` check and name the files exchanged with the child;
- :func:`error_message_from_stderr` extracts medseg's own one-line error;
- :func:`new_process_group_kwargs` and :func:`kill_process_tree` make Cancel stop the child and
  everything it started.

Like :mod:`medseg.protocol` and :mod:`medseg.labels`, which the module uses beside it, this module imports
only the standard library (no torch, numpy, Qt or Slicer), so ``pip install --no-deps medseg`` is enough in
Slicer's Python.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.protocol import OUTPUT_SUFFIXES, CaseFinished, CaseStarted, ProgressEvent, RunFinished, RunStarted

DEVICES = ("auto", "cpu", "cuda")
"""Device choices offered in the module (``cuda:N`` is accepted too)."""

CASE_ID = "case"
"""The case id the module gives the single case it exports."""

NIFTI_SUFFIX = ".nii.gz"
OUTPUT_FORMAT = "seg.nrrd"
"""The label-map format the module asks medseg for: Slicer's own segmentation file."""

_CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------------------------------
# The child's Python
# --------------------------------------------------------------------------------------------------


def resolve_python_executable(configured: str | None, *, search_path: str | None = None) -> str:
    """The Python to run medseg with.

    Args:
        configured: the path the user chose; empty or ``None`` means "Slicer's own Python".
        search_path: ``PATH``-style folders to look for ``PythonSlicer`` in (default: ``PATH``, then
            the folder of ``sys.executable``, which in Slicer is Slicer's ``bin`` folder).

    Returns:
        ``configured`` when given; else ``PythonSlicer`` when found; else ``sys.executable``.

    Raises:
        ValueError: ``configured`` is given but is not a file.
    """
    if configured and configured.strip():
        path = Path(configured.strip()).expanduser()
        if not path.is_file():
            raise ValueError(f"{path}: Python executable not found")
        return str(path)
    if search_path is None:
        search_path = os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)])
    found = shutil.which("PythonSlicer", path=search_path)
    return found or sys.executable


# --------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------


@dataclass
class RunProgress:
    """The state of a run, folded from its progress events (:mod:`medseg.protocol`).

    Counts finished cases itself instead of trusting ``index``.

    Attributes:
        total: number of cases (from the last event that carried it).
        finished: cases with a :class:`~medseg.protocol.CaseFinished` event.
        current_case: the case being processed, if any.
        outputs: case id -> written label map, for cases that finished ``ok``.
        failures: ``(case id, reason)`` for cases that failed.
        skipped: ``(case id, reason)`` for cases medseg skipped.
        done: whether :class:`~medseg.protocol.RunFinished` arrived.
    """

    total: int | None = None
    finished: int = 0
    current_case: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False

    def update(self, event: ProgressEvent) -> None:
        """Fold one event into the state."""
        if isinstance(event, (RunStarted, CaseStarted, CaseFinished)):
            self.total = event.total
        if isinstance(event, CaseStarted):
            self.current_case = event.case
        elif isinstance(event, CaseFinished):
            self.finished += 1
            if event.status == "ok" and event.output:
                self.outputs[event.case] = event.output
            elif event.status == "failed":
                self.failures.append((event.case, event.reason or "unknown reason"))
            elif event.status == "skipped":
                self.skipped.append((event.case, event.reason or "skipped"))
            self.current_case = None
        elif isinstance(event, RunFinished):
            self.done = True
            self.current_case = None

    @property
    def fraction(self) -> float:
        """Overall progress, 0-1 (1 once the run finished)."""
        if self.done:
            return 1.0
        if not self.total:
            return 0.0
        return min(1.0, self.finished / self.total)

    def message(self) -> str:
        """A one-line status for the module's status label."""
        if self.done:
            return f"done: {len(self.outputs)} ok, {len(self.failures)} failed, {len(self.skipped)} skipped"
        if self.current_case is not None:
            position = f" {self.finished + 1}/{self.total}" if self.total else ""
            return f"segmenting case{position} ({self.current_case})..."
        if self.total is None:
            return "starting medseg..."
        return f"{self.finished}/{self.total} cases finished"


# --------------------------------------------------------------------------------------------------
# Inputs and the files exchanged with the child
# --------------------------------------------------------------------------------------------------


def validate_inputs(channel_names: Sequence[str], selected_volume_ids: Sequence[str | None]) -> list[str]:
    """Problems with the user's choice of input volumes, as messages (empty when it is fine).

    Args:
        channel_names: the checkpoint's channels, in order.
        selected_volume_ids: the MRML node id chosen for each channel, ``None`` or ``""`` if none.
    """
    problems = []
    if not channel_names:
        problems.append("no model loaded: choose a medseg checkpoint first")
        return problems
    if len(selected_volume_ids) != len(channel_names):
        problems.append(
            f"the model needs {len(channel_names)} input volumes ({', '.join(channel_names)}), "
            f"got {len(selected_volume_ids)}"
        )
    first_channel_of: dict[str, str] = {}
    for channel, volume_id in zip(channel_names, selected_volume_ids, strict=False):
        if not volume_id:
            problems.append(f"no volume selected for channel {channel}")
        elif volume_id in first_channel_of:
            problems.append(f"the same volume is selected for channels {first_channel_of[volume_id]} and {channel}")
        else:
            first_channel_of[volume_id] = channel
    return problems


# Channel name -> spellings seen in volume names (BraTS 2021 and 2023 suffixes, common synonyms).
_CHANNEL_ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n", "t1w", "t1native"),
    "t1ce": ("t1ce", "t1c", "t1gd", "t1post", "t1contrast"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "t2flair"),
}


def match_channel_volumes(channel_names: Sequence[str], volume_names: Sequence[str]) -> list[int | None]:
    """A first guess of which volume is which channel, from the volumes' names.

    A volume matches a channel when one of the words of its name (split at anything but letters and
    digits, e.g. ``BraTS2021_00001_t1ce``) is the channel's name or a known alias of it (``t1c``,
    ``t2f``, ...). Each volume is used at most once; a channel with no match, or with more than one,
    gets ``None``.

    Returns:
        For each channel, the index into ``volume_names`` or ``None``.
    """
    words = [set(re.split(r"[^a-z0-9]+", name.lower())) - {""} for name in volume_names]
    used: set[int] = set()
    guesses: list[int | None] = []
    for channel in channel_names:
        key = re.sub(r"[^a-z0-9]", "", channel.lower())
        aliases = set(_CHANNEL_ALIASES.get(key, ())) | {key}
        hits = [i for i, w in enumerate(words) if i not in used and w & aliases]
        guesses.append(hits[0] if len(hits) == 1 else None)
        if len(hits) == 1:
            used.add(hits[0])
    return guesses


@dataclass(frozen=True)
class VolumeGrid:
    """The voxel grid of a volume: dimensions, spacing (mm), origin (mm) and direction matrix (rows)."""

    dimensions: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    directions: tuple[tuple[float, float, float], ...]


def check_same_grid(
    grids: Sequence[VolumeGrid], names: Sequence[str], *, tolerance_mm: float = 1e-4, tolerance_dir: float = 1e-4
) -> list[str]:
    """Messages for volumes whose grid differs from the first one's (the model needs one grid).

    The tolerances are those of ``medseg.io.grid_difference`` (``GRID_TOLERANCE``), so the panel refuses
    exactly what ``medseg predict`` would (this module runs in Slicer without medseg's readers).

    Args:
        grids: one grid per input volume.
        names: the channel (or volume) name of each, for the messages.
        tolerance_mm: largest difference in spacing or origin treated as equal.
        tolerance_dir: largest difference in a direction cosine treated as equal.
    """
    if len(grids) != len(names):
        raise ValueError(f"got {len(grids)} grids but {len(names)} names")
    problems: list[str] = []
    if not grids:
        return problems
    ref, ref_name = grids[0], names[0]
    for grid, name in zip(grids[1:], names[1:], strict=True):
        if grid.dimensions != ref.dimensions:
            problems.append(f"{name} has {grid.dimensions} voxels but {ref_name} has {ref.dimensions}")
        elif _differs(grid.spacing, ref.spacing, tolerance_mm):
            problems.append(f"{name} has spacing {grid.spacing} mm but {ref_name} has {ref.spacing} mm")
        elif _differs(grid.origin, ref.origin, tolerance_mm):
            problems.append(f"{name} has origin {grid.origin} mm but {ref_name} has {ref.origin} mm")
        elif _differs(_flat(grid.directions), _flat(ref.directions), tolerance_dir):
            problems.append(f"{name} is oriented differently from {ref_name}")
    if problems:
        problems.append("resample the volumes onto one grid first (e.g. with Resample Scalar/Vector/DWI Volume)")
    return problems


def _flat(rows: Sequence[Sequence[float]]) -> list[float]:
    return [x for row in rows for x in row]


def _differs(a: Sequence[float], b: Sequence[float], tolerance: float) -> bool:
    return len(a) != len(b) or any(abs(x - y) > tolerance for x, y in zip(a, b, strict=True))


def export_file_names(case_id: str, n_channels: int) -> list[str]:
    """The nnU-Net-style channel file names medseg reads: ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ...

    Raises:
        ValueError: the case id is empty or not a plain file-name stem, or ``n_channels < 1``.
    """
    if not _CASE_ID_RE.match(case_id):
        raise ValueError(f"invalid case id {case_id!r}: use letters, digits, '.', '_' and '-'")
    if n_channels < 1:
        raise ValueError(f"need at least one channel, got {n_channels}")
    return [f"{case_id}_{i:04d}{NIFTI_SUFFIX}" for i in range(n_channels)]


def output_file_name(case_id: str) -> str:
    """The file name medseg writes a case's segmentation to (in :data:`OUTPUT_FORMAT`)."""
    return f"{case_id}{OUTPUT_SUFFIXES[OUTPUT_FORMAT]}"


def find_output_segmentation(output_dir: str | Path, case_id: str, *, reported: str | None = None) -> Path:
    """The segmentation file medseg wrote for ``case_id``.

    Args:
        output_dir: the ``--output`` folder.
        case_id: the case.
        reported: the ``output`` of the case's :class:`~medseg.protocol.CaseFinished` event, if there was one;
            preferred when it exists.

    Raises:
        FileNotFoundError: neither the reported path nor ``<output_dir>/<case_id>.seg.nrrd`` exists.
    """
    if reported:
        path = Path(reported)
        if not path.is_absolute():
            path = Path(output_dir) / path
        if path.is_file():
            return path
    expected = Path(output_dir) / output_file_name(case_id)
    if expected.is_file():
        return expected
    raise FileNotFoundError(f"{expected}: medseg finished but wrote no segmentation")


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------

_ERROR_RE = re.compile(r"^medseg(?: [\w-]+)*: error: (?P<message>.+)$")
_MISSING_MODULE_RE = re.compile(r"No module named '?(?P<name>[\w.]+)'?")


def error_message_from_stderr(stderr: str, *, exit_code: int | None = None) -> str:
    """The one-line reason medseg gave for failing, suitable for a message box.

    Prefers medseg's own ``medseg: error: <file>: <reason>`` line (and argparse's
    ``medseg predict: error: ...``); for a Python that lacks medseg, says so; otherwise the last line
    of a traceback; otherwise the last non-empty line; otherwise the exit code.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _ERROR_RE.match(line)
        if match:
            return match["message"]
    for line in reversed(lines):
        if line == "medseg: interrupted":
            return "medseg was interrupted"
        missing = _MISSING_MODULE_RE.search(line)
        if missing and missing["name"].split(".")[0] == "medseg":
            return "medseg is not installed in the chosen Python (see the module's README)"
    if lines:
        return lines[-1]
    if exit_code is not None:
        return f"medseg exited with code {exit_code} without a message"
    return "medseg failed without a message"


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def new_process_group_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``subprocess.Popen`` that start the child in a process group of its own,
    so that :func:`kill_process_tree` can stop it together with everything it starts."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
    return {"start_new_session": True}


def kill_process_tree(pid: int, *, force: bool = False) -> bool:
    """Stop a child started with :func:`new_process_group_kwargs` and all its descendants.

    On POSIX this signals the child's process group (``SIGTERM``, or ``SIGKILL`` with ``force``);
    on Windows it runs ``taskkill /T`` (``/F`` with ``force``).

    Returns:
        ``True`` if a signal was delivered, ``False`` if the process (group) was already gone.
    """
    if os.name == "nt":
        args = ["taskkill", "/PID", str(pid), "/T"] + (["/F"] if force else [])
        result = subprocess.run(args, capture_output=True, check=False)
        return result.returncode == 0
    sig = signal.SIGKILL if force else signal.SIGTERM
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        pass
    # No process group with that id: the child was not started in a session of its own, or it is
    # gone. Signal the process alone in case it still exists.
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def format_command(args: Iterable[str]) -> str:
    """A command line for the log, quoted for the user's shell, e.g. to rerun it by hand."""
    if os.name == "nt":
        return subprocess.list2cmdline(list(args))
    return shlex.join(list(args))
