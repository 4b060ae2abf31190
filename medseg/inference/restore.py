"""Label maps on the input's grid without full-resolution probabilities: the memory-bounded half of
inference.

The network's probabilities live on its own grid: the input reoriented (``transforms.orientation``),
resampled to ``transforms.spacing`` and cropped to the foreground box. Inverting those transforms for
every output channel at once costs ``C`` full-resolution float channels (float64 inside MONAI's
``Spacing`` inverse) before the argmax: about 90 bytes per input voxel for a 7-output CT model, 19 GB for
a 512 x 512 x 800 whole-body CT. :func:`labels_on_input_grid` gives the label map that path would give,
one slab of input slices at a time, holding one slab's probabilities.

It computes what MONAI's inverses compute: the crop's inverse pads with 0, ``Spacing``'s resamples
linearly with ``align_corners=False`` and border padding (positions clamped to the uncropped grid),
``Orientation``'s flips and permutes axes. Input voxel ``(i, j, k)`` lies at network index
``M @ (i, j, k, 1)``, ``M = inv(A_network) @ A_input``; as reorientation and resampling never rotate, each
input axis runs along one network axis (:class:`AxisMap`) and the trilinear interpolation is done one axis
at a time. Voxels whose interpolation reads only the padding (outside the foreground crop) are
background without any arithmetic.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor

SLAB_VOXELS = 16 * 2**20
"""Input voxels per slab (a few bytes of bookkeeping each)."""


@dataclass(frozen=True)
class AxisMap:
    """Where the voxels along one input axis lie along one axis of the network's (cropped) grid.

    Attributes:
        network_axis: the network grid's axis (0-2) that this input axis runs along.
        scale: network voxels per input voxel (negative where the axis is flipped).
        offset: network index of input index 0.
        low, high: the positions MONAI's border padding clamps to, in cropped network indices: the
            uncropped resampled grid is ``[low, high]``, the crop ``[0, size - 1]``.
        size: the crop's length along the network axis.
    """

    network_axis: int
    scale: float
    offset: float
    low: float
    high: float
    size: int

    def weights(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For input ``indices`` along this axis: the lower and upper neighbours, as indices into the
        crop padded by one zero voxel at each end, and the weight of the upper one (float32)."""
        position = np.clip(self.offset + self.scale * indices.astype(np.float64), self.low, self.high)
        lower = np.floor(position)
        weight = position - lower
        upper = np.minimum(lower + 1, self.high)
        pad = lambda i: torch.from_numpy(np.clip(i, -1, self.size).astype(np.int64) + 1)  # noqa: E731
        return pad(lower), pad(upper), torch.from_numpy(weight.astype(np.float32))


def axis_maps(x: MetaTensor, input_affine: np.ndarray, *, atol: float = 1e-6) -> tuple[AxisMap, ...] | None:
    """One :class:`AxisMap` per input axis for preprocessed ``x`` (``(C, X', Y', Z')`` with MONAI's
    ``applied_operations``) from an input whose voxel-to-world affine is ``input_affine`` (4x4, mm).

    ``None`` when the transforms are not what this module inverts exactly: an interpolation other than
    linear (``transforms.interpolation: spline``), a crop that padded, or a map that mixes axes.
    """
    start = np.zeros(3)
    full = np.asarray(x.shape[1:], dtype=np.float64)
    for op in x.applied_operations:
        extra = op.get("extra_info", {})
        if op["class"] == "SpatialResample" and extra.get("mode") != "bilinear":
            return None
        if op["class"] == "CropForeground":
            start = np.asarray(extra["cropped"][0::2], dtype=np.float64)
            full = np.asarray(op["orig_size"], dtype=np.float64)
            if not np.array_equal(start + np.asarray(extra["cropped"][1::2]) + x.shape[1:], full):
                return None  # the crop also padded
    m = np.linalg.solve(np.asarray(x.affine, dtype=np.float64), np.asarray(input_affine, dtype=np.float64))
    maps = []
    for axis in range(3):
        column = m[:3, axis]
        network_axis = int(np.argmax(np.abs(column)))
        if np.abs(np.delete(column, network_axis)).max() > atol * np.abs(column[network_axis]):
            return None
        maps.append(
            AxisMap(
                network_axis=network_axis,
                scale=float(column[network_axis]),
                offset=float(m[network_axis, 3]),
                low=-start[network_axis],
                high=full[network_axis] - 1 - start[network_axis],
                size=int(x.shape[1 + network_axis]),
            )
        )
    if sorted(a.network_axis for a in maps) != [0, 1, 2]:
        return None
    return tuple(maps)


