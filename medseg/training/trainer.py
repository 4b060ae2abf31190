"""Training: a small loop built by composition (data, network, loss, optimizer, schedule, validation).

``train(config)`` writes into ``config.train.run_dir``:

- ``last.pt`` after every epoch and ``best.pt`` when validation improves (atomic, self-describing,
  see :mod:`medseg.checkpoint`);
- ``metrics.csv`` (one row per epoch) and ``training_curve.png``.

``train(config, resume=True)`` continues exactly from ``last.pt``: epoch, weights, optimizer,
scheduler, AMP scaler, RNG states, best score and history. It first heals what a run stopped between
two writes (a crash, a full disk) left behind: a ``best.pt`` missing or older than the best epoch
``last.pt`` records (that epoch was the last one written, so ``last.pt`` is its checkpoint), and a
``metrics.csv`` and curve without the last epochs. Every epoch's data order and
augmentation are seeded from ``(config.seed, epoch, rank)``, so a resumed run draws the same
patches as an uninterrupted one. Under ``torchrun`` each process trains on its own share of the
samples (DDP); rank 0 validates and writes. A new run with ``train.init_weights`` starts from
another checkpoint's weights (fine-tuning) with a fresh optimizer and schedule.
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset
from monai.metrics import compute_dice
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medseg import __version__
from medseg.checkpoint import Checkpoint, load_checkpoint, load_weights, save_checkpoint, weights_mismatch
from medseg.config import Config
from medseg.data.manifest import (
    Manifest,
    ManifestCase,
    build_manifest,
    dataset_root,
    load_manifest,
    require_consistent,
)
from medseg.distributed import DistContext, init_distributed, shutdown_distributed
from medseg.errors import CheckpointError, ConfigError, MedsegInputError, user_errors_unwrapped
from medseg.inference import Windows
from medseg.inference.backends.base import autocast_dtype
from medseg.inference.quality import measure_training_cases
from medseg.io import read_geometry
from medseg.io.atomic import atomic_output
from medseg.keys import CASE, IMAGE, LABEL, LABELLED
from medseg.labels import LabelTable, get_label_table
from medseg.losses import WindowConsistency, build_loss
from medseg.networks import build_network, check_patch_size
from medseg.progress import track, write
from medseg.training.log import plot_curves, write_metrics_csv
from medseg.training.pseudo_labels import check_teacher, mean_volumes_ml, pseudo_labelled, write_pseudo_labels
from medseg.training.sampling import EpochLoader
from medseg.training.semi_supervised import Teacher, require_apart, unlabelled_cases
from medseg.transforms import training_pipeline, validation_pipeline


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    run_dir: Path
    best_score: float
    best_epoch: int
    epochs_run: int


def validate_config(config: Config) -> None:
    """Checks that need the network registry: arguments the network takes (built without memory, on
    the ``meta`` device), patch and window sizes it can take (:meth:`~medseg.inference.Windows.for_network`),
    and a patch that ``train.consistency_weight`` can take a smaller window of."""
    with torch.device("meta"):
        build_network(config.network.name, in_channels=1, out_channels=1, kwargs=config.network.kwargs)
    check_patch_size(config.network.name, config.transforms.patch_size, config.network.kwargs)
    divisor = Windows.for_network(config.inference, config.network.name, config.network.kwargs).divisor
    if config.train.consistency_weight and all(s < 2 * divisor for s in config.transforms.patch_size):
        raise ConfigError(
            f"train.consistency_weight needs transforms.patch_size to be at least {2 * divisor} voxels on some axis"
            f" (twice network {config.network.name!r}'s size divisor), got {config.transforms.patch_size}"
        )


def load_dataset_manifest(config: Config) -> tuple[Manifest, Path]:
    """The manifest named in the config, or one built from ``data.root`` with ``data.layout``; and the
    folder its paths start from (``data.root``, else the root a file-list manifest names)."""
    if config.data.manifest:
        manifest = load_manifest(config.data.manifest, num_folds=config.data.num_folds, seed=config.seed)
        return manifest, dataset_root(manifest, config.data.root)
    if config.data.root is None:
        raise ConfigError("data.root is null: give the dataset folder, or a data.manifest that names its root")
    root = Path(config.data.root)
    labels = None if config.data.labels == "auto" else _named_table(config)
    manifest = build_manifest(
        root, layout=config.data.layout, num_folds=config.data.num_folds, seed=config.seed, labels=labels
    )
    return manifest, root


def _named_table(config: Config) -> LabelTable:
    try:
        return get_label_table(config.data.labels)
    except KeyError as exc:
        raise ConfigError(f"data.labels: {exc.args[0]}") from None


def resolve_label_table(config: Config, manifest: Manifest) -> LabelTable:
    """``data.labels`` when set, else the manifest's table (e.g. from ``dataset.json``).

    Raises:
        ConfigError: an unknown table name, or a table lacking label values the dataset's table has.
    """
    if config.data.labels == "auto":
        return manifest.label_table
    table = _named_table(config)
    missing = sorted(set(manifest.label_table.labels) - set(table.labels))
    if missing:
        raise ConfigError(
            f"data.labels={table.name} has no label value(s) {missing} of the dataset's table "
            f"{manifest.label_table.name} {sorted(manifest.label_table.labels)}"
        )
    return table


def _items(cases: list[ManifestCase], root: Path, table: LabelTable | None = None) -> list[dict[str, Any]]:
    """Dataset items; with ``table`` (partially labelled class data), each holds which of the table's
    values, in output order, were annotated in its case (:data:`~medseg.keys.LABELLED`)."""
    items: list[dict[str, Any]] = []
    for c in cases:
        item: dict[str, Any] = {IMAGE: [str(root / p) for p in c.images], LABEL: str(root / c.label), CASE: c.id}
        if table is not None:
            annotated = c.annotated(table)
            item[LABELLED] = torch.tensor([v in annotated for v in sorted(table.labels)])
        items.append(item)
    return items


PATCH_PADDING_LIMIT = 64
"""How many times the largest training case's voxels (at the training spacing) a patch may hold: four times
its extent along each axis. Tiny test configs pad generously; a patch beyond this is a mistake (a missing
``transforms.spacing``, a typo), which would otherwise fail later as an opaque transform or memory error."""


def check_patch_fits(config: Config, cases: Sequence[ManifestCase], *, root: Path) -> None:
    """Refuse a ``transforms.patch_size`` that is mostly padding for every training case, before any case is
    read: more than :data:`PATCH_PADDING_LIMIT` times the voxels of the largest case at the training spacing
    (``transforms.spacing``, else each case's own; from the image headers). A patch somewhat larger than the
    cases, which holds each case whole, passes.

    Raises:
        ConfigError: naming ``transforms.patch_size``, its voxels and the largest case's.
    """
    patch = math.prod(config.transforms.patch_size)
    target = config.transforms.spacing
    largest = 0.0
    for case in cases:
        geometry = read_geometry(root / case.images[0])
        volume_mm3 = math.prod(geometry.shape) * math.prod(geometry.spacing)
        largest = max(largest, volume_mm3 / math.prod(target) if target else float(math.prod(geometry.shape)))
    if cases and patch > PATCH_PADDING_LIMIT * largest:
        raise ConfigError(
            f"transforms.patch_size {config.transforms.patch_size} holds {patch} voxels, more than"
            f" {PATCH_PADDING_LIMIT} times the largest training case ({round(largest)} voxels at the training"
            " spacing): nearly all of every patch would be padding; choose a smaller patch (medseg plan suggests"
            " one)"
        )


def partial_label_table(config: Config, manifest: Manifest, table: LabelTable) -> LabelTable | None:
    """``table`` when some case of ``manifest`` lacks annotations of some label, else ``None`` (every case
    is fully labelled).

    With it, each case carries which labels it annotates (:data:`~medseg.keys.LABELLED`): validation does
    not score a label where it was not annotated, and the loss merges it into background when
    ``loss.mask_unlabelled`` (else it is trained as background, as if the case were fully labelled).

    Raises:
        ConfigError: partially labelled cases with a region table and ``loss.mask_unlabelled`` (only class
            tables can merge a missing label into background).
    """
    partial = any(c.labelled is not None and c.annotated(table) != set(table.labels) for c in manifest.cases)
    if not partial:
        return None
    if table.kind != "classes":
        if config.loss.mask_unlabelled:
            raise ConfigError(
                f"the manifest has partially labelled cases, which need a class label table; {table.name} has"
                " regions (set loss.mask_unlabelled: false to train them as fully labelled)"
            )
        return None
    return table


def _draw_weights(labelled: int, pseudo_labelled: int, labelled_share: float | None) -> list[float] | None:
    """Sampling weights for ``labelled`` then ``pseudo_labelled`` training cases such that a draw is a labelled
    case with probability ``labelled_share``; ``None`` (every case alike) without pseudo-labelled cases or share."""
    if labelled_share is None or pseudo_labelled == 0:
        return None
    return [labelled_share / labelled] * labelled + [(1.0 - labelled_share) / pseudo_labelled] * pseudo_labelled


class _Trainer:
    """The state of one training run; :func:`train` is its public face."""

    def __init__(self, config: Config, ctx: DistContext) -> None:
        self.config = config
        self.ctx = ctx
        self.run_dir = Path(config.train.run_dir)
        manifest, root = load_dataset_manifest(config)
        self.table = resolve_label_table(config, manifest)
        manifest = dataclasses.replace(manifest, label_table=self.table)  # label maps are checked against it
        self.manifest = manifest
        train_cases, val_cases = manifest.split(config.data.fold)
        if not train_cases or not val_cases:
            raise MedsegInputError(
                f"fold {config.data.fold} leaves {len(train_cases)} training and {len(val_cases)} validation cases;"
                " need at least one of each",
                path=root,
            )
        require_consistent(manifest, root=root)
        self_training = config.semi_supervised.teacher is not None  # with unlabelled cases (the config checks)
        labelled = len(train_cases)
        if self_training:
            train_cases = train_cases + self._pseudo_labelled(root, train_cases, val_cases)
        check_patch_fits(config, train_cases, root=root)
        self.train_cases, self.root = train_cases, root
        self.training_fingerprint: dict[str, Any] | None = None  # measured once, on the main process
        # A single caching thread: MONAI's LoadImaged, which loaded cases before medseg's LoadImagesd, was
        # not thread-safe stacking several files under one key (with 2 threads a cached BraTS case now and
        # then kept 1 of its 4 channels); more threads have not been measured since.
        cache = {"cache_rate": config.data.cache_rate, "num_workers": 1, "progress": False}
        self.partial = partial_label_table(config, manifest, self.table)
        self.train_ds = CacheDataset(
            _items(train_cases, root, self.partial), training_pipeline(config.transforms, self.table), **cache
        )
        self.windows = Windows.for_network(config.inference, config.network.name, config.network.kwargs)
        self.val_ds = CacheDataset(
            _items(val_cases, root, self.partial), validation_pipeline(config.transforms, self.table), **cache
        )
        cfg = config.train
        self.epochs = EpochLoader(
            self.train_ds,
            iterations=cfg.iterations_per_epoch,
            batch_size=cfg.batch_size,
            ctx=ctx,
            seed=config.seed,
            num_workers=config.data.num_workers,
            weights=_draw_weights(labelled, len(train_cases) - labelled, config.semi_supervised.labelled_share),
        )
        self.model = build_network(
            config.network.name,
            in_channels=len(manifest.channels),
            out_channels=self.table.num_outputs,
            kwargs=config.network.kwargs,
        ).to(ctx.device)
        self.net: nn.Module = (
            DistributedDataParallel(self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
            if ctx.distributed
            else self.model
        )
        self.loss_fn = build_loss(config.loss, self.table).to(ctx.device)
        regions = self.table.kind == "regions"
        self.semi = self._teacher(root, val_cases) if config.semi_supervised.unlabelled and not self_training else None
        self.consistency = WindowConsistency(regions, self.windows.divisor) if cfg.consistency_weight else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = self._build_scheduler()
        self.amp_dtype = autocast_dtype(ctx.device, cfg.precision, cuda_amp=cfg.amp)
        # fp16 needs its gradients scaled; bf16 has fp32's exponent range and does not
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.epoch = 0
        self.best_score = -1.0
        self.best_epoch = 0
        self.history: list[dict[str, Any]] = []

    def _unlabelled(self, root: Path, val_cases: list[ManifestCase]) -> list[ManifestCase]:
        """The cases of ``semi_supervised.unlabelled``, none of them a validation case."""
        source = self.config.semi_supervised.unlabelled
        cases = unlabelled_cases(source, channels=self.manifest.channels, data_root=self.config.data.root)
        require_apart(cases, val_cases, root=root)
        return cases

    def _teacher(self, root: Path, val_cases: list[ManifestCase]) -> Teacher:
        """The teacher and unlabelled loader of ``semi_supervised`` (:mod:`~medseg.training.semi_supervised`)."""
        cases = self._unlabelled(root, val_cases)
        return Teacher(self.config, self.ctx, student=self.model, cases=cases, regions=self.table.kind == "regions")

    def _pseudo_labelled(
        self, root: Path, train_cases: list[ManifestCase], val_cases: list[ManifestCase]
    ) -> list[ManifestCase]:
        """The unlabelled cases with ``semi_supervised.teacher``'s label maps (:mod:`~medseg.training.pseudo_labels`),
        which the main process writes once under the run folder (with ``match_volumes``, at the mean volumes of
        the labelled ``train_cases``)."""
        semi = self.config.semi_supervised
        teacher = str(semi.teacher)
        check_teacher(teacher, table=self.table, channels=self.manifest.channels)
        cases = self._unlabelled(root, val_cases)
        if self.ctx.is_main:
            target = mean_volumes_ml(train_cases, root, self.table) if semi.match_volumes else None
            write_pseudo_labels(teacher, cases, self.run_dir, device=str(self.ctx.device), target_ml=target)
        self.ctx.barrier()
        return pseudo_labelled(cases, self.run_dir)

    @property
    def shipped(self) -> nn.Module:
        """The network that validation scores and checkpoints hold: the teacher in semi-supervised
        training, else the trained network itself."""
        return self.semi.teacher if self.semi is not None else self.model

    def _autocast(self) -> torch.autocast:
        """Mixed precision for the forward passes: fp16 on CUDA with ``train.amp``, bf16 on a CPU with
        native bf16 under ``train.precision: bf16``; plain fp32 otherwise."""
        dtype = self.amp_dtype or torch.float32
        return torch.autocast(self.ctx.device.type, dtype=dtype, enabled=self.amp_dtype is not None)

    def _build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        cfg = self.config.train
        total = cfg.epochs * cfg.iterations_per_epoch
        warmup = min(cfg.warmup_epochs * cfg.iterations_per_epoch, total - 1)
        if cfg.schedule == "cosine":
            main: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=max(1, total - warmup), eta_min=cfg.lr * 1e-3
            )
        else:
            main = torch.optim.lr_scheduler.PolynomialLR(self.optimizer, total_iters=max(1, total - warmup), power=0.9)
        if warmup <= 0:
            return main
        ramp = torch.optim.lr_scheduler.LinearLR(self.optimizer, start_factor=0.01, total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(self.optimizer, [ramp, main], milestones=[warmup])

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        training = {
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            **({} if self.semi is None else {"student": _cpu_state(self.model)}),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_state_to_list(np.random.get_state()),
                "python": random.getstate(),
            },
        }
        return Checkpoint(
            network={"name": self.config.network.name, "kwargs": self.config.network.kwargs},
            channels=list(self.manifest.channels),
            label_table=self.table,
            config=self.config.to_dict(),
            state_dict=_cpu_state(self.shipped),
            training=training,
            medseg_version=__version__,
            manifest=self.manifest.to_dict(),
            training_fingerprint=self.training_fingerprint,
        )

    def load_weights(self, ckpt: Checkpoint, path: str | Path) -> None:
        """Copy ``ckpt``'s weights into the model, or say in one line why they do not fit it."""
        if ckpt.network["name"] != self.config.network.name:
            raise CheckpointError(
                f"was trained with network {ckpt.network['name']!r}, the config asks for {self.config.network.name!r}",
                path=path,
            )
        mismatch = weights_mismatch(self.model, ckpt.state_dict)
        if mismatch is not None:
            theirs = _describe(ckpt.network["kwargs"], len(ckpt.channels), ckpt.label_table.num_outputs)
            ours = _describe(self.config.network.kwargs, len(self.manifest.channels), self.table.num_outputs)
            raise CheckpointError(
                f"its {self.config.network.name} ({theirs}) does not fit this run's ({ours}): {mismatch}", path=path
            )
        load_weights(self.model, ckpt.state_dict, path=path)
        if self.semi is not None:  # a new run's teacher starts as its student
            self.semi.teacher.load_state_dict(self.model.state_dict())

    def restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if ckpt.training is None:
            raise CheckpointError("holds no training state to resume from", path=path)
        changed = _changed_setting(ckpt.config, self.config.to_dict())
        if changed is not None:
            key, saved, now = changed
            raise CheckpointError(
                f"--resume: {key} is {now!r} here but was {saved!r} for this run, and a resumed run keeps its"
                f" settings; to change them, start a new run with train.init_weights={path}",
                path=path,
            )
        self.load_weights(ckpt, path)  # the teacher's weights, when semi-supervised
        state = ckpt.training
        if self.semi is not None:
            if "student" not in state:
                raise CheckpointError("holds no student network to resume semi-supervised training from", path=path)
            load_weights(self.model, state["student"], path=path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(_numpy_state_from_list(state["rng"]["numpy"]))
        random.setstate(_as_tuple(state["rng"]["python"]))
        self.epoch = int(state["epoch"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.history = list(state["history"])
        self.training_fingerprint = ckpt.training_fingerprint

    # --- the loop ----------------------------------------------------------------------------
    def _seed_epoch(self, epoch: int) -> None:
        """Make epoch ``epoch``'s sampling, augmentation and dropout a function of (seed, epoch, rank)."""
        seed = (self.config.seed * 1_000_003 + epoch * 7919 + self.ctx.rank) % 2**31
        self.epochs.seed_epoch(epoch, seed)
        torch.manual_seed(seed + 3)
        if self.semi is not None:
            self.semi.seed_epoch(epoch, seed + 11)  # apart from the labelled draw

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of training (epoch ``epoch``, from 0): its mean loss (``train_loss``) and, in
        semi-supervised training, the mean unweighted ``consistency_loss`` and the last step's
        ``consistency_weight``.

        Raises:
            ConfigError: a non-finite loss on any process; every process stops at the same epoch.
        """
        self._seed_epoch(epoch)
        self.loss_fn.set_epoch(epoch)  # a scheduled boundary term's weight
        self.net.train()
        total, steps, consistency_total = 0.0, 0, 0.0
        unlabelled = self.semi.batches() if self.semi is not None else None
        non_finite: list[tuple[int, float]] = []  # (step, loss) of this process's first non-finite loss
        bar = track(
            self.epochs.loader,
            desc=f"epoch {epoch + 1}/{self.config.train.epochs}",
            unit="it",
            leave=False,
            every=0,  # off a terminal, the epoch's summary line (_report) is its progress
            enabled=self.ctx.is_main,
        )
        for batch in bar:
            image = batch[IMAGE].to(self.ctx.device)
            target = batch[LABEL].to(self.ctx.device)
            labelled = batch.get(LABELLED) if self.config.loss.mask_unlabelled else None
            # drawn outside autocast, which its augmentation (run here when data.num_workers is 0) must not see
            extra = next(unlabelled).to(self.ctx.device) if unlabelled is not None else None
            view = self.semi.student_view(extra) if extra is not None and self.semi is not None else None
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                if view is not None:  # one forward pass over the labelled patches and the student's view
                    outputs = self.net(torch.cat([image, view]))
                    logits = outputs[: len(image)]
                else:
                    logits = self.net(image)
                loss = self.loss_fn(logits.float(), target, labelled)
                if extra is not None:
                    agreement = self.semi.consistency(outputs[len(image) :], extra)
                    consistency_total += float(agreement.detach())
                    loss = loss + self.semi.weight(epoch, steps) * agreement
                if self.consistency is not None:
                    loss = loss + self.config.train.consistency_weight * self.consistency(self.net, image, logits)
            self.scaler.scale(loss).backward()
            if self.config.train.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.semi is not None:
                self.semi.update(self.model, epoch * self.config.train.iterations_per_epoch + steps + 1)
            value = float(loss.detach())
            total += value
            steps += 1
            if not math.isfinite(value):
                non_finite.append((steps, value))
                if not self.ctx.distributed:
                    break  # other processes would wait for this one's gradients: they stop at the epoch's end
            bar.set_postfix(loss=f"{total / steps:.4f}")
        non_finite = self.ctx.gather(non_finite)
        if non_finite:
            step, value = min(non_finite)
            raise ConfigError(
                f"training loss is {value} at epoch {epoch + 1} step {step}: check the intensity settings"
                " (transforms.hu_window, intensity_offset) and train.lr"
            )
        result = {"train_loss": total / max(steps, 1)}
        if self.semi is not None:
            result["consistency_loss"] = consistency_total / max(steps, 1)
            result["consistency_weight"] = self.semi.weight(epoch, max(steps - 1, 0))
        return result

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean Dice per output over whole validation cases, windowed as the Predictor does
        (:class:`~medseg.inference.Windows`; the crop is training's own, ``transforms.crop_foreground``).

        Under DDP each process scores every ``world_size``-th case and the per-case scores are
        gathered, so every process returns the same numbers. Empty masks follow BraTS: both empty
        scores 1, one empty scores 0. A label not annotated in a case is not scored there; its mean is
        over the cases that annotate it.
        """
        model = self.shipped
        model.eval()
        inf = self.config.inference
        regions = self.table.kind == "regions"
        per_case: list[list[float]] = []
        for index in range(self.ctx.rank, len(self.val_ds), self.ctx.world_size):
            item = self.val_ds[index]
            image = item[IMAGE].unsqueeze(0).to(self.ctx.device)
            target = item[LABEL].unsqueeze(0).to(self.ctx.device)
            with self._autocast():
                logits = self.windows(image, model)
            logits = logits.float()
            if regions:
                pred = (torch.sigmoid(logits) > inf.threshold).float()
            else:
                n = self.table.num_outputs
                pred = nn.functional.one_hot(logits.argmax(1), n).permute(0, 4, 1, 2, 3).float()
                target = nn.functional.one_hot(target[:, 0].long(), n).permute(0, 4, 1, 2, 3).float()
            dice = compute_dice(pred, target, include_background=regions, ignore_empty=False)[0].cpu()
            if LABELLED in item:  # class tables: outputs 1.. are the foreground labels
                dice = torch.where(item[LABELLED][1:], dice, torch.nan)
            per_case.append(dice.tolist())
        per_case = self.ctx.gather(per_case)
        per_output = np.nanmean(np.asarray(per_case, dtype=float), axis=0)
        names = tuple(self.table.output_sets())
        scores = {f"val_{name}_dice": float(v) for name, v in zip(names, per_output, strict=True)}
        scores["val_mean_dice"] = float(np.mean(per_output))
        return scores

    def run(self, *, resume: bool) -> TrainResult:
        cfg = self.config.train
        last, best = self.run_dir / "last.pt", self.run_dir / "best.pt"
        if resume:
            if not last.is_file():
                raise CheckpointError("--resume: no checkpoint to resume from", path=last)
            self.restore(last)
            self._heal_best(last, best)
            if self.ctx.is_main:
                self._write_history()
        elif last.exists():
            raise CheckpointError(
                "run folder already holds a checkpoint: use --resume, or another train.run_dir", path=last
            )
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.training_fingerprint is None:  # for the quality flags of medseg predict
                self.training_fingerprint = measure_training_cases(
                    self.train_cases,
                    root=self.root,
                    table=self.table,
                    channels=self.manifest.channels,
                    transforms=self.config.transforms,
                ).to_dict()
        started = time.monotonic()
        for epoch in range(self.epoch, cfg.epochs):
            tick = time.monotonic()
            losses = self.train_epoch(epoch)
            self.epoch = epoch + 1
            row: dict[str, Any] = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"], **losses}
            out_of_time = cfg.max_minutes is not None and (time.monotonic() - started) / 60 >= cfg.max_minutes
            out_of_time = any(self.ctx.gather([out_of_time]))  # every process must stop at the same epoch
            if self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs or out_of_time:
                row.update(self.validate())
                if row["val_mean_dice"] > self.best_score:
                    self.best_score, self.best_epoch = row["val_mean_dice"], self.epoch
            row["seconds"] = round(time.monotonic() - tick, 2)
            self.history.append(row)
            if self.ctx.is_main:
                self._save(last, best, improved=self.best_epoch == self.epoch)
                self._report(row)
            self.ctx.barrier()
            if out_of_time:
                print(f"stopping after epoch {self.epoch}: train.max_minutes={cfg.max_minutes} reached")
                break
        return TrainResult(self.run_dir, self.best_score, self.best_epoch, self.epoch)

    def _save(self, last: Path, best: Path, *, improved: bool) -> None:
        ckpt = self.checkpoint()
        save_checkpoint(ckpt, last)
        if improved:
            save_checkpoint(ckpt, best)
        self._write_history()

    def _write_history(self) -> None:
        write_metrics_csv(self.history, self.run_dir / "metrics.csv")
        plot_curves(self.history, self.run_dir / "training_curve.png", region_names=tuple(self.table.output_sets()))

    def _heal_best(self, last: Path, best: Path) -> None:
        """Make ``best`` the checkpoint of the best epoch that ``last`` records, when a run stopped between
        writing the two (a crash, a full disk) left it missing or older: that epoch is then ``last``'s own.

        Raises:
            CheckpointError: ``best`` is not that epoch's checkpoint, and ``last`` is of a later epoch: the
                best weights are in no file.
        """
        if self.best_epoch == 0 or _saved_epoch(best) == self.best_epoch:
            return
        if self.best_epoch != self.epoch:
            raise CheckpointError(
                f"is not the checkpoint of epoch {self.best_epoch}, the best that {last.name} records, and {last.name}"
                f" is of epoch {self.epoch}: the best weights are in no file; put that {best.name} back, or start a"
                f" new run with train.init_weights={last}",
                path=best,
            )
        if self.ctx.is_main:
            with atomic_output(best) as tmp:
                shutil.copyfile(last, tmp)
            note = f"{best.name} restored from {last.name} (epoch {self.epoch}, the best): the run stopped between them"
            print(f"medseg: note: {note}", file=sys.stderr)

    def _report(self, row: dict[str, Any]) -> None:
        parts = [f"epoch {row['epoch']}/{self.config.train.epochs}", f"loss {row['train_loss']:.4f}"]
        if "val_mean_dice" in row:
            dice = " ".join(f"{n} {row[f'val_{n}_dice']:.3f}" for n in self.table.output_sets())
            parts.append(f"val Dice {row['val_mean_dice']:.3f} ({dice})")
        parts.append(f"{row['seconds']:.0f}s")
        write(" | ".join(parts))


def train(config: Config, *, resume: bool = False, device: str = "auto") -> TrainResult:
    """Train the configured network; see the module docstring for what is written where.

    Raises:
        ConfigError: a patch/window size the network cannot take.
        MedsegInputError: missing or inconsistent dataset files (one line naming the file).
        CheckpointError: ``resume`` without a checkpoint, a new run over an existing one, or
            ``train.init_weights`` missing or of another network shape, channel count or label table.
    """
    validate_config(config)
    init_weights = None if resume else config.train.init_weights  # a resumed run has its own weights
    init = None if init_weights is None else load_checkpoint(init_weights, training=False)  # before any caching
    ctx = init_distributed(device)
    _seed_all(config.seed)
    try:
        with user_errors_unwrapped():
            trainer = _Trainer(config, ctx)
            if init is not None:
                trainer.load_weights(init, str(init_weights))
            return trainer.run(resume=resume)
    finally:
        shutdown_distributed()


# settings that change how a run executes, not what it computes: a resumed run may take new values
RESUME_MAY_CHANGE = frozenset({"data.num_workers", "data.cache_rate", "train.max_minutes"})


# settings that name a file or folder: a resumed run may write the same one another way (relative, absolute)
PATH_SETTINGS = frozenset(
    {
        "data.root",
        "data.manifest",
        "train.run_dir",
        "train.init_weights",
        "semi_supervised.unlabelled",
        "semi_supervised.teacher",
    }
)


def _saved_epoch(path: Path) -> int | None:
    """The epoch of the training checkpoint at ``path``; ``None`` when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        training = load_checkpoint(path).training
    except CheckpointError:
        return None
    return None if training is None else int(training["epoch"])


def _same_path(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are paths to the same place once resolved (relative ones from the working
    directory, symbolic links followed); ``None`` only matches ``None``."""
    if a is None or b is None:
        return a is b
    return Path(a).resolve() == Path(b).resolve()


def _changed_setting(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted config key (outside :data:`RESUME_MAY_CHANGE`) whose value differs between a
    checkpoint's config and this run's, with both values; keys one side lacks (another medseg
    version) are not compared, and paths (:data:`PATH_SETTINGS`) are compared resolved."""
    for key in (k for k in now if k in saved):
        name = prefix + key
        if isinstance(now[key], dict) and isinstance(saved[key], dict):
            changed = _changed_setting(saved[key], now[key], name + ".")
            if changed is not None:
                return changed
        elif name in PATH_SETTINGS and _same_path(saved[key], now[key]):
            continue
        elif now[key] != saved[key] and name not in RESUME_MAY_CHANGE:
            return name, saved[key], now[key]
    return None


def _describe(network_kwargs: dict[str, Any], channels: int, outputs: int) -> str:
    return f"{channels} input channels, {outputs} outputs, arguments {network_kwargs}"


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _numpy_state_to_list(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_list(state: list) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` needs tuples where a checkpoint round trip may give lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
