"""Label statistics of a split: pixels and images per class, counted once per split.

* :class:`SplitStats` holds one split's counts; :func:`scan_split` reads every sample of a
  dataset into it (the masks as the dataset maps them, no transform) and lists the files
  with problems in a :class:`Report`.
* :func:`label_counts` is the one way a run gets a split's counts: the start-up checks of
  every split a run uses (:meth:`segkit.data.datamodule.SegmentationDataModule.check_splits`)
  and the computed class weights (:func:`segkit.tasks.class_weights.resolve_class_weights`)
  both call it. It reads every sample as check_data does (images decoded, masks mapped)
  and stops on a file with a problem. One cache rule:
  ``<data.cache_dir>/class_counts_<Dataset>_<digest>.json`` (the data module's
  ``cache_dir``; none when it is null), recomputed when the split's image or label files,
  their sizes or mtimes, the dataset class, its label mapping, ``num_classes`` or
  ``ignore_index`` change; the per-file notes (EXIF orientation, 16-bit images, ...) are
  cached with the counts, so every start warns about them. A data module also remembers
  the counts of each split it counted, so a run counts a split once even without a cache.

``python -m segkit.cli.check_data`` scans every split itself (:func:`scan_split`, with a
progress bar and the label-convention hints) and prints the same counts and messages.
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

from segkit.data.io import DataError, InspectableDataset

MAX_FILES_NAMED = 5  # files named per bad label value
CACHE_VERSION = 2  # bump when the counting changes, so old cache files are not read


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


def build_split(factory: Any, split: str, transform: Any = None) -> Any:
    """``factory(split=split, transform=transform)`` without the dataset's start-up sample
    check, for callers that read every sample themselves (:func:`label_counts`, check_data).

    ``startup_check=0`` goes to a factory that names it or passes ``**options`` on (the
    layouts built on :class:`~segkit.data.folder.FolderDataset`).
    """
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if "startup_check" in parameters or forwards:
        return factory(split=split, transform=transform, startup_check=0)
    return factory(split=split, transform=transform)


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

    ``dataset`` is an :class:`~segkit.data.io.InspectableDataset` (a
    :class:`~segkit.data.folder.FolderDataset` or a layout built on it): its masks are
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
    image_files = []
    for sample in dataset.samples:
        status = Path(sample[1]).stat()
        image_files.append([status.st_size, status.st_mtime_ns])
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
        # the images are decoded by the same scan (truncated files), so they are part of it
        "image_files_sha1": hashlib.sha1(json.dumps(image_files).encode()).hexdigest(),
    }


def label_counts(datamodule: Any, subset: str = "train") -> SplitStats:
    """Pixel and image counts per class of ``datamodule``'s ``subset`` split, counted once.

    Cached under the data module's ``cache_dir`` (the rule in the module docstring) and
    remembered by the data module (``counted_labels``) while its files are unchanged.

    Args:
        datamodule: a :class:`~segkit.data.datamodule.SegmentationDataModule` (``dataset``,
            ``splits``, ``num_classes``, ``ignore_index``, ``cache_dir``) whose dataset is
            a :class:`~segkit.data.folder.FolderDataset` or a layout built on it (folder,
            shapes, CamVid, Cityscapes, VOC, ISBI 2012, instance folders).
            ``prepare_data()`` is called first.
        subset: ``train``, ``val`` or ``test``.

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
    split = datamodule.splits[subset]
    num_classes, ignore_index = int(datamodule.num_classes), int(datamodule.ignore_index)
    dataset = build_split(datamodule.dataset, split)
    if not isinstance(dataset, InspectableDataset):
        raise ValueError(
            f"cannot count the labels of {type(dataset).__name__}: computed class weights "
            "(loss.class_weights=median_frequency|sqrt_median_frequency|inverse_frequency) "
            "need a dataset with class-index label files, a segkit FolderDataset or subclass "
            "(folder, shapes, camvid, cityscapes, voc). Give loss.class_weights as a list of "
            "floats instead."
        )
    key = _cache_key(dataset, num_classes, ignore_index)
    remembered = getattr(datamodule, "counted_labels", None)
    if remembered is not None and subset in remembered and remembered[subset][0] == key:
        return remembered[subset][1]
    cache_file = _cache_file(datamodule, dataset, key)
    stats = _read_cache(cache_file, key, split, num_classes)
    if stats is None:
        stats = _count_split(dataset, split, num_classes, ignore_index, subset)
        _write_cache(cache_file, key, stats)
    if remembered is not None:
        remembered[subset] = (key, stats)
    return stats


def _cache_file(datamodule: Any, dataset: Any, key: dict[str, Any]) -> Path | None:
    """``<cache_dir>/class_counts_<Dataset>_<digest>.json``; ``None`` without a cache_dir."""
    cache_dir = getattr(datamodule, "cache_dir", None)
    if cache_dir is None:
        return None
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"class_counts_{type(dataset).__name__}_{digest}.json"


def _read_cache(
    cache_file: Path | None, key: dict[str, Any], split: str, num_classes: int
) -> SplitStats | None:
    if cache_file is None or not cache_file.is_file():
        return None
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged cache file is recomputed
    if data.get("key") != key:
        return None
    stats = SplitStats(split, num_classes)
    stats.images = int(data["images"])
    stats.ignored = int(data["ignored"])
    stats.notes = [str(note) for note in data.get("notes", [])]
    for name in ("pixels", "images_with", "image_pixels"):
        setattr(stats, name, np.asarray(data[name], np.int64))
    return stats


def _count_split(
    dataset: Any, split: str, num_classes: int, ignore_index: int, subset: str
) -> SplitStats:
    """Every sample of ``dataset`` read (images decoded, so truncated files are found) and
    its labels counted; a file with a problem stops (all listed, in check_data's words)."""
    stats, report = SplitStats(split, num_classes), Report()
    scan_split(dataset, stats, ignore_index, report, decode_images=True)
    problems = report.problems + value_problems(stats, ignore_index)
    if problems:
        listed = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(
            f"data.{subset}_split={split!r}: {len(problems)} file problem(s):\n  {listed}{more}"
            "\nFix the files; python -m segkit.cli.check_data data=<name> lists them all."
        )
    return stats


def value_problems(stats: SplitStats, ignore_index: int) -> list[str]:
    """One line per label value of ``stats`` that is neither a class nor ``ignore_index``,
    naming the files that hold it (start-up and check_data say the same)."""
    return [
        f"value {value} is no class (0..{stats.num_classes - 1}) and not ignore_index="
        f"{ignore_index}, in {len(files)} files: {files[:MAX_FILES_NAMED]}"
        for value, files in sorted(stats.bad_values.items())
    ]


def _write_cache(cache_file: Path | None, key: dict[str, Any], stats: SplitStats) -> None:
    if cache_file is None:
        return
    data = {
        "key": key,
        "images": stats.images,
        "ignored": stats.ignored,
        "pixels": stats.pixels.tolist(),
        "images_with": stats.images_with.tolist(),
        "image_pixels": stats.image_pixels.tolist(),
        "notes": stats.notes,
    }
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    # atomic: DDP processes may write the same file at once
    temporary = cache_file.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, cache_file)
