"""The Slicer-free half of the 3D Slicer module (``tools/slicer/MedSeg``).

The module runs inference out of process: it exports the chosen volumes as nnU-Net-style channel
files, runs ``python -m medseg predict ... --progress json`` as a child process, streams its JSON
progress lines, and imports the label map it writes as a segmentation. Everything here that does not
need Slicer lives in this module, so it can be tested with plain pytest:

- :class:`PredictParameters` and :class:`InfoParameters` build the exact argument lists;
- :func:`parse_progress_line` and :class:`RunProgress` read the progress stream;
- :func:`parse_model_info` and :func:`channel_slots` read ``medseg info --json``;
- :func:`segments_from_label_table` turns a label table into named, coloured segments with
  standard terminology codes (SNOMED CT, NCIt) where they are known;
- :func:`validate_inputs`, :func:`check_same_grid`, :func:`export_file_names` and
  :func:`find_output_label_map` check and name the files exchanged with the child;
- :func:`error_message_from_stderr` extracts medseg's own one-line error;
- :func:`new_process_group_kwargs` and :func:`kill_process_tree` make Cancel stop the child and
  everything it started.

This module imports only the standard library (no torch, numpy, Qt or Slicer). It is loaded by the
Slicer module either as ``medseg.integrations.slicer`` or, when medseg is not installed in Slicer's
Python, straight from a source checkout.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEVICES = ("auto", "cpu", "cuda")
"""Device choices offered in the module (``cuda:N`` is accepted too)."""

BACKENDS = ("auto", "torch", "openvino")
"""Inference backends offered in the module."""

CASE_ID = "case"
"""The case id the module gives the single case it exports."""

NIFTI_SUFFIX = ".nii.gz"

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictParameters:
    """Everything one ``medseg predict`` run needs; :meth:`command` builds its argument list.

    Attributes:
        python_executable: the Python that has medseg (and torch) installed; Slicer's own
            ``PythonSlicer`` or an external interpreter.
        model: the medseg checkpoint (``.pt``).
        input_dir: folder with one case as ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ... in the
            checkpoint's channel order.
        output_dir: where medseg writes ``<case>.nii.gz``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        backend: ``auto`` (medseg's default), ``torch`` or ``openvino``. ``auto`` adds no argument,
            so the command also works with a medseg that has no ``--backend`` option.
        mirror: test-time mirroring along all three axes (``--mirror``: 8 passes, more accurate);
            off adds no argument.
        min_piece_ml: remove predicted connected pieces smaller than this many mL from every region
            or label in ``piece_names`` (``--set inference.min_component_ml=...``); 0 adds no
            argument, so the checkpoint's own setting applies.
        piece_names: the model's regions or labels (:meth:`ModelInfo.piece_names`); needed when
            ``min_piece_ml`` > 0.
        extra_args: further arguments appended verbatim (e.g. ``("--overwrite",)``).
    """

    python_executable: str
    model: str | Path
    input_dir: str | Path
    output_dir: str | Path
    device: str = "auto"
    backend: str = "auto"
    mirror: bool = False
    min_piece_ml: float = 0.0
    piece_names: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not str(self.python_executable).strip():
            raise ValueError("no Python executable given")
        if not _DEVICE_RE.match(self.device):
            raise ValueError(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use {', '.join(BACKENDS)}")
        if not (math.isfinite(self.min_piece_ml) and self.min_piece_ml >= 0):
            raise ValueError(f"the smallest kept piece must be a volume in mL >= 0, got {self.min_piece_ml}")
        if self.min_piece_ml > 0 and not self.piece_names:
            raise ValueError("removing small pieces needs the model's region or label names")
        object.__setattr__(self, "extra_args", tuple(str(a) for a in self.extra_args))
        object.__setattr__(self, "piece_names", tuple(str(n) for n in self.piece_names))

    def command(self) -> list[str]:
        """The argument list, program first, ready for ``subprocess.Popen`` or ``QProcess``."""
        args = [
            str(self.python_executable),
            "-m",
            "medseg",
            "predict",
            "--model",
            str(self.model),
            "--input",
            str(self.input_dir),
            "--output",
            str(self.output_dir),
            "--progress",
            "json",
            "--device",
            self.device,
        ]
        if self.backend != "auto":
            args += ["--backend", self.backend]
        if self.mirror:
            args.append("--mirror")
        if self.min_piece_ml > 0:
            volumes = json.dumps({name: self.min_piece_ml for name in self.piece_names})  # JSON is YAML
            args += ["--set", f"inference.min_component_ml={volumes}"]
        return args + list(self.extra_args)


@dataclass(frozen=True)
class InfoParameters:
    """One ``medseg info --json`` run, which reads a checkpoint's metadata (the checkpoint needs torch,
    so the Slicer side asks a child process instead of reading it itself)."""

    python_executable: str
    model: str | Path

    def command(self) -> list[str]:
        """The argument list, program first."""
        return [str(self.python_executable), "-m", "medseg", "info", "--model", str(self.model), "--json"]


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
# Progress stream
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressEvent:
    """One line of ``medseg predict --progress json`` output.

    Attributes:
        event: ``start``, ``case_start``, ``progress``, ``case_done``, ``done``, or any other name a
            newer medseg emits (kept, so that callers can ignore what they do not know).
        case: the case id, for per-case events.
        index: the case's index as medseg reports it.
        total: number of cases in the run.
        fraction: progress within the current case, 0-1 (``progress`` events).
        status: ``ok``, ``failed`` or ``skipped`` (``case_done``).
        seconds: wall time of the case (``case_done``).
        output: path of the written label map (``case_done`` with status ``ok``).
        reason: why a case failed or was skipped.
        ok, failed, skipped: run totals (``done``).
        data: the whole JSON object.
    """

    event: str
    case: str | None = None
    index: int | None = None
    total: int | None = None
    fraction: float | None = None
    status: str | None = None
    seconds: float | None = None
    output: str | None = None
    reason: str | None = None
    ok: int | None = None
    failed: int | None = None
    skipped: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_progress_line(line: str) -> ProgressEvent | None:
    """Parse one stdout line of ``medseg predict --progress json``.

    Returns ``None`` for anything that is not a JSON object with a string ``"event"`` (log lines,
    warnings from libraries, blank lines), so the caller can show those as plain log text. Fields of
    the wrong type are dropped rather than raising; ``fraction`` is clamped to 0-1.
    """
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        return None
    fraction = _as_float(data.get("fraction"))
    if fraction is not None:
        fraction = min(1.0, max(0.0, fraction))
    return ProgressEvent(
        event=data["event"],
        case=_as_str(data.get("case")),
        index=_as_int(data.get("index")),
        total=_as_int(data.get("total")),
        fraction=fraction,
        status=_as_str(data.get("status")),
        seconds=_as_float(data.get("seconds")),
        output=_as_str(data.get("output")),
        reason=_as_str(data.get("reason")),
        ok=_as_int(data.get("ok")),
        failed=_as_int(data.get("failed")),
        skipped=_as_int(data.get("skipped")),
        data=data,
    )


@dataclass
class RunProgress:
    """The state of a run, folded from its progress events.

    Counts finished cases itself instead of trusting ``index`` (so it does not care whether medseg
    counts from 0 or 1), and tolerates missing ``progress`` events and unknown event names.

    Attributes:
        total: number of cases (from ``start``, or the last event that carried ``total``).
        finished: cases with a ``case_done`` event.
        current_case: the case being processed, if any.
        case_fraction: progress within ``current_case`` (0 when medseg sends no ``progress``).
        outputs: case id -> written label map, for cases that finished ``ok``.
        failures: ``(case id, reason)`` for cases that failed.
        skipped: ``(case id, reason)`` for cases medseg skipped.
        done: whether the ``done`` event arrived.
    """

    total: int | None = None
    finished: int = 0
    current_case: str | None = None
    case_fraction: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False

    def update(self, event: ProgressEvent) -> None:
        """Fold one event into the state (unknown events are ignored)."""
        if event.total is not None and event.total > 0:
            self.total = event.total
        if event.event == "case_start":
            self.current_case = event.case
            self.case_fraction = 0.0
        elif event.event == "progress" and event.fraction is not None:
            if event.case is not None:
                self.current_case = event.case
            self.case_fraction = event.fraction
        elif event.event == "case_done":
            self.finished += 1
            case = event.case or f"#{self.finished}"
            if event.status == "ok" and event.output:
                self.outputs[case] = event.output
            elif event.status == "failed":
                self.failures.append((case, event.reason or "unknown reason"))
            elif event.status == "skipped":
                self.skipped.append((case, event.reason or "skipped"))
            self.current_case = None
            self.case_fraction = 0.0
        elif event.event == "done":
            self.done = True
            self.current_case = None

    @property
    def fraction(self) -> float:
        """Overall progress, 0-1 (1 once ``done`` arrived)."""
        if self.done:
            return 1.0
        if not self.total:
            return 0.0
        return min(1.0, (self.finished + self.case_fraction) / self.total)

    def message(self) -> str:
        """A one-line status for the module's status label."""
        if self.done:
            return f"done: {len(self.outputs)} ok, {len(self.failures)} failed, {len(self.skipped)} skipped"
        if self.current_case is not None:
            position = f" {self.finished + 1}/{self.total}" if self.total else ""
            return f"segmenting case{position} ({self.current_case}): {round(100 * self.case_fraction)}%"
        if self.total is None:
            return "starting medseg..."
        return f"{self.finished}/{self.total} cases finished"