def labels_on_input_grid(
    probabilities: torch.Tensor,
    maps: tuple[AxisMap, ...],
    shape: tuple[int, int, int],
    decide: Callable[[torch.Tensor], np.ndarray],
    key: Callable[[torch.Tensor], torch.Tensor],
    *,
    slab_voxels: int = SLAB_VOXELS,
) -> np.ndarray:
    """The label map ``(X, Y, Z)`` uint8 on the input's grid of ``shape``, from ``probabilities``
    ``(C, X', Y', Z')`` float32 on the network's cropped grid, ``maps`` from :func:`axis_maps`.

    ``decide`` turns probabilities ``(C, ...)`` on the input's grid (0 in every channel outside the crop,
    as MONAI's inverse leaves them) into labels ``(...)`` uint8. ``key`` gives ``(...)`` integer codes such
    that any convex combination of probability vectors that share a code decides the same label (the
    argmax for classes; which channels pass the threshold for regions). A voxel whose interpolation
    reads only corners of one code takes their label; only the others are interpolated, a slab of
    at most ``slab_voxels`` input voxels at a time.
    """
    channels = probabilities.shape[0]
    padded = torch.nn.functional.pad(probabilities.float(), (1, 1, 1, 1, 1, 1))
    codes = key(padded.clone())
    corner_labels = decide(padded.clone())
    uniform = torch.ones([n - 1 for n in codes.shape], dtype=torch.bool)  # cells whose 8 corners agree
    for corner in itertools.product((0, 1), repeat=3):
        cell = tuple(slice(c, c + n - 1) for c, n in zip(corner, codes.shape, strict=True))
        uniform &= codes[cell] == codes[:-1, :-1, :-1]
    uniform_np = uniform.numpy()
    cell_labels = np.ascontiguousarray(corner_labels[:-1, :-1, :-1])  # the label of a cell whose corners agree
    order = [m.network_axis for m in maps]  # the network axis of input axes 0, 1, 2
    table = padded.permute(1, 2, 3, 0).reshape(-1, channels)  # channel last: one row per voxel
    strides = [table.shape[0] // math.prod(padded.shape[1 : 2 + order[axis]]) for axis in range(3)]
    steps = [m.weights(np.arange(length)) for m, length in zip(maps, shape, strict=True)]
    cells = [
        np.minimum(lower.numpy(), codes.shape[m.network_axis] - 2) for m, (lower, _, _) in zip(maps, steps, strict=True)
    ]
    out = np.empty(shape, dtype=np.uint8)
    depth = max(1, slab_voxels // (shape[0] * shape[1]))
    for begin in range(0, shape[2], depth):
        k = slice(begin, min(begin + depth, shape[2]))
        grid = _in_network_order(order, (cells[0][:, None, None], cells[1][None, :, None], cells[2][None, None, k]))
        slab = cell_labels[grid]
        mixed = np.nonzero(~uniform_np[grid])
        if mixed[0].size:
            rows = (mixed[0], mixed[1], mixed[2] + begin)
            slab[mixed] = decide(_interpolate(table, strides, steps, rows))
        out[:, :, k] = slab
    return out


def _in_network_order(order: list[int], per_input_axis: tuple) -> tuple:
    """Index arrays given per input axis, rearranged to index an array in network axis order."""
    indices = [None, None, None]
    for axis, index in enumerate(per_input_axis):
        indices[order[axis]] = index
    return tuple(indices)


def _interpolate(
    table: torch.Tensor,
    strides: list[int],
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    rows: tuple[np.ndarray, ...],
) -> torch.Tensor:
    """Trilinear interpolation at the input voxels ``rows`` (one index array per input axis) of the padded
    network grid given as ``table`` ``(voxels, C)``, channel last, whose voxel ``v`` along each input axis
    is ``strides[axis] * v`` rows further on; each axis' (lower, upper, weight) from
    :meth:`AxisMap.weights`. Returns ``(C, M)``."""
    picked = [
        (lower[r], upper[r], weight[r])
        for (lower, upper, weight), r in zip(steps, map(torch.from_numpy, rows), strict=True)
    ]
    total = torch.zeros((len(rows[0]), table.shape[1]))
    for corner in itertools.product((0, 1), repeat=3):
        index = sum(stride * p[c] for stride, p, c in zip(strides, picked, corner, strict=True))
        w = math.prod(p[2] if c else 1.0 - p[2] for p, c in zip(picked, corner, strict=True))
        total += table[index] * w[:, None]
    return total.T
