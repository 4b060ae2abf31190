"""The exceptions medseg raises for problems a user can fix.

The command line turns each into one line, ``error: <file>: <reason>``, and a non-zero exit code;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path


class MedsegError(Exception):
    """Base of every user-facing medseg error.

    Args:
        reason: what is wrong, as one sentence without a trailing full stop; kept to one line (a
            library's multi-line message, quoted in it, has its line breaks folded into spaces).
        path: the file or folder the problem is about, when there is one.
    """

    exit_code = 2

    def __init__(self, reason: str, *, path: str | Path | None = None) -> None:
        self.reason = " ".join(reason.split())
        self.path = Path(path) if path is not None else None
        super().__init__(f"{self.path}: {self.reason}" if self.path is not None else self.reason)


class MedsegInputError(MedsegError):
    """An input image, label map, manifest or dataset is missing, malformed or inconsistent."""


class ConfigError(MedsegError):
    """A configuration file or ``--set`` override is invalid (unknown key, wrong type, bad value)."""


class CheckpointError(MedsegError):
    """A checkpoint is missing, not a medseg checkpoint, or incompatible with this version."""


class OutputError(MedsegError):
    """An output file cannot be written: the disk is full, permission is denied, or its name is too long
    for the file system (the reason says which)."""


def file_not_found(path: Path) -> MedsegInputError:
    """The error for an input file that cannot be found at ``path``: ``"file not found"``, or, when
    ``path`` is a symbolic link (which a folder listing shows), where the link fails: a loop, or a
    target that does not exist."""
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                reason = "a symbolic link that loops (to itself or round a cycle)"
            else:
                reason = f"a symbolic link to {os.readlink(path)}, which does not exist"
            return MedsegInputError(f"file not found: {reason}", path=path)
    return MedsegInputError("file not found", path=path)


class ProtocolError(MedsegError):
    """A record of the protocol between the command line and its clients (:mod:`medseg.protocol`) is
    malformed or holds a value the command line does not take."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message (``""`` when it has none): what of a library's
    multi-line message fits the one line of an error report."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


# how one of our errors reads in a traceback's text: ``medseg.errors.MedsegInputError: <file>: <reason>``
_ERROR_LINE = re.compile(r"^medseg\.errors\.(\w+): (.+)$", re.MULTILINE)


def user_error_in(exc: BaseException) -> MedsegError | None:
    """The medseg error behind ``exc``, or ``None``. MONAI wraps errors raised inside transforms, and an
    error in a DataLoader worker process reaches the main process only as its traceback's text; this
    looks through ``exc``'s chain of causes and in that text."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MedsegError):
            return seen
        match = _ERROR_LINE.search(str(seen))
        error_class = globals().get(match.group(1)) if match else None
        if isinstance(error_class, type) and issubclass(error_class, MedsegError):
            return error_class(match.group(2))  # type: ignore[union-attr]
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def user_errors_unwrapped() -> Iterator[None]:
    """Inside this block, an exception that wraps one of our errors (:func:`user_error_in`) is raised as
    that error, so the command line can report it in one line; any other exception passes unchanged."""
    try:
        yield
    except MedsegError:
        raise
    except Exception as exc:
        user_error = user_error_in(exc)
        if user_error is not None:
            raise user_error from None
        raise
