"""Inference: a :class:`Predictor` loads a model once and segments many cases (batch runs over folders
of cases live in :mod:`medseg.inference.batch`).

Geometry is preserved exactly: the image is reoriented (and, if configured, resampled and cropped)
with invertible MONAI transforms, and the probabilities are mapped back through their inverses, so
the label map is written on the input's own grid (same shape and affine).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from medseg.checkpoint import Checkpoint, load_checkpoint
from medseg.config import InferenceConfig, TransformConfig, check_mirroring, override_inference
from medseg.data.cases import InputCase
from medseg.distributed import resolve_device
from medseg.errors import CheckpointError, ConfigError, MedsegInputError
from medseg.inference.backends import Backend, create_backend, default_cache_dir
from medseg.inference.backends.torch_backend import TorchBackend, dropout_layers
from medseg.inference.restore import axis_maps, labels_on_input_grid
from medseg.inference.tiling import TilePlan, smallest_window, tiled_inference
from medseg.inference.uncertainty import UNCERTAINTY_MAPS, pass_statistics
from medseg.io import Image, read_dicom_series, read_image, require_finite, stack_channels
from medseg.keys import IMAGE
from medseg.labels import LabelTable
from medseg.networks.registry import check_patch_size, default_window_voxels, size_divisor
from medseg.postprocessing import (
    check_min_component_ml,
    check_min_region_ml,
    keep_largest_components,
    outputs_to_labels,
    remove_small_components,
    suppress_small_regions,
)
from medseg.transforms import inference_transforms


@dataclass(frozen=True)
class Windows:
    """How inference runs a network over a preprocessed volume: ``inference.tiling`` (``tight``, see
    :mod:`medseg.inference.tiling`, or MONAI's ``sliding_window_inference``) for a network whose input sizes
    are multiples of ``divisor`` and whose windows hold at most ``max_voxels`` voxels (``None``: no
    bound). The Predictor and training's validation share it, so ``best.pt`` is chosen under the
    inference it will be deployed with."""

    inference: InferenceConfig
    divisor: int
    max_voxels: int | None

    @classmethod
    def for_network(cls, inference: InferenceConfig, network: str, kwargs: dict[str, Any]) -> Windows:
        """Check ``inference``'s window sizes against network ``network`` (with ``kwargs``): ``roi_size``
        and ``max_window`` are sizes it takes, ``max_window`` is at least ``roi_size`` per axis, and
        ``max_window_voxels`` (default: the network's, see :func:`~medseg.networks.registry.default_window_voxels`)
        holds the smallest window a budget may use.

        Raises:
            ConfigError: naming the setting and the valid values.
        """
        check_patch_size(network, inference.roi_size, kwargs)
        largest, roi = inference.max_window, inference.roi_size
        if largest is not None:
            check_patch_size(network, largest, kwargs)
            if len(largest) != len(roi) or any(m < r for m, r in zip(largest, roi, strict=True)):
                raise ConfigError(f"inference.max_window {largest} must give one size >= roi_size {roi} per axis")
        divisor = size_divisor(network, kwargs)
        budget, smallest = inference.max_window_voxels, smallest_window(roi, divisor)
        if budget is not None and budget < math.prod(smallest):
            raise ConfigError(
                f"inference.max_window_voxels {budget} is below the smallest window it may use, {smallest}"
            )
        return cls(inference, divisor, budget or default_window_voxels(network, kwargs))

    def plan(self, shape: tuple[int, int, int]) -> TilePlan:
        """The ``tight`` window layout for a (cropped, preprocessed) volume of ``shape`` voxels."""
        inf = self.inference
        overlaps = [min(inf.min_overlap, r // 2) for r in inf.roi_size]  # a small window keeps half of it
        largest = inf.max_window or [max(r, 5 * r // 4 // self.divisor * self.divisor) for r in inf.roi_size]
        return TilePlan.tight(
            shape,
            inf.roi_size,
            min_overlap=overlaps,
            multiple=self.divisor,
            max_window=largest,
            max_voxels=self.max_voxels,
        )

    def __call__(self, x: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``(B, C_in, X, Y, Z)`` preprocessed -> logits ``(B, C_out, X, Y, Z)`` of ``network``'s windows,
        averaged over ``x`` and its mirror images along every combination of ``inference.mirror_axes``
        (each pass's logits mirrored back): the mean of :meth:`passes`."""
        passes = self.passes(x, network)
        total = next(passes)
        for logits in passes:
            total = total + logits
        return total / 2 ** len(self.inference.mirror_axes)

    def passes(self, x: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[torch.Tensor]:
        """Each pass's logits ``(B, C_out, X, Y, Z)`` of ``network``'s windows over ``(B, C_in, X, Y, Z)``
        ``x``: ``x`` itself, then its mirror images along every combination of ``inference.mirror_axes``,
        each mirrored back."""
        axes = self.inference.mirror_axes
        yield self.single_pass(x, network)
        for flipped in (c for k in range(1, len(axes) + 1) for c in itertools.combinations(axes, k)):
            dims = [2 + axis for axis in flipped]
            yield self.single_pass(x.flip(dims), network).flip(dims)

    def single_pass(self, x: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """One pass of ``network``'s windows over ``x``: ``(B, C_in, X, Y, Z)`` -> ``(B, C_out, X, Y, Z)``."""
        inf = self.inference
        if inf.tiling == "monai":
            return sliding_window_inference(
                x, inf.roi_size, inf.sw_batch_size, network, overlap=inf.overlap, mode=inf.mode
            )
        plan = self.plan(tuple(int(s) for s in x.shape[2:]))  # type: ignore[arg-type]
        return tiled_inference(x, network, plan, batch_size=inf.sw_batch_size, mode=inf.mode)


@dataclass(frozen=True)
class Prediction:
    """What :meth:`Predictor.predict_with_uncertainty` gives, on the input image's grid.

    Attributes:
        probabilities: ``(C_out, X, Y, Z)`` float32 (see :meth:`Predictor.predict_probabilities`).
        uncertainty: ``(2, X, Y, Z)`` float32 :data:`~medseg.inference.uncertainty.UNCERTAINTY_MAPS` in nats,
            or ``None`` when not asked for.
    """

    probabilities: np.ndarray
    uncertainty: np.ndarray | None = None


def _temperature(checkpoint: Checkpoint, inference: InferenceConfig) -> float:
    """What ``checkpoint``'s logits are divided by: its fitted temperature under
    ``inference.temperature_scaling``, else 1.

    Raises:
        CheckpointError: temperature scaling asked of a checkpoint that was never calibrated.
    """
    if not inference.temperature_scaling:
        return 1.0
    if checkpoint.temperature is None:
        raise CheckpointError(
            "has no fitted temperature for inference.temperature_scaling: run medseg calibrate on it first",
            path=checkpoint.source,
        )
    return checkpoint.temperature


def _class_weights(table: LabelTable, weights: Sequence[float] | None) -> torch.Tensor | None:
    """``inference.class_weights`` as a ``(C_out,)`` tensor, or ``None`` without them.

    Raises:
        ConfigError: weights for a region table, or not one per output.
    """
    if weights is None:
        return None
    if table.kind == "regions":
        raise ConfigError(f"inference.class_weights is for class label tables; {table.name} has regions")
    if len(weights) != table.num_outputs:
        raise ConfigError(
            f"inference.class_weights: {len(weights)} weight(s) for the {table.num_outputs} outputs of"
            f" {table.name} ({', '.join(table.output_names)})"
        )
    return torch.tensor(weights, dtype=torch.float32)


def _dropout_backend(backend: str, inference: InferenceConfig) -> str:
    """The backend to build: ``torch`` for ``auto`` under ``inference.dropout_samples`` (OpenVINO runs the
    network exported in eval mode, without dropout), else ``backend``.

    Raises:
        ConfigError: ``openvino`` asked for together with ``inference.dropout_samples``.
    """
    if not inference.dropout_samples:
        return backend
    if backend == "openvino":
        raise ConfigError(
            "inference.dropout_samples needs the torch backend: OpenVINO runs the network exported without"
            " dropout (use --backend torch or auto)"
        )
    return "torch"


def read_case(case: InputCase) -> Image:
    """Read a case's images (any format of :func:`~medseg.io.read_image`) into one ``(C, X, Y, Z)`` float32
    :class:`Image` on the first file's grid (:func:`~medseg.io.stack_channels`); a 4-D file contributes all
    its channels.

    ``meta["channel_files"]`` names each channel's file, for the Predictor's errors.

    Raises:
        MedsegInputError: a file is missing or unreadable, or not on the first file's grid.
    """
    if case.series_uid is not None:
        images = [read_dicom_series(case.images[0], series_uid=case.series_uid or None, recursive=False)]
    else:
        images = [read_image(p) for p in case.images]
    return stack_channels(images)


# the transforms settings that decide what a network sees at inference (the others shape training:
# patches, augmentation); ensemble members must agree on these
INFERENCE_PREPROCESSING = (
    "orientation",
    "spacing",
    "interpolation",
    "intensity",
    "intensity_offset",
    "clip_percentiles",
    "hu_window",
    "crop_foreground",
    "foreground_threshold",
)


def check_ensemble(checkpoints: Sequence[Checkpoint]) -> None:
    """Check that ``checkpoints`` can be ensembled: the same input channels, label table and inference
    preprocessing (:data:`INFERENCE_PREPROCESSING`) as the first, so that their logits are averaged
    in one space. Networks may differ (the folds of one configuration, or several configurations,
    e.g. a ResU-Net and a DynUNet trained on the same data); no two may have the same weights (a
    copy, or one path given twice, would only cost time).

    Raises:
        CheckpointError: naming the first checkpoint that differs and in what, or that repeats another.
    """
    if not checkpoints:
        raise CheckpointError("no checkpoint given")
    first = checkpoints[0]
    name = first.source.name if first.source is not None else "the first model"
    if len(checkpoints) > 1:
        seen: dict[str, Checkpoint] = {}
        for member in checkpoints:
            earlier = seen.setdefault(member.weights_sha256, member)
            if earlier is not member:
                raise CheckpointError(
                    f"has the same weights as {earlier.source or 'an earlier member'}: an ensemble member given twice",
                    path=member.source,
                )
    preprocessing = first.section("transforms", TransformConfig)
    for other in checkpoints[1:]:
        theirs = other.section("transforms", TransformConfig)
        pairs = [
            ("input channels", first.channels, other.channels),
            ("labels", first.label_table.to_dict(), other.label_table.to_dict()),
            *(
                (f"transforms.{key}", getattr(preprocessing, key), getattr(theirs, key))
                for key in INFERENCE_PREPROCESSING
            ),
        ]
        differences = [what for what, a, b in pairs if a != b]
        if differences:
            raise CheckpointError(
                f"cannot be ensembled with {name}: its {', '.join(differences)} differ"
                " (an ensemble averages logits computed on the same preprocessed image)",
                path=other.source,
            )


class Predictor:
    """A model, or an ensemble of models, ready to segment images, loaded once.

    Per image: reorient (and resample, if configured), crop to the foreground box, normalise, run the
    windows (:mod:`medseg.inference.tiling`) on a backend (:mod:`medseg.inference.backends`), then
    invert the crop and the reorientation so that the output lies on the input's grid, background outside the crop.
    An ensemble (several checkpoints: the folds of one configuration, or models of several
    configurations that preprocess alike, see :func:`check_ensemble`) runs each member's windows over
    the case in turn and averages their logits, as nnU-Net ensembles folds; the first checkpoint's
    inference settings apply, each member's network sizes its own windows. Members run one after
    another, so an OpenVINO ensemble holds one compiled model at a time (compiling one costs well
    under a second).

    Args:
        checkpoint: a loaded medseg checkpoint, or several (see :func:`check_ensemble`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        backend: ``auto`` (``torch`` on CUDA, ``openvino`` on the CPU when installed, else ``torch``;
            always ``torch`` under ``inference.dropout_samples``), ``torch`` (eager PyTorch; AMP on CUDA) or
            ``openvino`` (CPU).
        inference: settings that replace the checkpoint's ``inference`` section.
        inference_overrides: ``inference.key=value`` changes to those settings (``medseg predict --set``
            and ``--mirror``), e.g. ``inference.min_component_ml={WT: 0.1}`` or
            ``inference.mirror_axes=[0, 1, 2]`` (test-time mirroring); see
            :func:`~medseg.config.override_inference`.
        cache_dir: where the OpenVINO backend caches its ONNX export (default: next to the
            checkpoint when :meth:`from_checkpoint` loaded it and that folder is writable, else
            ``~/.cache/medseg``).

    Attributes:
        checkpoint: the (first) checkpoint, whose settings apply.
        checkpoints: every member, in order.
        windows: one :class:`Windows` per member, in the same order.
        backends: one backend per member, in the same order.
        temperatures: what each member's logits are divided by (1 without ``inference.temperature_scaling``).

    Raises:
        MedsegError: an unknown backend, or ``openvino`` when OpenVINO is not installed.
        CheckpointError: checkpoints that cannot be ensembled, or ``inference.temperature_scaling`` for a
            member that was never calibrated (``medseg calibrate``).
        ConfigError: ``inference.mirror_axes`` for a model trained without flips, a bad override, or
            ``inference.dropout_samples`` for a network without dropout or on the ``openvino`` backend.
    """

    def __init__(
        self,
        checkpoint: Checkpoint | Sequence[Checkpoint],
        *,
        device: str = "auto",
        backend: str = "auto",
        inference: InferenceConfig | None = None,
        inference_overrides: Sequence[str] = (),
        cache_dir: str | Path | None = None,
    ) -> None:
        self.checkpoints = [checkpoint] if isinstance(checkpoint, Checkpoint) else list(checkpoint)
        check_ensemble(self.checkpoints)
        self.checkpoint = checkpoint = self.checkpoints[0]
        self.table = checkpoint.label_table
        self.channels = list(checkpoint.channels)
        self.device = resolve_device(device)
        self.inference = override_inference(
            inference or checkpoint.section("inference", InferenceConfig), inference_overrides
        )
        self.windows = [  # each member's network decides its window sizes
            Windows.for_network(self.inference, member.network["name"], member.network["kwargs"])
            for member in self.checkpoints
        ]
        check_min_region_ml(self.table, self.inference.min_region_ml)  # fail before a batch reads any case
        check_min_component_ml(self.table, self.inference.min_component_ml)
        self.class_weights = _class_weights(self.table, self.inference.class_weights)
        for member in self.checkpoints:
            check_mirroring(self.inference, member.section("transforms", TransformConfig))
        self.temperatures = [_temperature(member, self.inference) for member in self.checkpoints]
        backend = _dropout_backend(backend, self.inference)
        transforms = checkpoint.section("transforms", TransformConfig)
        if self.inference.crop_foreground:
            transforms = dataclasses.replace(transforms, crop_foreground=True)
        self.transforms = inference_transforms(transforms)
        self.backends: list[Backend] = [
            create_backend(
                backend,
                member,
                device=self.device,
                cache_dir=Path(cache_dir) if cache_dir is not None else None,
                precision=self.inference.precision,
            )
            for member in self.checkpoints
        ]
        if self.inference.dropout_samples:
            for member, member_backend in zip(self.checkpoints, self.backends, strict=True):
                if not isinstance(member_backend, TorchBackend) or not dropout_layers(member_backend.model):
                    raise ConfigError(
                        f"inference.dropout_samples needs a network with dropout, and the {member.network['name']}"
                        f" of {member.source} has none: train one with a dropout rate > 0 in network.kwargs"
                    )

    @property
    def passes_per_case(self) -> int:
        """How many passes a prediction averages: per member, the image and its mirror images
        (``inference.mirror_axes``) and ``inference.dropout_samples`` Monte Carlo dropout passes."""
        return len(self.checkpoints) * (2 ** len(self.inference.mirror_axes) + self.inference.dropout_samples)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | Sequence[str | Path],
        *,
        device: str = "auto",
        backend: str = "auto",
        inference: InferenceConfig | None = None,
        inference_overrides: Sequence[str] = (),
        cache_dir: str | Path | None = None,
    ) -> Predictor:
        """Load ``path`` (a ``.pt`` written by ``medseg train``, or several for an ensemble); see the class
        for the arguments. The default ``cache_dir`` is the first checkpoint's."""
        paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
        if cache_dir is None:
            cache_dir = default_cache_dir(paths[0] if paths else None)
        return cls(
            [load_checkpoint(p, training=False) for p in paths],
            device=device,
            backend=backend,
            inference=inference,
            inference_overrides=inference_overrides,
            cache_dir=cache_dir,
        )

    def _passes(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """``(1, C_in, X, Y, Z)`` preprocessed -> each member's each pass's logits ``(1, C_out, X, Y, Z)``
        (:meth:`Windows.passes`, then its Monte Carlo dropout passes), divided by the member's temperature where
        ``inference.temperature_scaling``."""
        for windows, backend, temperature in zip(self.windows, self.backends, self.temperatures, strict=True):
            for logits in itertools.chain(windows.passes(x, backend), self._dropout_passes(x, windows, backend)):
                yield logits if temperature == 1.0 else logits / temperature

    def _dropout_passes(self, x: torch.Tensor, windows: Windows, backend: Backend) -> Iterator[torch.Tensor]:
        """The ``inference.dropout_samples`` Monte Carlo dropout passes of one member over ``x``
        (``(1, C_in, X, Y, Z)``): logits ``(1, C_out, X, Y, Z)``, pass ``k`` with the masks of seed
        ``inference.dropout_seed + k``."""
        for k in range(self.inference.dropout_samples):
            assert isinstance(backend, TorchBackend)  # checked when the Predictor was built
            with backend.dropout_active(self.inference.dropout_seed + k):
                logits = windows.single_pass(x, backend)
            yield logits

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(1, C_in, X, Y, Z)`` preprocessed -> logits ``(1, C_out, X, Y, Z)``, the mean of :meth:`_passes`."""
        if min(x.shape[2:]) == 0:  # nothing above the foreground threshold
            return torch.zeros((1, self.table.num_outputs, *x.shape[2:]))
        passes = self._passes(x)
        total = next(passes)
        count = 1
        for logits in passes:
            total, count = total + logits, count + 1
        return total / count

    def _logits_and_uncertainty(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, C_in, X, Y, Z)`` preprocessed -> :meth:`_logits` and the ``(1, 2, X, Y, Z)`` uncertainty
        maps of :meth:`_passes` (:func:`~medseg.inference.uncertainty.pass_statistics`)."""
        if min(x.shape[2:]) == 0:
            return self._logits(x), torch.zeros((1, len(UNCERTAINTY_MAPS), *x.shape[2:]))
        return pass_statistics(self._passes(x), regions=self.table.kind == "regions")

    @torch.no_grad()
    def predict_probabilities(self, image: Image) -> np.ndarray:
        """Per-output probabilities ``(C_out, X, Y, Z)`` float32 on ``image``'s own grid.

        ``image.array`` is ``(C_in, X, Y, Z)`` in file voxel order with ``image.geometry.affine``.
        Region models give sigmoid probabilities (0 outside the foreground crop), class models
        softmax (background 1 outside the crop; at its edge, where resampling back to the input's
        grid mixes in the outside, that share goes to background, so every voxel sums to 1).
        A cubic-spline resampling's overshoot is clipped to [0, 1] (and renormalised for classes).

        Raises:
            MedsegInputError: ``image`` has another number of channels than the model, or NaN or
                infinite voxels (naming the channel and, for an image from :func:`read_case`, its file).
        """
        return self._predict(image, uncertainty=False).probabilities

    @torch.no_grad()
    def predict_with_uncertainty(self, image: Image) -> Prediction:
        """:meth:`predict_probabilities` and the uncertainty maps of its passes
        (:mod:`medseg.inference.uncertainty`), both on ``image``'s own grid; the maps are 0 outside the
        foreground crop, where the prediction is background for certain.

        Raises:
            MedsegInputError: as :meth:`predict_probabilities`.
        """
        return self._predict(image, uncertainty=True)

    @torch.no_grad()
    def predict_logits_with_uncertainty(self, image: Image) -> tuple[np.ndarray, np.ndarray, Prediction]:
        """:meth:`predict_logits` and :meth:`predict_with_uncertainty` (the same arrays) from one run of the
        passes: ``(logits, inside, prediction)``.

        Raises:
            MedsegInputError: as :meth:`predict_probabilities`.
        """
        x, logits, maps = self._network_outputs(image, uncertainty=True)
        return (*self._restore_logits(logits, x, image), self._restore_prediction(logits, maps, x, image))

    def _predict(self, image: Image, *, uncertainty: bool) -> Prediction:
        """:meth:`predict_probabilities`, with the uncertainty maps when ``uncertainty``."""
        x, logits, maps = self._network_outputs(image, uncertainty=uncertainty)
        return self._restore_prediction(logits, maps, x, image)

    def _restore_prediction(
        self, logits: torch.Tensor, maps: torch.Tensor | None, x: MetaTensor, image: Image
    ) -> Prediction:
        """The :class:`Prediction` of mean logits ``(C_out, X', Y', Z')`` and uncertainty maps ``(2, X', Y', Z')``
        (or ``None``) on preprocessed ``x``'s grid, on ``image``'s."""
        probs = self._probabilities(logits)
        channels = probs if maps is None else torch.cat([probs, maps])  # one inverse for both
        out = self._restore(channels, x, image)
        out, restored_maps = out[: len(probs)], out[len(probs) :]
        complete_probabilities(torch.from_numpy(out), regions=self.table.kind == "regions")
        return Prediction(out, np.clip(restored_maps, 0.0, None) if maps is not None else None)

    def _network_outputs(
        self, image: Image, *, uncertainty: bool
    ) -> tuple[MetaTensor, torch.Tensor, torch.Tensor | None]:
        """``image`` preprocessed (``(C_in, X', Y', Z')``, to invert), the mean logits ``(C_out, X', Y', Z')``
        float32 on that grid and, when ``uncertainty``, the ``(2, X', Y', Z')`` uncertainty maps (both from
        one run of the passes: :func:`~medseg.inference.uncertainty.pass_statistics` averages the logits as
        :meth:`_logits` does)."""
        x = self._preprocess(image)
        batch = x.unsqueeze(0).as_tensor().to(self.backends[0].device)
        logits, maps = self._logits_and_uncertainty(batch) if uncertainty else (self._logits(batch), None)
        return x, logits[0].float().cpu(), None if maps is None else maps[0].float().cpu()

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities of logits ``(C_out, ...)``: one sigmoid per region, or the softmax over classes."""
        return torch.sigmoid(logits) if self.table.kind == "regions" else torch.softmax(logits, 0)

    @torch.no_grad()
    def predict_logits(self, image: Image) -> tuple[np.ndarray, np.ndarray]:
        """The mean logits ``(C_out, X, Y, Z)`` float32 on ``image``'s own grid (divided by the temperatures
        where ``inference.temperature_scaling``), and ``(X, Y, Z)`` bool: the voxels the foreground crop
        covered wholly, where the logits are the network's (outside, they are 0 and mean nothing).

        Raises:
            MedsegInputError: as :meth:`predict_probabilities`.
        """
        x, logits, _ = self._network_outputs(image, uncertainty=False)
        return self._restore_logits(logits, x, image)

    def _restore_logits(self, logits: torch.Tensor, x: MetaTensor, image: Image) -> tuple[np.ndarray, np.ndarray]:
        """Mean logits ``(C_out, X', Y', Z')`` on preprocessed ``x``'s grid -> :meth:`predict_logits`'s pair on
        ``image``'s."""
        out = self._restore(torch.cat([logits, torch.ones_like(logits[:1])]), x, image)
        return out[:-1], out[-1] > 0.999  # the crop's inverse pads with 0; resampling blurs its edge

    def _preprocess(self, image: Image) -> MetaTensor:
        """``image`` checked and preprocessed: ``(C_in, X', Y', Z')`` with the transforms applied, to invert."""
        if image.array.shape[0] != len(self.channels):
            raise MedsegInputError(
                f"the model needs {len(self.channels)} channels ({', '.join(self.channels)}), "
                f"got {image.array.shape[0]}",
                path=image.path,
            )
        files = image.meta.get("channel_files", [image.path] * len(self.channels))
        for name, path, channel in zip(self.channels, files, image.array, strict=True):
            require_finite(channel, path=path, channel=name)
        # a copy: the transforms normalise in place, and the caller keeps its image
        data = self.transforms({IMAGE: MetaTensor(torch.tensor(image.array), affine=image.geometry.affine)})
        return data[IMAGE]

    def _restore(self, channels: torch.Tensor, x: MetaTensor, image: Image) -> np.ndarray:
        """``(K, X', Y', Z')`` maps on preprocessed ``x``'s grid -> ``(K, X, Y, Z)`` float32 on ``image``'s, through
        the inverse of ``x``'s transforms (0 outside the foreground crop); ``x`` is left as it was, to restore
        other maps from (the inverse consumes the record of the transforms it is given)."""
        operations = copy.deepcopy(x.applied_operations)
        restored = self.transforms.inverse(
            {IMAGE: MetaTensor(channels, affine=x.affine, applied_operations=operations)}
        )
        out = torch.as_tensor(restored[IMAGE]).numpy().astype(np.float32, copy=False)
        if tuple(out.shape[1:]) != image.geometry.shape:
            raise RuntimeError(f"inverse transforms gave shape {out.shape[1:]}, expected {image.geometry.shape}")
        return out

    @torch.no_grad()
    def predict(self, image: Image) -> np.ndarray:
        """Label map ``(X, Y, Z)`` uint8 in the model's own label values, on ``image``'s grid: the
        :meth:`labels_from_probabilities` of :meth:`predict_probabilities`, computed without them.

        The probabilities are mapped back to ``image``'s grid a slab of slices at a time
        (:func:`~medseg.inference.restore.labels_on_input_grid`), so memory does not grow with the
        number of outputs; only ``transforms.interpolation: spline`` maps every channel at once.
        """
        x, logits, _ = self._network_outputs(image, uncertainty=False)
        probs = self._probabilities(logits)
        maps = axis_maps(x, image.geometry.affine)
        if maps is None:
            full = self._restore(probs, x, image)
            labels = self._labels(torch.from_numpy(full))
        else:
            labels = labels_on_input_grid(probs, maps, image.geometry.shape, self._labels, self._label_keys)
        return self.postprocess(labels, image)

    def _labels(self, probs: torch.Tensor) -> np.ndarray:
        """Labels ``(X, Y, Z)`` uint8 from probabilities ``(C_out, X, Y, Z)`` straight from the inverse
        transforms (completed in place, :func:`complete_probabilities`)."""
        complete_probabilities(probs, regions=self.table.kind == "regions")
        return outputs_to_labels(self._weighted(probs), self.table, threshold=self.inference.threshold)

    def _weighted(self, probs: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(C_out, ...)`` times ``inference.class_weights`` (the label decision's
        scores), or ``probs`` itself without them."""
        if self.class_weights is None:
            return probs
        return probs * self.class_weights.view(-1, *[1] * (probs.ndim - 1))

    def _label_keys(self, probs: torch.Tensor) -> torch.Tensor:
        """Codes ``(X, Y, Z)`` of probabilities ``(C_out, X, Y, Z)`` (completed in place) such that any mix
        of voxels that share a code has their label (see :func:`~medseg.inference.restore.labels_on_input_grid`):
        the argmax for classes, for regions which channels pass ``inference.threshold`` (one bit each)."""
        complete_probabilities(probs, regions=self.table.kind == "regions")
        if self.table.kind != "regions":
            return self._weighted(probs).argmax(0)
        bits = 2 ** torch.arange(len(probs)).view(-1, *[1] * (probs.ndim - 1))
        return ((probs > self.inference.threshold) * bits).sum(0)

    def labels_from_probabilities(self, probs: np.ndarray, image: Image) -> np.ndarray:
        """Label map ``(X, Y, Z)`` uint8 from ``probs`` ``(C_out, X, Y, Z)`` on ``image``'s grid (as
        :meth:`predict_probabilities` gives them), post-processed (:meth:`postprocess`)."""
        scores = self._weighted(torch.from_numpy(probs))
        labels = outputs_to_labels(scores, self.table, threshold=self.inference.threshold)
        return self.postprocess(labels, image)

    def postprocess(self, labels: np.ndarray, image: Image) -> np.ndarray:
        """``labels`` ``(X, Y, Z)`` uint8 on ``image``'s grid after the ``inference`` config's post-processing:
        ``min_component_ml`` relabels too-small connected pieces
        (:func:`~medseg.postprocessing.components.remove_small_components`), ``min_region_ml`` too-small region
        predictions (:func:`~medseg.postprocessing.regions.suppress_small_regions`), and ``keep_largest_component``
        keeps each foreground label's largest connected piece
        (:func:`~medseg.postprocessing.components.keep_largest_components`)."""
        if self.inference.min_component_ml:
            labels = remove_small_components(
                labels, self.table, spacing=image.geometry.spacing, min_component_ml=self.inference.min_component_ml
            )
        if self.inference.min_region_ml:
            voxel_ml = float(np.prod(image.geometry.spacing)) / 1000.0
            labels = suppress_small_regions(
                labels, self.table, voxel_ml=voxel_ml, min_region_ml=self.inference.min_region_ml
            )
        if self.inference.keep_largest_component:
            labels = keep_largest_components(labels, self.table.foreground_labels)
        return labels


def complete_probabilities(probs: torch.Tensor, *, regions: bool) -> torch.Tensor:
    """``probs`` ``(C_out, ...)`` from the inverse transforms, completed in place and returned: clipped to
    [0, 1] (a cubic-spline inverse resampling overshoots at edges); for class outputs the share that the
    crop's zero padding left out goes to background (outside the crop, and where resampling mixes in
    the outside at its edge) and each voxel is renormalised to sum to 1 after an overshoot."""
    probs.clamp_(0.0, 1.0)
    if not regions:
        total = probs.sum(0)
        probs[0] += (1.0 - total).clamp_(min=0.0)
        probs /= total.clamp_(min=1.0)
    return probs
