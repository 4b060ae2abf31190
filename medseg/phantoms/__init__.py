"""Synthetic datasets for training and testing without downloads.

``medseg.phantoms.brats`` writes BraTS-layout brain MRI phantoms with gliomas (2021 and 2023 releases);
``medseg.phantoms.ct`` abdominal CT organ phantoms in MSD layout. Import the generator modules
directly; this package imports nothing heavy by itself.

A generator never replaces an existing file unless asked to (``overwrite=True``, ``--overwrite``): a
dataset folder may hold real cases under the same names (``BraTS2021_00000``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from medseg.errors import MedsegInputError

T = TypeVar("T")


def refuse_existing(targets: Iterable[Path], *, overwrite: bool) -> None:
    """Raise :class:`MedsegInputError` naming the first of ``targets`` (files or case folders) that
    exists, unless ``overwrite``."""
    if overwrite:
        return
    existing = next((t for t in targets if t.exists()), None)
    if existing is not None:
        raise MedsegInputError(
            "already exists; phantoms do not replace files (choose an empty folder, or --overwrite)", path=existing
        )


def generate_cases(make_case: Callable[[int], T], indices: Sequence[int], *, workers: int | None, what: str) -> list[T]:
    """``[make_case(i) for i in indices]`` in ``workers`` processes (default: all cores; 1: in this
    process), with a progress bar on a terminal.

    ``make_case`` must pickle (a module-level function, or a ``functools.partial`` of one). The
    processes are spawned, not forked: safe even when the caller has started threads (torch, BLAS).
    """
    workers = min(workers or os.cpu_count() or 1, len(indices))
    with tqdm(total=len(indices), desc=what, unit="case", disable=None, dynamic_ncols=True) as bar:
        if workers <= 1:
            results = []
            for index in indices:
                results.append(make_case(index))
                bar.update()
            return results
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(make_case, index) for index in indices]
            for _ in as_completed(futures):
                bar.update()
            return [future.result() for future in futures]
