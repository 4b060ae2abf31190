"""The dictionary keys used by every pipeline: defined once, used everywhere."""

from __future__ import annotations

IMAGE = "image"
LABEL = "label"
CASE = "case"
LABELLED = "labelled"
"""Per case, which label values were annotated (a ``(C,)`` bool tensor, background first): see
:meth:`medseg.data.manifest.ManifestCase.annotated`."""
