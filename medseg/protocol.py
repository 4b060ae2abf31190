"""The records the ``medseg`` command prints and its clients (the 3D Slicer module) read, defined once.

- **Progress events.** ``medseg predict --progress json`` prints one JSON object per line on stdout:
  :class:`RunStarted`, then per case :class:`CaseStarted` and :class:`CaseFinished` (a skipped case has only the
  latter), then :class:`RunFinished`. :meth:`ProgressEvent.to_line` writes a line and :func:`parse_event_line`
  reads one back; lines that are not events (a library's warning) read as ``None``.
- **Model description.** ``medseg info --json`` prints one :class:`ModelDescription`: channels, label table and
  its segments (display names, colours, codes), network, layout, test-time mirroring, inference settings and
  the training data.
- **Command lines.** :class:`PredictParameters` and :class:`InfoParameters` build the argument lists that run
  ``medseg predict`` and ``medseg info`` as a child process.

Records may gain fields; none is renamed or removed, so a client reads the output of a newer medseg (unknown
fields and events are ignored). This module imports only the standard library and the label table (no torch),
so a client can use it with ``pip install --no-deps medseg``.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from medseg.errors import ProtocolError
from medseg.labels import LabelTable

OUTPUT_SUFFIXES: dict[str, str] = {"nifti": ".nii.gz", "seg.nrrd": ".seg.nrrd", "dicom-seg": ".dcm"}
"""The file ending of ``<output>/<case>`` for each label-map format of ``medseg predict --format``."""

PROBABILITIES_SUFFIX = "_probabilities.nii.gz"
"""The file ending of ``<output>/<case>`` for the probabilities of ``medseg predict --save-probabilities``."""

UNCERTAINTY_SUFFIX = "_uncertainty.nii.gz"
"""The file ending of ``<output>/<case>`` for the uncertainty maps of ``medseg predict --save-uncertainty``."""

LABEL_FORMATS = tuple(OUTPUT_SUFFIXES)
"""The label-map formats of ``medseg predict --format``."""

PROBABILITIES_SUFFIX = "_probabilities.nii.gz"
"""The file ending of ``<output>/<case>`` for the probabilities of ``medseg predict --save-probabilities``."""

LABELS_JSON = "labels.json"
"""The label table (:meth:`~medseg.labels.LabelTable.to_dict`) of the model that wrote the label maps of a
``medseg predict`` output folder; ``medseg evaluate --labels auto`` reads it."""

BACKENDS = ("auto", "torch", "openvino")
"""The inference backends of ``medseg predict --backend``."""

CASE_STATUSES = ("ok", "skipped", "failed")
"""What can become of a case in a batch run."""

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _value(data: Mapping[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
    """``data[key]`` once it is a ``kind`` (an int is a float too; a bool is no number), or ``None`` when
    ``optional`` and absent or null.

    Raises:
        ProtocolError: the value is missing or of another type.
    """
    value = data.get(key)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(f"{key!r} must be {kind.__name__}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# Progress events
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressEvent(abc.ABC):
    """One line of ``medseg predict --progress json``: a JSON object whose ``"event"`` names the record."""

    event: ClassVar[str] = ""

    def to_line(self) -> str:
        """The event as one line of JSON (no newline)."""
        return json.dumps({"event": self.event, **dataclasses.asdict(self)})

    @classmethod
    @abc.abstractmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProgressEvent:
        """The event of a parsed line (its ``"event"`` key aside); unknown keys are ignored.

        Raises:
            ProtocolError: a field is missing or of the wrong type.
        """


@dataclass(frozen=True)
class RunStarted(ProgressEvent):
    """A run began: ``total`` cases to go through (of ``shard``, ``"I/N"``, when the run is one shard)."""

    event: ClassVar[str] = "start"
    total: int
    shard: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunStarted:
        """See :meth:`ProgressEvent.from_dict`."""
        return cls(total=_value(data, "total", int), shard=_value(data, "shard", str, optional=True))


@dataclass(frozen=True)
class CaseStarted(ProgressEvent):
    """Case ``case``, number ``index`` (0-based) of ``total``, is being read and predicted."""

    event: ClassVar[str] = "case_start"
    case: str
    index: int
    total: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseStarted:
        """See :meth:`ProgressEvent.from_dict`."""
        return cls(case=_value(data, "case", str), index=_value(data, "index", int), total=_value(data, "total", int))


@dataclass(frozen=True)
class CaseFinished(ProgressEvent):
    """Case ``case`` (``index`` of ``total``) is done.

    Attributes:
        status: ``ok``, ``skipped`` (its outputs exist) or ``failed``.
        seconds: wall time spent on it (reading, predicting, writing).
        output: the label map written or found, if any.
        reason: why it failed or was skipped.
        volumes_ml: volume in mL of each foreground label, by label name (empty when unknown).
        series_uid: the SeriesInstanceUID of a DICOM series case (None for other cases).
        series_description: its SeriesDescription ("" when the series has none; None for other cases).
        uncertainty: the case's uncertainty scores in nats (``medseg predict --save-uncertainty``; see
            :func:`medseg.inference.uncertainty.case_scores`), by name; empty when not computed or
            nothing was predicted.
        flags: the case's quality flags (:data:`medseg.inference.quality.FLAGS`), empty when none.
    """

    event: ClassVar[str] = "case_done"
    case: str
    index: int
    total: int
    status: str
    seconds: float = 0.0
    output: str | None = None
    reason: str | None = None
    volumes_ml: dict[str, float] = field(default_factory=dict)
    series_uid: str | None = None
    series_description: str | None = None
    uncertainty: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in CASE_STATUSES:
            raise ProtocolError(f"case status must be one of {', '.join(CASE_STATUSES)}, got {self.status!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseFinished:
        """See :meth:`ProgressEvent.from_dict`."""
        volumes = _value(data, "volumes_ml", dict, optional=True) or {}
        scores = _value(data, "uncertainty", dict, optional=True) or {}
        return cls(
            case=_value(data, "case", str),
            index=_value(data, "index", int),
            total=_value(data, "total", int),
            status=_value(data, "status", str),
            seconds=_value(data, "seconds", float),
            output=_value(data, "output", str, optional=True),
            reason=_value(data, "reason", str, optional=True),
            volumes_ml={str(name): _value(volumes, name, float) for name in volumes},
            series_uid=_value(data, "series_uid", str, optional=True),
            series_description=_value(data, "series_description", str, optional=True),
            uncertainty={str(name): _value(scores, name, float) for name in scores},
            flags=[str(flag) for flag in _value(data, "flags", list, optional=True) or []],
        )


@dataclass(frozen=True)
class RunFinished(ProgressEvent):
    """The run is over: how many cases were segmented, failed and skipped."""

    event: ClassVar[str] = "done"
    ok: int
    failed: int
    skipped: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunFinished:
        """See :meth:`ProgressEvent.from_dict`."""
        return cls(ok=_value(data, "ok", int), failed=_value(data, "failed", int), skipped=_value(data, "skipped", int))


EVENTS: dict[str, type[ProgressEvent]] = {
    cls.event: cls for cls in (RunStarted, CaseStarted, CaseFinished, RunFinished)
}
"""Each event's record, by the name in its ``"event"`` key."""


