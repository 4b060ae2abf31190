"""The dictionary keys used by every pipeline: defined once, used everywhere."""

from __future__ import annotations

IMAGE = "image"
LABEL = "label"
PRED = "pred"
CASE = "case"
