"""Atomic output: a failed or killed write never leaves a partial target, and failures leave no temp files."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import OutputError
from medseg.io import Geometry, atomic_output, read_image, write_label_map
from medseg.labels import LabelTable

TABLE = LabelTable(name="t", labels={0: "background", 1: "lesion"})


def test_body_raises_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.seg.nrrd"
    target.write_bytes(b"old content")
    with pytest.raises(RuntimeError, match="boom"), atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".seg.nrrd") and tmp != target
        tmp.write_bytes(b"half a fi")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.seg.nrrd"]


def test_success_replaces_target(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.nii.gz"
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["out.nii.gz"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".seg.nrrd"])
def test_failing_writer_keeps_previous_label_map(tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    geometry = Geometry((4, 5, 6), np.diag([2.0, 2.0, 3.0, 1.0]))
    old = np.zeros(geometry.shape, dtype=np.uint8)
    target = write_label_map(old, geometry, tmp_path / f"labels{suffix}", table=TABLE)
    before = target.read_bytes()

    def broken_write(*args: object, **kwargs: object) -> None:
        Path(str(args[1] if suffix == ".nii.gz" else args[0])).write_bytes(b"partial")
        raise OSError("disk full")

    if suffix == ".nii.gz":
        import nibabel

        monkeypatch.setattr(nibabel, "save", broken_write)
    else:
        import nrrd

        monkeypatch.setattr(nrrd, "write", broken_write)
    with pytest.raises(OutputError, match="cannot write: disk full") as err:
        write_label_map(np.ones(geometry.shape, dtype=np.uint8), geometry, target, table=TABLE)
    assert err.value.path == target
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    np.testing.assert_array_equal(read_image(target).array, old)


def test_a_full_disk_is_one_error_naming_the_target(tmp_path: Path, full_disk: Callable[..., None]) -> None:
    """A write's OSError names no file (ENOSPC at flush) or only the temporary one: the error names the target."""
    target = tmp_path / "summary.csv"
    target.write_text("old content")
    full_disk("summary.csv")
    with pytest.raises(OutputError) as err, atomic_output(target) as tmp, tmp.open("w") as fh:
        fh.write("case,status\n")
    assert str(err.value) == f"{target}: cannot write: No space left on device"
    assert target.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_a_name_too_long_for_the_file_system_is_one_error_naming_it(tmp_path: Path) -> None:
    target = tmp_path / f"{'x' * 250}.nii.gz"
    with pytest.raises(OutputError, match="cannot write: File name too long") as err, atomic_output(target):
        pass
    assert err.value.path == target
    assert list(tmp_path.iterdir()) == []


def test_killed_process_leaves_target_untouched(tmp_path: Path) -> None:
    """SIGKILL in the middle of a write: the target keeps its old bytes (only a hidden temp file may remain)."""
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"old content")
    script = (
        "import os, signal, sys\n"
        "from medseg.io.atomic import atomic_output\n"
        "with atomic_output(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script, str(target)], cwd=root, check=False)
    assert result.returncode != 0
    assert target.read_bytes() == b"old content"
    assert all(p == target or p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_the_umask_allows(tmp_path: Path, umask: int, mode: int) -> None:
    import os
    import stat

    geometry = Geometry((4, 5, 6), np.diag([2.0, 2.0, 3.0, 1.0]))
    old = os.umask(umask)
    try:
        with atomic_output(tmp_path / "summary.csv") as tmp:
            tmp.write_text("case,status\n")
        write_label_map(np.zeros(geometry.shape, np.uint8), geometry, tmp_path / "case.nii.gz", table=TABLE)
    finally:
        os.umask(old)
    for name in ("summary.csv", "case.nii.gz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
