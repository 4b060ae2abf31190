"""Benchmark reading a DICOM CT series: medseg's reader against SimpleITK's ImageSeriesReader.

Builds a synthetic CT series with pydicom in a temporary folder (default 512 x 512 x 140: uint16 with
12 stored bits, RescaleIntercept -1024, Explicit VR Little Endian, one file per slice, oblique), then
reads it in fresh processes, alternating the readers, so that each peak RSS is its reader's own:

- ``medseg``: ``read_dicom_series(folder)``: finding the series (headers) and reading it to an
  ``(X, Y, Z)`` int16 array;
- ``simpleitk``: ``ImageSeriesReader.GetGDCMSeriesFileNames(folder)``, ``Execute()`` and
  ``GetArrayViewFromImage`` (no copy): the same work to a ``(Z, Y, X)`` int16 array.

Each read prints one JSON line (seconds from the folder to the array; the process's peak RSS and its RSS
before the read, both MB); the last line is the summary: medians per reader and medseg's ratios to
SimpleITK. Both readers' arrays are checked to hold the same values.

    .venv/bin/python tools/bench_dicom.py                 # 512 x 512 x 140, 5 reads each
    .venv/bin/python tools/bench_dicom.py --slices 20 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READERS = ("medseg", "simpleitk")


def _rss_mb() -> float:
    """The process's resident set now, MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_series(folder: Path, *, rows: int, columns: int, slices: int) -> None:
    """Write a synthetic CT series of ``slices`` files of ``rows`` x ``columns`` pixels into ``folder``."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:rows, :columns]
    body = ((x - columns / 2) ** 2 / (0.4 * columns) ** 2 + (y - rows / 2) ** 2 / (0.3 * rows) ** 2) < 1
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    iop = np.array([1.0, 0.0, 0.0, 0.0, 0.996, -0.0872])  # 5 degrees of gantry-free obliquity
    normal = np.cross(iop[:3], iop[3:])
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.Modality = "Bench^CT", "bench", "CT"
        ds.SeriesDescription, ds.InstanceNumber = "synthetic CT", k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array([-250.0, -250.0, -100.0]) + 1.25 * k * normal]
        ds.PixelSpacing, ds.SliceThickness = [0.9765625, 0.9765625], 1.25
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        pixels = np.where(body, 1064 + rng.integers(-60, 60, (rows, columns)), 24).astype(np.uint16)
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"CT{k:04d}.dcm", enforce_file_format=True)


def _read(reader: str, folder: Path) -> dict[str, object]:
    """Read the series with ``reader`` in this process; its figures as a JSON-able dict."""
    import numpy as np

    if reader == "medseg":
        import pydicom.pixels  # noqa: F401  (imported before the clock starts, as SimpleITK is)

        from medseg.io import read_dicom_series

        before = _rss_mb()
        tick = time.perf_counter()
        array = read_dicom_series(folder).array
    else:
        import SimpleITK as sitk

        before = _rss_mb()
        tick = time.perf_counter()
        series = sitk.ImageSeriesReader()
        series.SetFileNames(series.GetGDCMSeriesFileNames(str(folder)))
        image = series.Execute()
        array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)
    seconds = time.perf_counter() - tick
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {
        "reader": reader,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak, 1),
        "rss_before_read_mb": round(before, 1),
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "checksum": int(np.asarray(array, dtype=np.int64).sum()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--columns", type=int, default=512)
    parser.add_argument("--slices", type=int, default=140)
    parser.add_argument("--repeats", type=int, default=5, help="reads per reader, each in a fresh process")
    parser.add_argument("--child", choices=READERS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_read(args.child, args.folder)), flush=True)
        return 0

    runs: dict[str, list[dict[str, object]]] = {r: [] for r in READERS}
    with tempfile.TemporaryDirectory(prefix="bench_dicom_") as tmp:
        folder = Path(tmp)
        build_series(folder, rows=args.rows, columns=args.columns, slices=args.slices)
        for _ in range(args.repeats):
            for reader in READERS:
                command = [sys.executable, __file__, "--child", reader, "--folder", str(folder)]
                line = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()
                print(line, flush=True)
                runs[reader].append(json.loads(line))
    if len({r["checksum"] for rs in runs.values() for r in rs}) != 1:
        raise SystemExit("the readers' arrays differ")

    def median(reader: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs[reader])  # type: ignore[arg-type]

    summary: dict[str, object] = {
        "summary": True,
        "series": f"{args.columns}x{args.rows}x{args.slices} CT, uint16 12-bit, Explicit VR Little Endian",
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    for reader in READERS:
        summary[f"{reader}_s"] = median(reader, "seconds")
        summary[f"{reader}_peak_rss_mb"] = median(reader, "peak_rss_mb")
        summary[f"{reader}_read_rss_mb"] = round(
            median(reader, "peak_rss_mb") - median(reader, "rss_before_read_mb"), 1
        )
    summary["time_ratio"] = round(summary["medseg_s"] / summary["simpleitk_s"], 2)  # type: ignore[operator]
    summary["peak_rss_ratio"] = round(summary["medseg_peak_rss_mb"] / summary["simpleitk_peak_rss_mb"], 2)  # type: ignore[operator]
    summary["read_rss_ratio"] = round(summary["medseg_read_rss_mb"] / summary["simpleitk_read_rss_mb"], 2)  # type: ignore[operator]
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
