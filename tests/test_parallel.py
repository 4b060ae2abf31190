"""map_in_processes: results in item order, in this process or in spawned ones; errors surface."""

from __future__ import annotations

import pytest

from medseg.errors import MedsegInputError
from medseg.parallel import map_in_processes


def _square_or_fail(n: int) -> int:
    if n < 0:
        raise MedsegInputError(f"negative item {n}")
    return n * n


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_in_item_order(workers: int) -> None:
    assert map_in_processes(_square_or_fail, [3, 1, 2, 0], workers=workers, what="t") == [9, 1, 4, 0]


@pytest.mark.parametrize("workers", [1, 2])
def test_an_item_error_is_raised_here(workers: int) -> None:
    with pytest.raises(MedsegInputError, match="negative item -1"):
        map_in_processes(_square_or_fail, [1, -1, 2], workers=workers, what="t")


@pytest.mark.parametrize("workers", [0, -2])
def test_fewer_than_one_worker_is_refused(workers: int) -> None:
    with pytest.raises(MedsegInputError, match=f"workers must be >= 1, got {workers}"):
        map_in_processes(_square_or_fail, [1], workers=workers, what="t")
