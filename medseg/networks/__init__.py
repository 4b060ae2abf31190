"""Networks behind one registry: ``build_network("resunet", in_channels=4, out_channels=3)``."""

from __future__ import annotations

from medseg.networks import architectures as _architectures  # noqa: F401  (registers the builders)
from medseg.networks.registry import (
    NetworkSpec,
    build_network,
    check_patch_size,
    get_network_spec,
    network_names,
    register_network,
)

__all__ = ["NetworkSpec", "build_network", "check_patch_size", "get_network_spec", "network_names", "register_network"]
