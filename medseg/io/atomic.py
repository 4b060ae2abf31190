"""Atomic file output: write to a temporary file in the target folder, then rename over the target."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from medseg.errors import MedsegInputError, OutputError


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error delete it.

    The temporary name keeps the full suffix (``.nii.gz``, ``.seg.nrrd``) so that writers which pick a
    format from the file name still work. A reader never sees a half-written ``path``. The file gets the
    permissions the umask allows (``0644`` under ``022``), as a file opened in place would.

    Raises:
        OutputError: naming ``path`` and the system's reason, when its folder, the temporary file or the
            file itself cannot be written (a full disk, no permission, a name too long): an
            ``OSError`` of writing names no file, or only the temporary one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes) or ".tmp"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; the file gets the mode open() would give it
            os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def _cannot_write(path: Path, exc: OSError) -> OutputError:
    """``exc``, met while writing ``path``, as one line naming ``path``."""
    return OutputError(f"cannot write: {exc.strerror or exc}", path=path)


def _umask() -> int:
    """The process's umask, read without changing it where the system shows it (Linux); elsewhere set
    and restored at once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure_not_input(path: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse to write ``path`` when it is one of ``inputs`` (or lies inside an input folder).

    Raises:
        MedsegInputError: ``path`` would overwrite an input file or write into an input DICOM folder.
    """
    target = Path(os.path.realpath(path))  # unlike Path.resolve, no error on a symbolic link loop
    for item in inputs:
        if item is None:
            continue
        source = Path(os.path.realpath(item))
        if target == source or (source.is_dir() and source in target.parents):
            raise MedsegInputError(f"refusing to overwrite the input {source}; choose another output path", path=path)