# --------------------------------------------------------------------------------------------------
# Model metadata
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What ``medseg info --json`` says about a checkpoint.

    Attributes:
        channels: input channel names, in order.
        labels: the label table as ``LabelTable.to_dict()``.
        network: ``{"name": ..., "kwargs": ...}``.
        layout: the dataset layout the model was trained on.
        medseg_version: the medseg version that wrote the checkpoint.
        mirroring: False when the model refuses test-time mirroring (trained without flips); True when
            medseg allows it or does not say (an older medseg, which then decides when it runs).
    """

    channels: tuple[str, ...]
    labels: Mapping[str, Any]
    network: Mapping[str, Any] = field(default_factory=dict)
    layout: str | None = None
    medseg_version: str | None = None
    mirroring: bool = True

    def piece_names(self) -> tuple[str, ...]:
        """The names ``inference.min_component_ml`` takes: the regions of a region table (BraTS: WT,
        TC, ET), else the names of the foreground labels (organs)."""
        if self.labels.get("kind") == "regions":
            return tuple(str(r["name"]) for r in self.labels.get("regions", []))
        named = sorted((int(value), str(name)) for value, name in self.labels.get("labels", {}).items())
        return tuple(name for value, name in named if value != 0)


def parse_model_info(stdout: str) -> ModelInfo:
    """Parse the stdout of ``medseg info --model CKPT --json``.

    Accepts the JSON object on one line or pretty-printed, and ignores lines around it that are not
    JSON (e.g. a library's warning printed to stdout).

    Raises:
        ValueError: there is no JSON object, or it has no usable ``channels`` or ``labels``.
    """
    data: Any = None
    try:
        data = json.loads(stdout)
    except ValueError:
        for line in reversed(stdout.splitlines()):
            text = line.strip()
            if text.startswith("{"):
                try:
                    data = json.loads(text)
                    break
                except ValueError:
                    continue
    if not isinstance(data, dict):
        raise ValueError("medseg info printed no JSON object")
    labels = data.get("labels")
    if not isinstance(labels, dict) or not isinstance(labels.get("labels"), dict):
        raise ValueError("model metadata has no label table")
    return ModelInfo(
        channels=tuple(channel_slots(data)),
        labels=labels,
        network=data.get("network") if isinstance(data.get("network"), dict) else {},
        layout=_as_str(data.get("layout")),
        medseg_version=_as_str(data.get("medseg_version")),
        mirroring=data.get("mirroring") is not False,
    )


def channel_slots(info: Mapping[str, Any]) -> list[str]:
    """The labels of the input volume selectors: the checkpoint's channel names, in order.

    Args:
        info: the object printed by ``medseg info --json`` (only ``"channels"`` is read).

    Raises:
        ValueError: ``channels`` is missing, empty, not a list of non-empty strings, or repeats a name.
    """
    channels = info.get("channels")
    if not isinstance(channels, (list, tuple)) or not channels:
        raise ValueError("model metadata lists no input channels")
    names = []
    for channel in channels:
        if not isinstance(channel, str) or not channel.strip():
            raise ValueError(f"invalid channel name {channel!r} in model metadata")
        names.append(channel.strip())
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"model metadata repeats channel name(s): {', '.join(repeated)}")
    return names


# --------------------------------------------------------------------------------------------------
# Segments and terminology
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Code:
    """One coded concept, as in DICOM: coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def to_slicer(self) -> str:
        """The ``scheme^value^meaning`` form Slicer's terminology strings use."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("SCT", "49755003", "Morphologically Altered Structure")
RIGHT = Code("SCT", "24028007", "Right")
LEFT = Code("SCT", "7771000", "Left")

# Codes checked against the DICOM context groups (PS3.16): CID 7154 abdominal segmentation types,
# CID 6204 anatomic non-colon findings, CID 7159 lesion segmentation types and CID 7168/7169 brain
# lesion segmentation types (enhancing lesion is an NCIt code there).
_FINDINGS: dict[str, Code] = {
    "necrosis": Code("SCT", "6574001", "Necrosis"),
    "edema": Code("SCT", "79654002", "Edema"),
    "enhancing": Code("NCIt", "C113842", "Enhancing Lesion"),
    "neoplasm": Code("SCT", "108369006", "Neoplasm"),
}
_ORGANS: dict[str, Code] = {
    "liver": Code("SCT", "10200004", "Liver"),
    "spleen": Code("SCT", "78961009", "Spleen"),
    "kidney": Code("SCT", "64033007", "Kidney"),
    "aorta": Code("SCT", "15825003", "Aorta"),
    "pancreas": Code("SCT", "15776009", "Pancreas"),
}
# Normalised label name -> (finding or organ key). Names are lower-cased with separators removed.
_SYNONYMS: dict[str, str] = {
    "ncr": "necrosis",
    "necrosis": "necrosis",
    "necrotic": "necrosis",
    "necroticcore": "necrosis",
    "necrotictumorcore": "necrosis",
    "ncrnet": "necrosis",
    "ed": "edema",
    "edema": "edema",
    "oedema": "edema",
    "peritumoraledema": "edema",
    "et": "enhancing",
    "enhancing": "enhancing",
    "enhancingtumor": "enhancing",
    "enhancingtumour": "enhancing",
    "enhancinglesion": "enhancing",
    "tumor": "neoplasm",
    "tumour": "neoplasm",
    "neoplasm": "neoplasm",
    "lesion": "neoplasm",
    "liver": "liver",
    "spleen": "spleen",
    "kidney": "kidney",
    "kidneys": "kidney",
    "aorta": "aorta",
    "pancreas": "pancreas",
}

# Colours for labels the table gives none for (0-255, distinguishable, no dark greys).
_FALLBACK_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)


@dataclass(frozen=True)
class SegmentSpec:
    """One segment the module creates for one label value.

    Attributes:
        label: the value in medseg's label map.
        name: the segment name (the label table's name).
        color: RGB, each 0-1.
        category: terminology category (anatomical or morphologically altered structure), if known.
        type: terminology type (e.g. SCT 10200004 Liver), if known.
        type_modifier: e.g. left/right, if the name says so.
    """

    label: int
    name: str
    color: tuple[float, float, float]
    category: Code | None = None
    type: Code | None = None
    type_modifier: Code | None = None

    def terminology_entry(self) -> str | None:
        """The segment's ``TerminologyEntry`` tag in Slicer's serialised form, or ``None`` if unknown.

        The form is ``context~category~type~typeModifier~anatomicContext~region~regionModifier``.
        """
        if self.category is None or self.type is None:
            return None
        modifier = self.type_modifier.to_slicer() if self.type_modifier else "^^"
        return (
            "Segmentation category and type - DICOM master list"
            f"~{self.category.to_slicer()}~{self.type.to_slicer()}~{modifier}"
            "~Anatomic codes - DICOM master list~^^~^^"
        )


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def terminology_for_name(name: str) -> tuple[Code | None, Code | None, Code | None]:
    """``(category, type, type_modifier)`` for a label name, or ``(None, None, None)`` if unknown.

    Recognises BraTS names (NCR, ED, ET and spelled-out forms), generic tumour names and the
    abdominal organs liver, spleen, kidney (with left/right), aorta and pancreas.
    """
    key = _normalise(name)
    modifier = None
    for side, code in (("left", LEFT), ("right", RIGHT)):
        if key.startswith(side) and key[len(side) :] in _SYNONYMS:
            key, modifier = key[len(side) :], code
        elif key.endswith(side) and key[: -len(side)] in _SYNONYMS:
            key, modifier = key[: -len(side)], code
    concept = _SYNONYMS.get(key)
    if concept in _ORGANS:
        return ANATOMICAL_STRUCTURE, _ORGANS[concept], modifier
    if concept in _FINDINGS:
        return MORPHOLOGICALLY_ALTERED_STRUCTURE, _FINDINGS[concept], None
    return None, None, None


def segments_from_label_table(labels_dict: Mapping[str, Any]) -> list[SegmentSpec]:
    """One :class:`SegmentSpec` per foreground label of a label table, ascending by label value.

    Args:
        labels_dict: ``LabelTable.to_dict()`` (as ``medseg info --json`` prints it under
            ``"labels"``): ``{"labels": {"1": "NCR", ...}, "colors": {"1": [255, 64, 64], ...}, ...}``.
            Keys may be strings or ints; background (0) is skipped.

    Returns:
        Segments named as in the table, coloured from its ``colors`` (0-255 converted to 0-1) or from
        a fixed palette where it has none, with terminology codes where the name is recognised.

    Raises:
        ValueError: the table has no ``labels`` mapping or a label value is not an integer 1-255.
    """
    labels = labels_dict.get("labels")
    if not isinstance(labels, Mapping):
        raise ValueError("label table has no 'labels' mapping")
    colors = labels_dict.get("colors") or {}
    specs = []
    values = []
    for key, name in labels.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"label value {key!r} is not an integer") from None
        if not 0 <= value <= 255:
            raise ValueError(f"label value {value} does not fit the uint8 label map")
        if value != 0:
            values.append((value, str(name)))
    for position, (value, name) in enumerate(sorted(values)):
        rgb = colors.get(str(value), colors.get(value)) if isinstance(colors, Mapping) else None
        if not (isinstance(rgb, (list, tuple)) and len(rgb) >= 3):
            rgb = _FALLBACK_COLORS[position % len(_FALLBACK_COLORS)]
        color = tuple(min(1.0, max(0.0, float(c) / 255.0)) for c in rgb[:3])
        category, type_, modifier = terminology_for_name(name)
        specs.append(SegmentSpec(value, name, color, category, type_, modifier))  # type: ignore[arg-type]
    return specs


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
        key = _normalise(channel)
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
    grids: Sequence[VolumeGrid], names: Sequence[str], *, tolerance_mm: float = 1e-3, tolerance_dir: float = 1e-4
) -> list[str]:
    """Messages for volumes whose grid differs from the first one's (the model needs one grid).

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
    """The file name medseg writes a case's label map to."""
    return f"{case_id}{NIFTI_SUFFIX}"


def find_output_label_map(output_dir: str | Path, case_id: str, *, reported: str | None = None) -> Path:
    """The label map medseg wrote for ``case_id``.

    Args:
        output_dir: the ``--output`` folder.
        case_id: the case.
        reported: the ``output`` path of the case's ``case_done`` event, if there was one; preferred
            when it exists.

    Raises:
        FileNotFoundError: neither the reported path nor ``<output_dir>/<case_id>.nii.gz`` exists.
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
    raise FileNotFoundError(f"{expected}: medseg finished but wrote no label map")


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
