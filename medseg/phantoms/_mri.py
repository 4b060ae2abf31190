"""MRI contrast model: tissue and lesion maps -> T1, T1ce, T2 and FLAIR images.

Relative signal levels follow clinical 1.5/3 T brain MRI: T1 WM > GM > CSF; T2 CSF > GM > WM;
FLAIR like T2 with the CSF signal nulled; T1ce like T1 plus enhancement of the tumour rim and of
vessels (choroid plexus, cortical veins), which are *not* tumour. Oedema is bright on T2 and FLAIR
and dark on T1; necrosis is dark on T1/T1ce and bright on T2. A resection cavity holds fluid: it takes the
case's CSF signal (dark on T1 and T1ce, bright on T2, nulled on FLAIR). Each case and modality gets its own
jitter of these levels, texture, PSF blur (sometimes thick-slice-like), a smooth multiplicative bias
field, Rician noise and an arbitrary intensity scale, as scanners and protocols differ.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg.phantoms._anatomy import CSF, DEEP_GM, GM, VESSEL, WM
from medseg.phantoms._fields import WorldGrid, smooth_field
from medseg.phantoms._tumour import ED, ET, NCR, RC

MODALITIES = ("t1", "t1ce", "t2", "flair")

# Mean signal per tissue code (background, CSF, GM, WM, deep GM, vessel) and modality.
_TISSUE_MEANS = {
    "t1": {CSF: 0.28, GM: 0.62, WM: 0.86, DEEP_GM: 0.72, VESSEL: 0.45},
    "t1ce": {CSF: 0.30, GM: 0.63, WM: 0.83, DEEP_GM: 0.72, VESSEL: 1.15},
    "t2": {CSF: 1.00, GM: 0.58, WM: 0.42, DEEP_GM: 0.50, VESSEL: 0.40},
    "flair": {CSF: 0.12, GM: 0.62, WM: 0.45, DEEP_GM: 0.55, VESSEL: 0.35},
}
# Mean signal per lesion label; the non-enhancing core of a low-grade-like lesion uses "core".
_LESION_MEANS = {
    "t1": {NCR: 0.36, ED: 0.64, ET: 0.62, "core": 0.48},
    "t1ce": {NCR: 0.36, ED: 0.65, ET: 1.45, "core": 0.50},
    "t2": {NCR: 0.95, ED: 0.86, ET: 0.68, "core": 0.90},
    "flair": {NCR: 0.60, ED: 0.95, ET: 0.76, "core": 0.78},
}


def _jittered_levels(rng: np.random.Generator, modality: str, enhancing: bool) -> tuple[np.ndarray, dict]:
    """Per-case tissue lookup table (indexed by tissue code) and lesion levels for one modality."""
    table = np.zeros(max(_TISSUE_MEANS[modality]) + 1, dtype=np.float32)
    for code, mean in _TISSUE_MEANS[modality].items():
        table[code] = mean * (1 + rng.normal(0, 0.04))
    lesion = {k: v * (1 + rng.normal(0, 0.07)) for k, v in _LESION_MEANS[modality].items()}
    if modality == "t1ce":
        lesion[ET] = _LESION_MEANS["t1ce"][ET] * rng.uniform(0.88, 1.18)
    if not enhancing:
        lesion[NCR] = lesion["core"]
    return table, lesion


def _blur(image: np.ndarray, rng: np.random.Generator, spacing: float) -> np.ndarray:
    """Gaussian PSF of ~0.6 mm sigma; in half the images one axis is blurred like a thick-slice scan."""
    sigma_mm = np.full(3, 0.6)
    if rng.random() < 0.5:
        sigma_mm[rng.integers(3)] = rng.uniform(1.0, 2.2)
    sigma = np.maximum(sigma_mm / spacing, 0.35)
    return ndimage.gaussian_filter(image, sigma=sigma, mode="nearest")


def _rician(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma``."""
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def mean_signal(
    rng: np.random.Generator,
    modality: str,
    *,
    tissue: np.ndarray,
    labels: np.ndarray,
    oedema_strength: np.ndarray,
    tissue_texture: np.ndarray,
    tumour_texture: np.ndarray,
    enhancing: bool,
) -> np.ndarray:
    """Noise-free signal of one modality before the scanner's blur, bias and noise.

    Args:
        rng: the modality's stream (draws this case's tissue and lesion levels).
        modality: one of :data:`MODALITIES`.
        tissue: ``(X, Y, Z)`` uint8 tissue codes (0 = outside the brain).
        labels: ``(X, Y, Z)`` uint8 internal lesion labels (:data:`NCR`, :data:`ED`, :data:`ET`, :data:`RC`).
        oedema_strength: ``(X, Y, Z)`` float32 in [0, 1].
        tissue_texture, tumour_texture: unit-variance smooth fields for fine intensity variation.

    Returns:
        ``(X, Y, Z)`` float32, about 0-1.5 (white matter ~0.85 on T1), exactly 0 outside the brain.
    """
    table, lesion = _jittered_levels(rng, modality, enhancing)
    image = table[tissue] * (1 + 0.035 * tissue_texture)
    oedema = labels == ED
    weight = 0.55 + 0.45 * oedema_strength[oedema]
    image[oedema] += weight * (lesion[ED] - image[oedema])
    for code in (NCR, ET):
        mask = labels == code
        image[mask] = lesion[code] * (1 + 0.12 * tumour_texture[mask])
    cavity = labels == RC  # fluid: the case's own CSF level, with no draw of its own (other releases unchanged)
    image[cavity] = table[CSF] * (1 + 0.035 * tissue_texture[cavity])
    return image


def acquire(
    rng: np.random.Generator, grid: WorldGrid, signal: np.ndarray, brain: np.ndarray, spacing: float
) -> np.ndarray:
    """Image the signal: PSF blur, bias field, Rician noise, skull-stripping mask and scanner scale.

    Args:
        rng: the modality's stream, after :func:`mean_signal`.
        signal: ``(X, Y, Z)`` float32 from :func:`mean_signal` (averaged to the target grid).
        brain: ``(X, Y, Z)`` bool skull-stripping mask.
        spacing: voxel size in mm.

    Returns:
        ``(X, Y, Z)`` int16 image, exactly 0 outside ``brain`` and >= 1 inside.
    """
    image = _blur(signal, rng, spacing)
    image *= np.exp(rng.uniform(0.08, 0.2) * smooth_field(rng, grid, cell_mm=60.0))
    image = _rician(image, rng, sigma=rng.uniform(0.015, 0.045))
    scale = float(np.exp(rng.uniform(np.log(150), np.log(1500))))
    out = np.where(brain, np.clip(np.rint(image * scale), 1, np.iinfo(np.int16).max), 0)
    return out.astype(np.int16)
