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
* :meth:`SegmentationDataModule.check_splits`, at start-up (``train()`` with every split the
  run uses, the test split too with ``test=true``; ``evaluate()`` with the one it scores)
  and again in ``setup`` for any split not yet checked: every sample of each split read
  once (images decoded, masks counted, cached under ``cache_dir``: unreadable or truncated
  files, size mismatches, values outside the class set stop the run), the validation split
  equal to the training split, the training split's labels (no labelled pixel, a single
  class, binary 0/255 masks whose foreground would be ignored; classes that never appear
  warn, in any split), images of different sizes batched without a crop, a crop many times
  larger than the images (warning), images shared by two splits (warning), a test split
  equal to the validation (or training) split (warning).

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
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from segkit.data import checks
from segkit.data.augment import check_crop_size
from segkit.data.folder import FolderDataset
from segkit.data.io import DataError, DataWarning
from segkit.data.stats import build_split


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
        check_labels: read every sample of each split the run uses once (cached) in
            :meth:`check_splits` and stop on files and labels that cannot give a right
            result (see the module docstring); ``False`` leaves that to check_data.
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
        self._checked: set[str] = set()  # subsets check_splits has passed
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
                if self.check_labels:  # check_splits reads every sample, not a few
                    self.datasets[subset] = build_split(self.dataset, split, transform)
                else:
                    self.datasets[subset] = self.dataset(split=split, transform=transform)
            except DataError as error:
                raise DataError(f"data.{subset}_split={split!r}: {error}") from error
        return self.datasets[subset]

    def check_splits(self, subsets: Sequence[str]) -> None:
        """The start-up check of the data a run will use: build each of ``subsets``
        (``train``, ``val``, ``test``) and run :mod:`segkit.data.checks` on it.

        ``train()`` calls it with every split the run touches (the test split too with
        ``test=true``) and ``evaluate()`` with the one it scores, before a model or trainer
        is built; ``setup`` calls it again, which checks only what was not checked yet.
        With ``check_labels`` every sample of each split is read once (images decoded,
        masks counted: :func:`~segkit.data.stats.label_counts`, cached), so a file that
        ``python -m segkit.cli.check_data`` would report stops the run here, in its words.

        Raises:
            DataError: every problem found, in one message.
        """
        todo = [subset for subset in subsets if subset not in self._checked]
        if not todo:
            return
        self.prepare_data()
        if "train" in todo:
            split_problems, split_warnings = checks.split_name_problems(self.splits)
            checks.raise_problems(split_problems)
            self._warn(split_warnings)
        for subset in todo:
            self.build_dataset(subset)
        problems, found = checks.loader_findings(self, todo)
        counted = {self.splits[subset] for subset in self._checked}
        for subset in todo:
            if self.check_labels and self.splits[subset] not in counted:  # test = val: once
                counted.add(self.splits[subset])
                label_problems, label_warnings = checks.counted_split_findings(self, subset)
                problems += label_problems
                found += label_warnings
        if "train" in todo:
            found += checks.crop_findings(self)
        if "test" in todo:
            found += checks.test_split_findings(self)
        checks.raise_problems(problems)
        self._warn(found)
        self._checked.update(todo)

    def _warn(self, messages: Sequence[str]) -> None:
        """Each message as a :class:`DataWarning`, on rank 0 only."""
        if rank_zero_only.rank == 0:
            for message in messages:
                warnings.warn(message, DataWarning, stacklevel=3)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        splits = wanted.get(stage or "", ("train", "val", "test"))
        self.check_splits(splits)
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
