"""Label statistics of a split: pixels and images per class, counted once per split.

* :class:`SplitStats` holds one split's counts; :func:`scan_split` reads every sample of a
  dataset into it (the masks as the dataset maps them, no transform) and lists the files
  with problems in a :class:`Report`.
* :func:`count_training_split` counts a data module's training split and caches the counts
  as a small JSON file, recomputed when the split's label files, their sizes or mtimes, the
  dataset class, its label mapping, ``num_classes`` or ``ignore_index`` change.

Three readers share these counts: the start-up checks (:mod:`segkit.data.checks`), the
computed class weights (:mod:`segkit.tasks.class_weights`) and ``python -m
segkit.cli.check_data``, which also decodes every image and reads every validation and test
mask.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from segkit.data.folder import DataError, InspectableDataset

CACHE_VERSION = 1  # bump when the counting changes, so old cache files are not read


class Progress(Protocol):
    """What :func:`scan_split` reports to: one call per sample read (check_data's
    ``ScanProgress``)."""

    def advance(self) -> None: ...


@dataclass
class SplitStats:
    """What one split holds: images, pixels per class, and which values sit where.

    ``pixels[c]`` counts the pixels of class ``c``, ``images_with[c]`` the images holding
    it, and ``image_pixels[c]`` the labelled pixels (classes ``0..C-1``, not ignored) of
    those images: the denominator of median-frequency balancing
    (:mod:`segkit.tasks.class_weights`). All are int64 ``[C]``.
    """

    name: str
    num_classes: int
    images: int = 0
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [C]
    images_with: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [C]
    image_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [C]
    ignored: int = 0
    bad_values: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    raw_values: set[int] = field(default_factory=set)
    label_ids_with_255: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # per-file facts (EXIF orientation, ...)
    # palette masks: the colour each index had in the first file holding it, and that file
    palette: dict[int, tuple[tuple[int, int, int], str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pixels = np.zeros(self.num_classes, np.int64)
        self.images_with = np.zeros(self.num_classes, np.int64)
        self.image_pixels = np.zeros(self.num_classes, np.int64)


@dataclass
class Report:
    """What a scan found (:func:`scan_split`; ``python -m segkit.cli.check_data`` adds its
    split-wide checks); ``problems`` are definite errors."""

    splits: dict[str, SplitStats] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def build_split(factory: Any, split: str) -> Any:
    """``factory(split=split, transform=None)`` without the dataset's start-up sample check."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    if "startup_check" in parameters:
        return factory(split=split, transform=None, startup_check=0)
    return factory(split=split, transform=None)


def _count(stats: SplitStats, mask: np.ndarray, ignore_index: int, name: str) -> None:
    values, counts = np.unique(mask, return_counts=True)
    labelled = (values >= 0) & (values < stats.num_classes)
    present = values[labelled]
    stats.pixels[present] += counts[labelled]
    stats.images_with[present] += 1
    stats.image_pixels[present] += counts[labelled].sum()  # this image's labelled pixels
    stats.ignored += int(counts[values == ignore_index].sum())
    for value in values[~labelled & (values != ignore_index)].tolist():
        stats.bad_values[value].append(name)