def parse_event_line(line: str) -> ProgressEvent | None:
    """Read one stdout line of ``medseg predict --progress json``.

    Returns:
        The event, or ``None`` for a line that is not one: no JSON object (log text, a library's warning, a
        blank line) or an event this medseg does not know (a newer one's).

    Raises:
        ProtocolError: a known event with a missing or mistyped field.
    """
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    name = data.get("event") if isinstance(data, dict) else None
    record = EVENTS.get(name) if isinstance(name, str) else None
    return None if record is None else record.from_dict(data)


# --------------------------------------------------------------------------------------------------
# Model description
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """What a checkpoint was trained on: fold ``fold`` of ``num_folds`` of its manifest, with
    ``training_cases`` cases, validated on ``validation_cases`` (case ids)."""

    fold: int
    num_folds: int
    training_cases: int
    validation_cases: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON representation."""
        return dataclasses.asdict(self) | {"validation_cases": list(self.validation_cases)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingData:
        """Inverse of :meth:`to_dict`.

        Raises:
            ProtocolError: a field is missing or of the wrong type.
        """
        cases = _value(data, "validation_cases", list)
        if not all(isinstance(case, str) for case in cases):
            raise ProtocolError(f"'validation_cases' must be case ids, got {cases!r}")
        return cls(
            fold=_value(data, "fold", int),
            num_folds=_value(data, "num_folds", int),
            training_cases=_value(data, "training_cases", int),
            validation_cases=tuple(cases),
        )


@dataclass(frozen=True)
class ModelDescription:
    """What ``medseg info --json`` says about a checkpoint.

    Attributes:
        channels: input channel names, in the order the network takes them.
        labels: the label table; its :meth:`~medseg.labels.LabelTable.segments` (display names, colours and
            codes) are printed beside it.
        network: ``{"name": ..., "kwargs": {...}}``.
        layout: the dataset layout the model was trained on (``brats``, ``msd``, ...).
        mirroring: whether the model takes test-time mirroring (False: trained without flips).
        inference: the checkpoint's inference settings (``medseg predict --set inference.KEY=VALUE``).
        medseg_version: the medseg version that wrote the checkpoint.
        training_data: its folds and validation cases, when the checkpoint keeps its manifest.
        preprocessing: what the network sees: the checkpoint's ``transforms`` settings that apply at
            inference (orientation, spacing in mm, interpolation, intensity normalisation, HU window and
            offset, percentile clipping, foreground crop and its threshold); empty from an older medseg.
        training_fingerprint: what training measured of its cases for the quality flags
            (:class:`medseg.inference.quality.TrainingFingerprint` as a dict), when the checkpoint keeps it.
    """

    channels: tuple[str, ...]
    labels: LabelTable
    network: Mapping[str, Any]
    layout: str
    mirroring: bool
    inference: Mapping[str, Any]
    medseg_version: str
    training_data: TrainingData | None = None
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    training_fingerprint: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.channels:
            raise ProtocolError("the model description lists no input channels")
        for channel in self.channels:
            if not isinstance(channel, str) or not channel.strip() or channel != channel.strip():
                raise ProtocolError(f"invalid channel name {channel!r} in the model description")
        repeated = sorted({c for c in self.channels if self.channels.count(c) > 1})
        if repeated:
            raise ProtocolError(f"the model description repeats channel name(s): {', '.join(repeated)}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``medseg info --json`` prints (``segments`` follows from ``labels``)."""
        data: dict[str, Any] = {
            "channels": list(self.channels),
            "labels": self.labels.to_dict(),
            "segments": [segment.to_dict() for segment in self.labels.segments()],
            "network": dict(self.network),
            "layout": self.layout,
            "mirroring": self.mirroring,
            "inference": dict(self.inference),
            "preprocessing": dict(self.preprocessing),
            "medseg_version": self.medseg_version,
        }
        if self.training_data is not None:
            data["training_data"] = self.training_data.to_dict()
        if self.training_fingerprint is not None:
            data["training_fingerprint"] = dict(self.training_fingerprint)
        return data

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of JSON."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelDescription:
        """Inverse of :meth:`to_dict`. A description without ``mirroring``, ``inference`` or ``preprocessing``
        (an older medseg's) allows mirroring (``medseg predict`` then decides) and lists no settings.

        Raises:
            ProtocolError: a field is missing or of the wrong type, or the label table is malformed.
        """
        channels = _value(data, "channels", list)
        try:
            labels = LabelTable.from_dict(_value(data, "labels", dict))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"the model description's label table is malformed ({exc!r})") from None
        mirroring = _value(data, "mirroring", bool, optional=True)
        training = _value(data, "training_data", dict, optional=True)
        return cls(
            channels=tuple(channels),
            labels=labels,
            network=_value(data, "network", dict),
            layout=_value(data, "layout", str),
            mirroring=True if mirroring is None else mirroring,
            inference=_value(data, "inference", dict, optional=True) or {},
            medseg_version=_value(data, "medseg_version", str),
            training_data=None if training is None else TrainingData.from_dict(training),
            preprocessing=_value(data, "preprocessing", dict, optional=True) or {},
            training_fingerprint=_value(data, "training_fingerprint", dict, optional=True),
        )

    @classmethod
    def from_json(cls, text: str) -> ModelDescription:
        """Read the stdout of ``medseg info --json``: the JSON object alone, or as the last line that holds
        one among other lines (a library's warning printed to stdout).

        Raises:
            ProtocolError: there is no JSON object, or it is no model description.
        """
        try:
            data = json.loads(text)
        except ValueError:
            data = None
            for line in reversed(text.splitlines()):
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if isinstance(data, dict):
                    break
        if not isinstance(data, dict):
            raise ProtocolError("medseg info printed no JSON object")
        return cls.from_dict(data)


