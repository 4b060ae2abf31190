"""Progress displays: a bar on a terminal, plain lines in a log.

:func:`track` is the one place medseg makes a progress display (training's epochs, phantoms, batch
prediction, evaluation and every other loop over cases). On a terminal (``sys.stderr`` is a TTY) it is a
tqdm bar, redrawn in place. Anywhere else (a log file, a pipe, a CI job, ``nohup``) a redrawn bar would
leave each of its frames in the log, joined by carriage returns, so the display writes plain lines to
``sys.stderr`` instead: one every ``every`` items and one at the end, or none at all (``every=0``, e.g.
for training's iterations, whose epoch prints its own summary line).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LINES_PER_RUN = 10


def on_terminal() -> bool:
    """True when progress is drawn as a bar: ``sys.stderr`` is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


class LogProgress(Generic[T]):
    """Progress as plain lines on ``sys.stderr``, e.g. ``scoring: 20/40 case(s), 00:12 elapsed, about 00:12
    left``: the part of tqdm's interface that medseg uses (iterating, ``update``, ``set_postfix_str``,
    ``set_postfix``, ``close``, ``with``), without carriage returns.

    Args:
        iterable: items to pass through, counting each; ``None`` to count by :meth:`update`.
        total: the number of items (default: ``len(iterable)`` where it has one).
        desc: what is counted, the start of each line.
        unit: the unit of the items, as in ``20/40 case(s)``.
        initial: items already done before this run (counted, not timed).
        every: write a line after each ``every`` items (``None``: about :data:`LINES_PER_RUN` lines in a
            run; 0: no lines).
    """

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "case",
        initial: int = 0,
        every: int | None = None,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = self.initial = initial
        if every is None:
            every = max(1, -(-(total or 0) // LINES_PER_RUN))
        self.every = every
        self.start = time.monotonic()
        self.written = initial  # the count of the last line written (none yet)
        self.closed = False

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("LogProgress without an iterable counts by update()")
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LogProgress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; write a line when ``every`` of them have passed since the last one."""
        self.n += n
        if self.every and self.n - self.written >= self.every:
            self._write()

    def set_postfix_str(self, text: str) -> None:
        """Ignored: a bar's postfix names the item in progress, which a line written after it would misname."""

    def set_postfix(self, **values: object) -> None:
        """Ignored, as :meth:`set_postfix_str`."""

    def close(self) -> None:
        """Write the last line, if items were counted since the one before."""
        if not self.closed and self.every and self.n > self.written:
            self._write()
        self.closed = True

    def _write(self) -> None:
        elapsed = time.monotonic() - self.start
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{count} {self.unit}(s)", f"{tqdm.format_interval(elapsed)} elapsed"]
        done_here = self.n - self.initial
        if self.total is not None and done_here > 0 and self.n < self.total:
            left = elapsed / done_here * (self.total - self.n)
            parts.append(f"about {tqdm.format_interval(left)} left")
        prefix = f"{self.desc}: " if self.desc else ""
        print(prefix + ", ".join(parts), file=sys.stderr, flush=True)
        self.written = self.n


def write(message: str, *, file: TextIO | None = None) -> None:
    """Print ``message`` as a line of its own (on ``file``, default stdout), above a bar on a terminal."""
    tqdm.write(message, file=file)


def track(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "case",
    initial: int = 0,
    every: int | None = None,
    leave: bool = True,
    enabled: bool = True,
) -> tqdm | LogProgress[T]:
    """A progress display over ``iterable`` (or over ``total`` items counted with ``update``): a tqdm bar on
    a terminal (:func:`on_terminal`), else a :class:`LogProgress` that writes plain lines.

    Args:
        iterable, total, desc, unit, initial, every: as for :class:`LogProgress` (``every`` is for
            logs only; a bar redraws itself as tqdm does).
        leave: keep the finished bar on the terminal (as tqdm's ``leave``).
        enabled: ``False`` shows nothing, anywhere (e.g. on all but the first process of a
            distributed run).
    """
    if enabled and on_terminal():
        kwargs: dict[str, Any] = {"desc": desc or None, "unit": unit, "initial": initial, "leave": leave}
        return tqdm(iterable, total=total, dynamic_ncols=True, **kwargs)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, every=every if enabled else 0)
