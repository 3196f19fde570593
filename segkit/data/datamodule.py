"""One LightningDataModule for every semantic segmentation dataset.

The dataset class is a config choice: ``dataset`` is a partial (``_partial_: true``) that is
called as ``dataset(split=..., transform=...)`` for each split, so any dataset class with
those two arguments plugs in (``FolderDataset``, Cityscapes, VOC, ...). Class names, the
ignore value and the normalisation live here once and the rest of the config interpolates
them (``${data.num_classes}``).

Under DDP, validation and test loaders use :class:`UnpaddedDistributedSampler`: every image
is seen by exactly one process, so the summed confusion matrix (and every score) is the
same for any number of processes. Lightning's default ``DistributedSampler`` would pad the
last shard with repeated images, counting their pixels twice.

Random augmentation is reproducible: albumentations transforms keep their own generator,
which ``seed_everything`` does not reach, so each loader seeds its transform from torch's
global generator (fixed by ``seed``) and each worker process reseeds it from its own torch
seed (different per worker and per epoch). ``seed=<n> trainer.deterministic=true`` then
gives bit-identical runs on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class UnpaddedDistributedSampler(DistributedSampler):
    """Shard ``range(len(dataset))`` over processes without padding or shuffling.

    Rank ``r`` of ``R`` gets indices ``r, r + R, r + 2R, ...``, so shards differ in length
    by at most one and their union is every index exactly once. Only for evaluation: the
    ranks run different numbers of steps, which DDP tolerates when no gradients are
    synchronised. A ``DistributedSampler`` subclass, so Lightning does not replace it.

    Args:
        dataset: the dataset to shard (only its length is used).
        num_replicas: number of processes ``R`` (default: the process group's size).
        rank: this process's rank ``r`` (default: from the process group).
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = list(range(self.rank, len(dataset), self.num_replicas))
        self.num_samples = len(self.indices)
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples


_RANK_STRIDE = 1_000_003  # keeps the streams of DDP ranks apart (same torch seed per rank)


def _seed_transform(transform: Any, seed: int) -> None:
    """Seed an albumentations transform's own generator (others are left alone)."""
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def _seed_worker_transform(transform: Any, rank: int, worker_id: int) -> None:
    """``worker_init_fn``: forked workers would otherwise share one augmentation stream."""
    _seed_transform(transform, (torch.initial_seed() + _RANK_STRIDE * rank) % 2**32)


class SegmentationDataModule(L.LightningDataModule):
    """Train/val/test datasets and loaders built from config.

    Args:
        dataset: callable ``(split, transform) -> Dataset`` (a Hydra partial).
        num_classes: number of classes ``C``.
        class_names: ``C`` names, in class-index order.
        ignore_index: label value excluded from losses and metrics.
        train_transform: albumentations transform for training (augmentation).
        eval_transform: albumentations transform for val/test (usually none or a resize).
        mean: normalisation mean on the 0-1 scale (the dataset config passes it on).
        std: normalisation std on the 0-1 scale.
        palette: optional ``C`` RGB triples for visualisation.
        prepare: optional callable run once before the datasets are built (rank 0 only),
            e.g. generating the shapes data or checking a download.
        train_split, val_split, test_split: split names passed to ``dataset``.
        batch_size: training batch size per process.
        eval_batch_size: val/test batch size (defaults to ``batch_size``).
        num_workers, pin_memory, persistent_workers: as in ``DataLoader``.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        num_classes: int,
        class_names: Sequence[str],
        ignore_index: int = 255,
        train_transform: Callable[..., dict[str, Any]] | None = None,
        eval_transform: Callable[..., dict[str, Any]] | None = None,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        palette: Sequence[Sequence[int]] | None = None,
        prepare: Callable[[], Any] | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ValueError(
                f"data.class_names has {len(class_names)} names but data.num_classes is "
                f"{num_classes}; give one name per class."
            )
        if palette is not None and len(palette) != num_classes:
            raise ValueError(
                f"data.palette has {len(palette)} colours but data.num_classes is {num_classes}."
            )
        self.dataset = dataset
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.mean, self.std = tuple(mean), tuple(std)
        self.palette = None if palette is None else [tuple(c) for c in palette]
        self.prepare = prepare
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.datasets: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        if self.prepare is not None:
            self.prepare()

    def build_dataset(self, stage: str) -> Dataset:
        """The dataset of ``stage`` (``train``, ``val`` or ``test``), built once."""
        if stage not in self.datasets:
            transform = self.train_transform if stage == "train" else self.eval_transform
            self.datasets[stage] = self.dataset(split=self.splits[stage], transform=transform)
        return self.datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for split in wanted.get(stage or "", ("train", "val", "test")):
            self.build_dataset(split)

    def _loader(self, stage: str) -> DataLoader:
        train = stage == "train"
        dataset = self.build_dataset(stage)
        sampler = None
        if not train and dist.is_available() and dist.is_initialized():
            sampler = UnpaddedDistributedSampler(dataset)  # each pixel counted once
        transform = self.train_transform if train else self.eval_transform
        rank = self.trainer.global_rank if self.trainer is not None else 0
        draw = int(torch.randint(2**31 - 1, ()).item())  # fixed by seed_everything
        _seed_transform(transform, (draw + _RANK_STRIDE * rank) % 2**32)
        worker_init = (
            partial(_seed_worker_transform, transform, rank) if transform is not None else None
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=sampler,
            drop_last=train,  # a batch of 1 breaks BatchNorm in train mode
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            worker_init_fn=worker_init,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