# --------------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PredictParameters:
    """One ``medseg predict`` run with JSON progress; :meth:`command` builds its argument list.

    Attributes:
        python_executable: the Python that has medseg (and torch) installed.
        model: the medseg checkpoint (``.pt``).
        input_dir: an image, a DICOM series or a folder of cases (``<case>_0000.nii.gz``, ... in the
            checkpoint's channel order).
        output_dir: where medseg writes ``<case>`` + ``OUTPUT_SUFFIXES[output_format]``.
        output_format: one of :data:`LABEL_FORMATS`.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        backend: one of :data:`BACKENDS`; ``auto`` adds no argument.
        mirror: test-time mirroring along all three axes (``--mirror``: 8 passes, more accurate).
        min_piece_ml: remove predicted connected pieces smaller than this many mL from every name in
            ``piece_names`` (``--set inference.min_component_ml=...``); 0 adds no argument, so the
            checkpoint's own setting applies.
        piece_names: the model's regions or labels (``LabelTable.output_sets``); needed when
            ``min_piece_ml`` > 0.
        extra_args: further arguments appended verbatim (e.g. ``("--overwrite",)``).
    """

    python_executable: str
    model: str | Path
    input_dir: str | Path
    output_dir: str | Path
    output_format: str = "nifti"
    device: str = "auto"
    backend: str = "auto"
    mirror: bool = False
    min_piece_ml: float = 0.0
    piece_names: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not str(self.python_executable).strip():
            raise ProtocolError("no Python executable given")
        if self.output_format not in LABEL_FORMATS:
            raise ProtocolError(f"unknown output format {self.output_format!r}; use {', '.join(LABEL_FORMATS)}")
        if not _DEVICE.match(self.device):
            raise ProtocolError(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N")
        if self.backend not in BACKENDS:
            raise ProtocolError(f"unknown backend {self.backend!r}; use {', '.join(BACKENDS)}")
        if not (math.isfinite(self.min_piece_ml) and self.min_piece_ml >= 0):
            raise ProtocolError(f"the smallest kept piece must be a volume in mL >= 0, got {self.min_piece_ml}")
        if self.min_piece_ml > 0 and not self.piece_names:
            raise ProtocolError("removing small pieces needs the model's region or label names")
        object.__setattr__(self, "extra_args", tuple(str(a) for a in self.extra_args))
        object.__setattr__(self, "piece_names", tuple(str(n) for n in self.piece_names))

    def command(self) -> list[str]:
        """The argument list, program first, ready for ``subprocess.Popen``."""
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
            "--format",
            self.output_format,
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


@dataclass(frozen=True, kw_only=True)
class InfoParameters:
    """One ``medseg info --json`` run, which prints a checkpoint's :class:`ModelDescription` (reading a
    checkpoint needs torch, which a client may not have)."""

    python_executable: str
    model: str | Path

    def command(self) -> list[str]:
        """The argument list, program first."""
        return [str(self.python_executable), "-m", "medseg", "info", "--model", str(self.model), "--json"]
