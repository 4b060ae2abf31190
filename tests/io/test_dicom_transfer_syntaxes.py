"""Every transfer syntax medseg claims to read, on small series encoded here (pydicom's encoders, imagecodecs
for the JPEG processes pydicom cannot encode), read back against the volume that was encoded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import uid

from medseg.io import read_dicom_series

SHAPE = (3, 32, 40)  # (slices, rows, columns); OpenJPEG needs 32 pixels for its 6 resolutions


def _volume(dtype: type, top: int) -> np.ndarray:
    """A smooth ramp plus a little texture, ``(slices, rows, columns)``, in ``[0, top]``."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    values = (x * 7 + y * 11 + z * 37) % (top // 2) + top // 4 + (x * y) % 5
    return values.astype(dtype)


def _native(ds: Any, syntax: str) -> None:
    if syntax == uid.ExplicitVRBigEndian:  # pydicom writes pixel bytes as they are: swap them first
        ds.PixelData = ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder(">")).tobytes()
    ds.file_meta.TransferSyntaxUID = syntax


def _pydicom_encoder(ds: Any, syntax: str) -> None:
    ds.compress(syntax, **({"j2k_psnr": [80]} if syntax == uid.JPEG2000 else {}))


def _imagecodecs(encode: Callable[[np.ndarray], bytes]) -> Callable[[Any, str], None]:
    def compress(ds: Any, syntax: str) -> None:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([encode(ds.pixel_array)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax

    return compress


def _jpeg_baseline(frame: np.ndarray) -> bytes:
    import imagecodecs

    return imagecodecs.jpeg8_encode(frame, level=95)


def _jpeg_lossless(frame: np.ndarray) -> bytes:
    import imagecodecs

    return imagecodecs.jpeg8_encode(frame, lossless=True, predictor=1, bitspersample=12)


def _jpeg_ls(frame: np.ndarray) -> bytes:
    import imagecodecs

    return imagecodecs.jpegls_encode(frame)


# syntax, how to encode, (dtype, top value), largest allowed error after decoding
CASES = [
    (uid.ExplicitVRLittleEndian, _native, (np.uint16, 4095), 0),
    (uid.ImplicitVRLittleEndian, _native, (np.uint16, 4095), 0),
    (uid.ExplicitVRBigEndian, _native, (np.uint16, 4095), 0),
    (uid.RLELossless, _pydicom_encoder, (np.uint16, 4095), 0),
    (uid.JPEGBaseline8Bit, _imagecodecs(_jpeg_baseline), (np.uint8, 255), 12),
    (uid.JPEGLosslessSV1, _imagecodecs(_jpeg_lossless), (np.uint16, 4095), 0),
    (uid.JPEGLSLossless, _imagecodecs(_jpeg_ls), (np.uint16, 4095), 0),
    (uid.JPEG2000Lossless, _pydicom_encoder, (np.uint16, 4095), 0),
    (uid.JPEG2000, _pydicom_encoder, (np.uint16, 4095), 8),
]


def _encoder_missing(syntax: str, encode: Callable[..., None]) -> str | None:
    """Why this environment cannot encode ``syntax`` for the test, or None."""
    if encode is _native:
        return None
    if encode is _pydicom_encoder:
        from pydicom.pixels import get_encoder

        encoder = get_encoder(syntax)
        return None if encoder.is_available else f"no pydicom encoder for {syntax.name}: {encoder.missing_dependencies}"
    try:
        import imagecodecs  # noqa: F401  (a test-only extra: pip install "medseg[dev]")
    except ImportError:
        return f"encoding {syntax.name} needs imagecodecs (pip install 'medseg[dev]')"
    return None


@pytest.mark.parametrize(("syntax", "encode", "kind", "tolerance"), CASES, ids=[c[0].name for c in CASES])
def test_each_transfer_syntax_reads_the_encoded_volume(
    tmp_path: Path,
    ct_slices: Callable[..., list[Any]],
    syntax: uid.UID,
    encode: Callable[[Any, str], None],
    kind: tuple[type, int],
    tolerance: int,
) -> None:
    missing = _encoder_missing(syntax, encode)
    if missing:
        pytest.skip(missing)
    volume = _volume(*kind)
    for k, ds in enumerate(ct_slices(volume, seed=syntax)):
        encode(ds, syntax)
        ds.save_as(tmp_path / f"IM{k}", enforce_file_format=True)
    image = read_dicom_series(tmp_path)

    expected = np.transpose(volume.astype(np.int32) - 1024, (2, 1, 0))  # (slices, rows, columns) -> (X, Y, Z)
    assert image.array.shape == expected.shape and image.array.dtype == np.int16
    error = np.abs(image.array.astype(np.int32) - expected)
    assert error.max() <= tolerance
    if tolerance:  # lossy: close, yet really decoded (not a constant or a shifted copy)
        assert error.mean() < tolerance / 3
    np.testing.assert_allclose(image.geometry.spacing, (0.6, 0.75, 2.5), atol=1e-4)
