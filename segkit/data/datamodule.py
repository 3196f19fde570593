"""One LightningDataModule for every segmentation dataset, semantic and instance.

The dataset class is a config choice: ``dataset`` is a partial (``_partial_: true``) that is
called as ``dataset(split=..., transform=...)`` for each split, so any dataset class with
those two arguments plugs in (``FolderDataset``, Cityscapes, VOC, ...). Class names, the
ignore value and the normalisation live here once and the rest of the config interpolates
them (``${data.num_classes}``). Instance data differs only in how a batch is put together
(:attr:`SegmentationDataModule.collate`, set by
:class:`~segkit.data.instances.InstanceDataModule`); every loader is built by one method.

Settings and data that cannot be right stop before anything is trained, with the key or file
and the fix; data that works but looks wrong gives a :class:`~segkit.data.io.DataWarning`
(:mod:`segkit.data.checks`, shared with ``python -m segkit.cli.check_data``):

* construction: ``ignore_index`` equal to a class, ``mean``/``std`` on the 0-255 scale or
  not one value per input channel (``in_channels``), a required dataset argument left unset
  (``data.dataset.root``);
* ``setup("fit")``: the validation split equal to the training split, the training split's
  labels (every mask counted once, cached under ``cache_dir``: no labelled pixel, a single
  class, binary 0/255 masks whose foreground would be ignored; classes that never appear
  warn), images of different sizes batched without a crop, a crop many times larger than the
  images (warning), images shared by the training and validation splits (warning);
* ``setup("test")``: a test split equal to the validation (or training) split (warning).

After the checks, ``setup`` builds or opens each split's decoded cache where the dataset has
one switched on (``data.dataset.decoded_cache``, :meth:`FolderDataset.open_decoded_cache
<segkit.data.folder.FolderDataset.open_decoded_cache>`), so the one-time build happens at
start-up and loader workers inherit an opened cache.

Under DDP, validation and test loaders use :class:`UnpaddedDistributedSampler`: every image
is seen by exactly one process, so the summed confusion matrix (and every score, COCO AP
included) is the same for any number of processes. Lightning's default
``DistributedSampler`` would pad the last shard with repeated images, counting them twice.

Random augmentation is reproducible: albumentations transforms keep their own generator,
which ``seed_everything`` does not reach, so each loader seeds its transform from torch's
global generator (fixed by ``seed``) and each worker process reseeds it from its own torch
seed (different per worker and per epoch). ``seed=<n> trainer.deterministic=true`` then
gives bit-identical runs on CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from segkit.data import checks
from segkit.data.augment import check_crop_size
from segkit.data.folder import FolderDataset
from segkit.data.io import DataError, DataWarning


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
        ignore_index: label value excluded from losses and metrics; not a class
            (outside ``0..C-1``).
        train_transform: albumentations transform for training (augmentation).
        eval_transform: albumentations transform for val/test (usually none or a resize).
        crop_size: ``[H, W]`` of the training crop, or ``None`` (no crop); only checked
            here, the train transforms read it (``${data.crop_size}``: the data config's
            recipe and the ``augment`` presets, :mod:`segkit.data.augment`).
        in_channels: channels of the images the model gets: 3 (RGB) or 1 (greyscale, the
            RGB image converted after the transform); the model configs read it
            (``in_channels: ${data.in_channels}``). ``mean`` and ``std`` give one value per
            channel, which is what the datasets go by (:func:`~segkit.data.io.image_tensor`).
        mean: normalisation mean on the 0-1 scale; only checked here, the dataset config
            passes it on to the dataset (``dataset.mean: ${data.mean}``).
        std: normalisation std on the 0-1 scale, likewise.
        palette: optional ``C`` RGB triples for pictures; only checked here (predict.py and
            the published sample grids read it from the config).
        prepare: optional callable run once before the datasets are built (rank 0 only),
            e.g. generating the shapes data or checking a download.
        train_split, val_split, test_split: split names passed to ``dataset``.
        batch_size: training batch size per process.
        eval_batch_size: val/test batch size (defaults to ``batch_size``).
        num_workers, pin_memory, persistent_workers: as in ``DataLoader``.
        check_labels: count every label of the training split in ``setup("fit")`` and stop
            on labels a model cannot learn from (see the module docstring).
        cache_dir: folder for the cached label counts (:func:`segkit.data.stats.label_counts`;
            ``None``: counted on every start).

    Attributes:
        counted_labels: ``{subset: (cache key, SplitStats)}`` of the splits
            :func:`~segkit.data.stats.label_counts` has counted, so a run counts each once.
    """

    collate: ClassVar[Callable[[list[Any]], Any] | None] = None  # DataLoader default

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        num_classes: int,
        class_names: Sequence[str],
        ignore_index: int = 255,
        train_transform: Callable[..., dict[str, Any]] | None = None,
        eval_transform: Callable[..., dict[str, Any]] | None = None,
        crop_size: Sequence[int] | None = None,
        in_channels: int = 3,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        palette: Sequence[Sequence[int]] | None = None,
        prepare: Callable[[], Any] | None = None,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        check_labels: bool = True,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        checks.check_config(
            dataset, num_classes, class_names, ignore_index, mean, std, palette, in_channels
        )
        check_crop_size(crop_size)
        self.dataset = dataset
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.crop_size = None if crop_size is None else list(crop_size)
        self.in_channels = in_channels
        self.prepare = prepare
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.check_labels = check_labels
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.datasets: dict[str, Dataset] = {}
        self.counted_labels: dict[str, tuple[dict[str, Any], Any]] = {}
        self._prepared = False

    def prepare_data(self) -> None:
        if self.prepare is not None and not self._prepared:
            self.prepare()
        self._prepared = True  # once per process, however many callers ask

    def build_dataset(self, subset: str) -> Dataset:
        """The dataset of ``subset`` (``train``, ``val`` or ``test``), built once.

        Raises:
            DataError: the dataset's own error, prefixed with the split key
                (``data.train_split='train': ...``).
        """
        if subset not in self.datasets:
            transform = self.train_transform if subset == "train" else self.eval_transform
            split = self.splits[subset]
            try:
                self.datasets[subset] = self.dataset(split=split, transform=transform)
            except DataError as error:
                raise DataError(f"data.{subset}_split={split!r}: {error}") from error
        return self.datasets[subset]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        splits = wanted.get(stage or "", ("train", "val", "test"))
        if "train" in splits:
            split_problems, split_warnings = checks.split_name_problems(self.splits)
            checks.raise_problems(split_problems)
            for message in split_warnings:
                warnings.warn(message, DataWarning, stacklevel=2)
        for split in splits:
            self.build_dataset(split)
        problems, found = checks.loader_findings(self, splits)
        if "train" in splits:
            if self.check_labels:
                label_problems, label_warnings = checks.training_label_findings(self)
                problems += label_problems
                found += label_warnings
            found += checks.crop_findings(self)
        if "test" in splits:
            found += checks.test_split_findings(self)
        checks.raise_problems(problems)
        if self.trainer is None or self.trainer.global_rank == 0:
            for message in found:
                warnings.warn(message, DataWarning, stacklevel=2)
        for split in splits:
            self._open_decoded_cache(split)

    def _open_decoded_cache(self, subset: str) -> None:
        """Build or open the decoded cache of ``subset``'s dataset if it has one switched on.

        Done in ``setup``, after the checks, so a build runs once at start-up in the main
        process (DDP ranks queue on its lock) rather than in a loader worker.

        Raises:
            DataError: the build's error, prefixed with the split key.
        """
        dataset = self.datasets[subset]
        if isinstance(dataset, FolderDataset) and dataset.decoded_cache:
            try:
                dataset.open_decoded_cache()
            except DataError as error:
                raise DataError(f"data.{subset}_split={self.splits[subset]!r}: {error}") from error

    def _world(self) -> tuple[int, int]:
        """``(number of processes, this rank)`` of the running trainer (or process group)."""
        if self.trainer is not None:
            return int(self.trainer.world_size), int(self.trainer.global_rank)
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def _loader(self, subset: str) -> DataLoader:
        """The one loader of every subset and data kind: sampler, seeding, collate."""
        train = subset == "train"
        dataset = self.build_dataset(subset)
        world, rank = self._world()
        sampler = None
        if not train and world > 1:  # each image scored by one process, once
            sampler = UnpaddedDistributedSampler(dataset, num_replicas=world, rank=rank)
        transform = self.train_transform if train else self.eval_transform
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
            collate_fn=type(self).collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