def _hex(colour: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{v:02x}" for v in colour)


def scan_split(
    dataset: Any,
    stats: SplitStats,
    ignore_index: int,
    report: Report,
    decode_images: bool = True,
    progress: Progress | None = None,
) -> None:
    """Read every sample of ``dataset`` into ``stats``; problems go to ``report``.

    ``dataset`` is a :class:`~segkit.data.folder.FolderDataset` (or subclass): its masks are
    counted as the dataset maps them (label map, labelIds -> trainIds), with no transform.
    ``decode_images=False`` reads only the images' headers (for their size), which is enough
    to count labels and skips finding truncated image files. Any other dataset (COCO) is
    read sample by sample (``dataset[i]["mask"]``). ``progress`` (started on this split by
    the caller) advances once per sample.
    """
    advance = progress.advance if progress is not None else lambda: None
    if not isinstance(dataset, InspectableDataset):
        for index in range(len(dataset)):
            stats.images += 1
            advance()
            try:
                sample = dataset[index]
            except DataError as error:
                report.problems.append(str(error))
                continue
            mask = np.asarray(sample["mask"])
            _count(stats, mask, ignore_index, str(sample.get("name", index)))
            stats.raw_values.update(np.unique(mask).tolist())
        return
    for index in range(len(dataset)):
        found = dataset.inspect(index, decode_image=decode_images)
        advance()
        report.problems += found.problems
        stats.notes += found.notes
        stats.images += 1
        if found.mask is None:
            continue
        mask_path = str(dataset.samples[index][2])
        _count(stats, found.mask, ignore_index, mask_path)
        raw_values = np.unique(found.raw).tolist()
        stats.raw_values.update(raw_values)
        for value, colour in (found.palette or {}).items():
            first = stats.palette.setdefault(value, (colour, mask_path))
            if first[0] != colour:
                stats.notes.append(
                    f"palette masks {first[1]} and {mask_path} give index {value} different "
                    f"colours ({_hex(first[0])}, {_hex(colour)}): segkit reads the indices, "
                    "never the colours. If the masks were saved with a palette per file (an "
                    "image editor's indexed mode), their indices are no class ids: convert the "
                    "colours to class indices"
                )
                stats.palette[value] = (colour, mask_path)  # report each change once
        if mask_path.endswith("_labelIds.png") and 255 in raw_values:
            stats.label_ids_with_255.append(mask_path)


def _cache_key(dataset: Any, num_classes: int, ignore_index: int) -> dict[str, Any]:
    label_files = []
    for sample in dataset.samples:
        path = Path(sample[2])
        status = path.stat()
        label_files.append([str(path.resolve()), status.st_size, status.st_mtime_ns])
    dataset_class = type(dataset)
    return {
        "version": CACHE_VERSION,
        "dataset": f"{dataset_class.__module__}.{dataset_class.__qualname__}",
        "split": str(getattr(dataset, "split", None)),
        "num_classes": int(num_classes),
        "ignore_index": int(ignore_index),
        # the mapping changes the counts of the same files
        "label_map": sorted((getattr(dataset, "label_map", None) or {}).items()),
        "reduce_zero_label": bool(getattr(dataset, "reduce_zero_label", False)),
        # a digest keeps the file small for large splits (Cityscapes, VOC train_aug)
        "label_files": len(label_files),
        "label_files_sha1": hashlib.sha1(json.dumps(label_files).encode()).hexdigest(),
    }


def _stats_from_json(data: dict[str, Any], name: str, num_classes: int) -> SplitStats:
    stats = SplitStats(name, num_classes)
    stats.images = int(data["images"])
    stats.ignored = int(data["ignored"])
    for key in ("pixels", "images_with", "image_pixels"):
        setattr(stats, key, np.asarray(data[key], np.int64))
    return stats


def count_training_split(datamodule: Any, cache_dir: Path | str | None = None) -> SplitStats:
    """Pixel and image counts per class of ``datamodule``'s training split.

    Args:
        datamodule: a :class:`~segkit.data.datamodule.SegmentationDataModule` (``dataset``,
            ``splits``, ``num_classes``, ``ignore_index``) whose dataset is a
            :class:`~segkit.data.folder.FolderDataset` (folder, shapes, CamVid, Cityscapes,
            VOC, instance folders). ``prepare_data()`` is called first.
        cache_dir: folder for the cached counts (``None``: no cache).

    Returns:
        The split's :class:`~segkit.data.stats.SplitStats` (counts only).

    Raises:
        ValueError: the dataset gives no per-sample label files to count.
        DataError: the split cannot be built, or its files have problems (listed).
    """
    for attribute in ("dataset", "splits", "num_classes", "ignore_index"):
        if not hasattr(datamodule, attribute):
            raise ValueError(
                f"computed class weights need a segkit SegmentationDataModule; "
                f"{type(datamodule).__name__} has no {attribute!r}. Give loss.class_weights "
                "as a list of floats instead."
            )
    datamodule.prepare_data()
    split = datamodule.splits["train"]
    num_classes, ignore_index = int(datamodule.num_classes), int(datamodule.ignore_index)
    dataset = build_split(datamodule.dataset, split)
    if not isinstance(dataset, InspectableDataset):
        raise ValueError(
            f"cannot count the labels of {type(dataset).__name__}: computed class weights "
            "(loss.class_weights=median_frequency|inverse_frequency) need a dataset with "
            "class-index label files, a segkit FolderDataset or subclass (folder, shapes, "
            "camvid, cityscapes, voc). Give loss.class_weights as a list of floats instead."
        )
    key = _cache_key(dataset, num_classes, ignore_index)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"class_counts_{type(dataset).__name__}_{digest}.json"
        if cache_file.is_file():
            try:
                data = json.loads(cache_file.read_text())
            except (OSError, json.JSONDecodeError):
                data = {}  # a damaged cache file is recomputed
            if data.get("key") == key:
                return _stats_from_json(data, split, num_classes)

    stats, report = SplitStats(split, num_classes), Report()
    scan_split(dataset, stats, ignore_index, report, decode_images=False)
    problems = report.problems + [
        f"value {value} is no class (0..{num_classes - 1}) and not ignore_index="
        f"{ignore_index}, in {len(files)} files, e.g. {files[0]}"
        for value, files in sorted(stats.bad_values.items())
    ]
    if problems:
        listed = "\n  ".join(problems[:10])
        raise DataError(
            f"cannot count the labels of training split {split!r}: {len(problems)} "
            f"problem(s):\n  {listed}\nFix the files; python -m segkit.cli.check_data "
            "data=<name> lists them all."
        )
    if cache_file is not None:
        data = {
            "key": key,
            "images": stats.images,
            "ignored": stats.ignored,
            "pixels": stats.pixels.tolist(),
            "images_with": stats.images_with.tolist(),
            "image_pixels": stats.image_pixels.tolist(),
        }
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # atomic: DDP processes may write the same file at once
        temporary = cache_file.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, cache_file)
    return stats
