"""Synthetic datasets for training and testing without downloads.

``medseg.phantoms.brats`` writes BraTS-layout brain MRI phantoms with gliomas (2021 and 2023 releases).
Import the generator modules directly; this package imports nothing heavy by itself.
"""

from __future__ import annotations
