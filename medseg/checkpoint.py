"""Self-describing checkpoints, saved atomically and loaded with ``torch.load(weights_only=True)``.

A checkpoint is a dict with ``format == "medseg-checkpoint"`` holding everything needed to rebuild
and run the model without its config file: the network name and arguments, the input channel
names in order, the label table, the preprocessing and inference settings, the full config and the
medseg version. Training checkpoints also hold the optimizer, scheduler, RNG states, epoch and best
score so that ``--resume`` continues exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from medseg import __version__
from medseg.errors import CheckpointError, ConfigError, first_line
from medseg.io.atomic import atomic_output
from medseg.labels import LabelTable
from medseg.networks import build_network

_Section = TypeVar("_Section")

FORMAT = "medseg-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        network: ``{"name": str, "kwargs": dict}`` for :func:`medseg.networks.build_network`.
        channels: input channel names, in order (e.g. ``["T1", "T1ce", "T2", "FLAIR"]``).
        label_table: the label/region table of the outputs.
        config: the full training config as a dict (see :class:`medseg.config.Config`).
        state_dict: model weights.
        training: optimizer/scheduler/RNG/epoch/best state, or ``None`` in an export-only checkpoint.
        medseg_version: the version that wrote it.
        manifest: the manifest of the dataset it was trained on, as JSON (its cases and their folds:
            which cases it validated on), or ``None`` (written before medseg kept it, or built in memory).
        calibration: what ``medseg calibrate`` fitted (:func:`medseg.inference.calibration.calibrate`):
            ``{"temperature": float, ...}`` with the cases and settings it was fitted on and its scores
            before and after, or ``None`` (never calibrated, or written before medseg calibrated).
        training_fingerprint: what training measured of its cases for the quality flags
            (:meth:`medseg.inference.quality.TrainingFingerprint.to_dict`), or ``None`` (written before
            medseg kept it, or built in memory).
        source: the file it was loaded from (``None`` when built in memory); not saved.
    """

    network: dict[str, Any]
    channels: list[str]
    label_table: LabelTable
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    training: dict[str, Any] | None = None
    medseg_version: str = __version__
    manifest: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    training_fingerprint: dict[str, Any] | None = None
    source: Path | None = None

    @functools.cached_property
    def weights_sha256(self) -> str:
        """SHA-256 (hex) of every weight tensor (name, shape and bytes), computed once: equal for equal
        weights, whatever file holds them."""
        digest = hashlib.sha256()
        for name, tensor in self.state_dict.items():
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def fingerprint(self, extra: dict[str, Any]) -> str:
        """SHA-256 (hex) of the weights together with the JSON of ``extra``: what else decides the
        outputs of a use of them (an export's description, a batch run's settings)."""
        text = json.dumps(extra, sort_keys=True, default=str) + self.weights_sha256
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def temperature(self) -> float | None:
        """The fitted temperature of :attr:`calibration` (logits are divided by it), or ``None``."""
        return None if self.calibration is None else float(self.calibration["temperature"])

    @property
    def layout(self) -> str:
        """The dataset layout the model was trained on (``brats``, ``msd``, ``nnunet``)."""
        return str(self.config["data"]["layout"])

    def build_model(self) -> nn.Module:
        """The network with the checkpoint's weights, in eval mode, on the CPU."""
        try:
            model = build_network(
                self.network["name"],
                in_channels=len(self.channels),
                out_channels=self.label_table.num_outputs,
                kwargs=self.network["kwargs"],
            )
        except ConfigError as exc:
            raise CheckpointError(f"its stored network cannot be built: {exc.reason}", path=self.source) from None
        load_weights(model, self.state_dict, path=self.source)
        return model.eval()

    def section(self, name: str, cls: type[_Section]) -> _Section:
        """The stored config's section ``name`` (``"transforms"``, ``"inference"``) as ``cls``; keys it
        lacks take their defaults (a checkpoint of an older medseg).

        Raises:
            CheckpointError: naming the checkpoint and the key, for a missing section, an unknown key
                (a checkpoint of another medseg version) or a value ``cls`` refuses.
        """
        raw = self.config.get(name)
        if not isinstance(raw, dict):
            raise CheckpointError(f"its stored config has no {name!r} section", path=self.source)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in raw if k not in known)
        if unknown:
            raise CheckpointError(
                f"its stored config has an unknown key '{name}.{unknown[0]}' (written by another medseg version?)",
                path=self.source,
            )
        try:
            return cls(**raw)
        except ConfigError as exc:
            raise CheckpointError(f"its stored config: {exc.reason}", path=self.source) from None

    def to_dict(self) -> dict[str, Any]:
        """The on-disk representation."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "medseg_version": self.medseg_version,
            "network": self.network,
            "channels": list(self.channels),
            "labels": self.label_table.to_dict(),
            "preprocessing": self.config["transforms"],
            "inference": self.config["inference"],
            "config": self.config,
            "state_dict": self.state_dict,
            "training": self.training,
            "manifest": self.manifest,
            "calibration": self.calibration,
            "training_fingerprint": self.training_fingerprint,
        }


def weights_mismatch(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> str | None:
    """What of ``state_dict`` does not fit ``model`` (missing or unexpected keys, else the first shape
    mismatch), in one line; ``None`` when it fits."""
    ours = model.state_dict()
    missing = [k for k in ours if k not in state_dict]
    unexpected = [k for k in state_dict if k not in ours]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]!r})")
    if parts:
        return "; ".join(parts)
    for key, tensor in ours.items():
        theirs = state_dict[key]
        if not isinstance(theirs, torch.Tensor):
            return f"{key!r} is a {type(theirs).__name__}, not a tensor"
        if theirs.shape != tensor.shape:
            return f"{key!r} has shape {list(theirs.shape)} but the network's is {list(tensor.shape)}"
    return None


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], *, path: str | Path | None) -> None:
    """``model.load_state_dict(state_dict)``, or a :class:`CheckpointError` naming ``path`` (the
    checkpoint) and what does not fit (:func:`weights_mismatch`)."""
    mismatch = weights_mismatch(model, state_dict)
    if mismatch is None:
        try:
            model.load_state_dict(state_dict)
            return
        except RuntimeError as exc:
            mismatch = first_line(exc)
    raise CheckpointError(f"its weights do not fit the network: {mismatch}", path=path)


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (a reader never sees a half-written file)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(checkpoint.to_dict(), tmp)
    return path


def load_checkpoint(path: str | Path, *, training: bool = True) -> Checkpoint:
    """Load a medseg checkpoint onto the CPU with ``weights_only=True`` (no arbitrary code runs).

    The file is memory-mapped, so tensors are read from disk only when used: with ``training=False``
    (inference) the optimizer state, twice the weights' size under Adam, is never read into memory.

    Raises:
        CheckpointError: the file is missing, unreadable, not a medseg checkpoint, or from a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint file not found", path=path)
    if not zipfile.is_zipfile(path):  # e.g. an image passed as --model
        raise CheckpointError("not a medseg checkpoint (not the zip archive that medseg train writes)", path=path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as exc:
        reason = first_line(exc) or type(exc).__name__
        raise CheckpointError(f"not a medseg checkpoint (cannot be loaded safely: {reason})", path=path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"not a medseg checkpoint (no format tag {FORMAT!r})", path=path)
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format {data['format_version']} is newer than this medseg supports ({FORMAT_VERSION})",
            path=path,
        )
    missing = [key for key in ("network", "channels", "labels", "config", "state_dict") if key not in data]
    if missing:
        raise CheckpointError(f"checkpoint lacks its {missing[0]!r} field", path=path)
    for key, field in (("network", "name"), ("network", "kwargs"), ("config", "transforms"), ("config", "inference")):
        if not isinstance(data[key], dict) or field not in data[key]:
            raise CheckpointError(f"checkpoint lacks its '{key}.{field}' field", path=path)
    return Checkpoint(
        network=data["network"],
        channels=list(data["channels"]),
        label_table=LabelTable.from_dict(data["labels"]),
        config=data["config"],
        state_dict=data["state_dict"],
        training=data.get("training") if training else None,
        medseg_version=data.get("medseg_version", "unknown"),
        manifest=data.get("manifest"),
        calibration=_calibration(data.get("calibration"), path),
        training_fingerprint=data.get("training_fingerprint"),
        source=path,
    )


def _calibration(raw: Any, path: Path) -> dict[str, Any] | None:
    """A loaded checkpoint's ``calibration`` field (absent in one written before medseg calibrated), checked.

    Raises:
        CheckpointError: it is not a mapping with a finite, positive ``temperature``.
    """
    if raw is None:
        return None
    temperature = raw.get("temperature") if isinstance(raw, dict) else None
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise CheckpointError(f"its calibration holds no positive temperature: {raw!r}", path=path)
    return raw
