"""Run one function over many items in worker processes, with a progress bar on a terminal (plain lines in a log)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

from medseg.errors import MedsegInputError
from medseg.progress import track

T = TypeVar("T")
R = TypeVar("R")


def map_in_processes(fn: Callable[[T], R], items: Sequence[T], *, workers: int | None, what: str) -> list[R]:
    """``[fn(item) for item in items]`` in ``workers`` processes (``None``: all cores; 1: in this
    process), with a progress bar labelled ``what`` on a terminal, plain lines in a log or a pipe
    (:func:`medseg.progress.track`).

    ``fn`` and the items must pickle (a module-level function, or a ``functools.partial`` of one). The
    processes are spawned, not forked: safe even when the caller has started threads (torch, BLAS).
    The first exception an item raises is raised here, and the items not yet started are cancelled.

    Raises:
        MedsegInputError: ``workers`` < 1.
    """
    if workers is not None and workers < 1:
        raise MedsegInputError(f"workers must be >= 1, got {workers}")
    workers = min(workers or os.cpu_count() or 1, len(items))
    with track(total=len(items), desc=what, unit="case") as bar:
        if workers <= 1:
            results = []
            for item in items:
                results.append(fn(item))
                bar.update()
            return results
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            return [future.result() for future in futures]
