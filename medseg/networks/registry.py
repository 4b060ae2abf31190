"""The network registry: a lower-case name -> a builder that wraps a MONAI network.

Builders are registered explicitly with :func:`register_network` in
:mod:`medseg.networks.architectures`, which ``medseg.networks`` imports, so every name is available
as soon as the package is imported.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from medseg.errors import ConfigError

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class NetworkSpec:
    """A registered architecture.

    Attributes:
        name: registry key (lower_snake).
        builder: ``builder(in_channels=..., out_channels=..., **kwargs) -> nn.Module`` for 3-D input
            ``(B, in_channels, X, Y, Z)`` returning logits ``(B, out_channels, X, Y, Z)``.
        defaults: the default 3-D hyperparameters (documented in the builder's docstring).
        divisor: ``divisor(kwargs) -> int``: every spatial size of the input must be a multiple of it.
        window_voxels: ``window_voxels(kwargs) -> int | None``: the default ``inference.max_window_voxels``,
            for networks whose working memory per window voxel is large (``None``: no bound).
    """

    name: str
    builder: Builder
    defaults: dict[str, Any]
    divisor: Callable[[dict[str, Any]], int]
    window_voxels: Callable[[dict[str, Any]], int | None]


_REGISTRY: dict[str, NetworkSpec] = {}


def register_network(
    name: str,
    *,
    defaults: dict[str, Any],
    divisor: Callable[[dict[str, Any]], int],
    window_voxels: Callable[[dict[str, Any]], int | None] = lambda kwargs: None,
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``name`` (see :class:`NetworkSpec` for the arguments).
    Registering a name twice is an error."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"network {name!r} is registered twice")
        _REGISTRY[name] = NetworkSpec(name, builder, dict(defaults), divisor, window_voxels)
        return builder

    return wrap


def network_names() -> list[str]:
    """All registered names, sorted."""
    return sorted(_REGISTRY)


def get_network_spec(name: str) -> NetworkSpec:
    """The spec registered under ``name``; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown network {name!r}; valid names: {', '.join(network_names())}") from None


def resolve_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The builder's defaults updated with ``kwargs``; an argument the builder does not take is an error."""
    spec = get_network_spec(name)
    params = set(inspect.signature(spec.builder).parameters) - {"in_channels", "out_channels"}
    unknown = sorted(set(kwargs) - params)
    if unknown:
        raise ConfigError(
            f"network {name!r} takes no argument(s) {', '.join(unknown)}; it takes {', '.join(sorted(params))}"
        )
    return {**spec.defaults, **kwargs}


def build_network(name: str, *, in_channels: int, out_channels: int, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build the network ``name`` with its defaults overridden by ``kwargs``.

    Raises:
        ConfigError: an unknown name or argument, or a value the network refuses (MONAI's
            ``ValueError``, in one line).
    """
    spec = get_network_spec(name)
    resolved = resolve_kwargs(name, kwargs or {})
    try:
        return spec.builder(in_channels=in_channels, out_channels=out_channels, **resolved)
    except ValueError as exc:
        raise ConfigError(f"network {name!r}: {' '.join(str(exc).split())}") from None


def size_divisor(name: str, kwargs: dict[str, Any] | None = None) -> int:
    """Every spatial size (voxels) of network ``name``'s input must be a multiple of this."""
    return int(get_network_spec(name).divisor(resolve_kwargs(name, kwargs or {})))


def default_window_voxels(name: str, kwargs: dict[str, Any] | None = None) -> int | None:
    """The most voxels one inference window of network ``name`` should hold by default (``None``: no bound)."""
    return get_network_spec(name).window_voxels(resolve_kwargs(name, kwargs or {}))


def check_patch_size(name: str, patch_size: Sequence[int], kwargs: dict[str, Any] | None = None) -> None:
    """Raise :class:`ConfigError` if ``patch_size`` (voxels) is not a size the network can take.

    The message names the network and the nearest valid size.
    """
    divisor = size_divisor(name, kwargs)
    if all(s % divisor == 0 and s > 0 for s in patch_size):
        return
    nearest = [max(divisor, divisor * round(s / divisor)) for s in patch_size]
    raise ConfigError(
        f"network {name!r} needs every patch dimension to be a multiple of {divisor}: "
        f"{list(patch_size)} is not; nearest valid size is {nearest}"
    )


def stride_product(strides: Sequence[int | Sequence[int]]) -> int:
    """Total downsampling factor of a list of (isotropic or per-axis) strides (largest axis)."""
    per_axis = [s if isinstance(s, int) else max(s) for s in strides]
    return math.prod(per_axis)
