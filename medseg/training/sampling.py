"""Resumable epochs: a dataset drawn at random, a fixed number of batches an epoch, in an order and with an
augmentation that are a function of one seed per epoch (so that a resumed run draws what an uninterrupted
one would)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.data import DataLoader, Dataset, DistributedWeightedRandomSampler
from monai.data.utils import set_rnd
from torch import Generator

from medseg.distributed import DistContext


class EpochLoader:
    """``iterations`` batches of ``batch_size`` items of ``dataset`` an epoch on each rank, drawn with replacement
    (MONAI's ``DistributedWeightedRandomSampler``; an item's chance is in proportion to its entry of
    ``weights``, all equal when ``None``), through a ``DataLoader`` with ``num_workers`` workers.

    Attributes:
        loader: the ``DataLoader`` to iterate over, once :meth:`seed_epoch` seeded the epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        iterations: int,
        batch_size: int,
        ctx: DistContext,
        seed: int,
        num_workers: int,
        weights: Sequence[float] | None = None,
    ) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.sampler_generator = Generator()
        self.sampler = DistributedWeightedRandomSampler(
            dataset,
            weights=[1.0] * len(dataset) if weights is None else list(weights),
            num_samples_per_rank=iterations * batch_size,
            generator=self.sampler_generator,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            seed=seed,
        )
        self.loader_generator = Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            generator=self.loader_generator,
            persistent_workers=False,
        )

    def seed_epoch(self, epoch: int, seed: int) -> None:
        """Draw epoch ``epoch`` from ``seed``: the sampler's order from ``seed``, the workers' from ``seed + 1``
        and, without workers, the dataset's random transforms from ``seed + 2``."""
        self.sampler.set_epoch(epoch)
        self.sampler_generator.manual_seed(seed)
        self.loader_generator.manual_seed(seed + 1)
        if self.num_workers == 0:
            set_rnd(self.dataset, seed + 2)
