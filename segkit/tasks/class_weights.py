"""Per-class loss weights computed from the training split's label counts.

``loss.class_weights`` (of :class:`~segkit.losses.CrossEntropyLoss`, :class:`~segkit.losses.
FocalLoss`, also nested, e.g. ``loss.losses.ce.class_weights``) takes

* ``null``: every class weighs 1;
* a list of ``C`` floats, used as given (e.g. a paper's published weights);
* ``median_frequency``: median-frequency balancing (Eigen & Fergus, ICCV 2015, Sec. 4.1):
  ``freq(c) = pixels of c / labelled pixels of the images in which c appears`` and
  ``weight(c) = median(freq) / freq(c)``;
* ``inverse_frequency``: scikit-learn's ``class_weight="balanced"``:
  ``weight(c) = total / (K * pixels of c)``, ``total`` the labelled pixels of the split and
  ``K`` the number of classes present, so the weight averaged over the labelled pixels is 1.

The names are resolved by :func:`resolve_class_weights` before the loss is built, from the
training split's masks as the dataset maps them (label map, labelIds -> trainIds), without
augmentation; ignored pixels count nowhere (neither as a class nor in any total). A class
with no pixel in the training split gets weight 0 (it never occurs in a training target, so
the weight has no effect) with a warning, and the median and ``K`` are taken over the
present classes only. The counts come from :func:`segkit.check_data.scan_split`, the same
code that ``python -m segkit.check_data`` runs (it prints both vectors), and are cached as
a small JSON file, recomputed when the split's label files, their sizes or mtimes, the
dataset class, its label mapping, ``num_classes`` or ``ignore_index`` change.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from segkit.check_data import Report, SplitStats, build_split, scan_split
from segkit.data.folder import DataError, InspectableDataset

CHOICES = ("median_frequency", "inverse_frequency")
CACHE_VERSION = 1  # bump when the counting changes, so old cache files are not read


def _present(pixels: np.ndarray) -> np.ndarray:
    present = np.asarray(pixels) > 0
    if not present.any():
        raise DataError(
            "the training split has no labelled pixel (every pixel is ignored or the split is "
            "empty): no class weight can be computed from it."
        )
    return present


def median_frequency_weights(pixels: Sequence[int], image_pixels: Sequence[int]) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015).

    Args:
        pixels: ``[C]`` pixels of each class in the split.
        image_pixels: ``[C]`` labelled pixels of the images in which each class appears.

    Returns:
        float64 ``[C]``: ``median(freq) / freq(c)`` with ``freq = pixels / image_pixels``, the
        median over the classes present; 0 for a class with no pixel.
    """
    pixels = np.asarray(pixels, np.float64)
    present = _present(pixels)
    freq = pixels[present] / np.asarray(image_pixels, np.float64)[present]
    weights = np.zeros_like(pixels)
    weights[present] = np.median(freq) / freq
    return weights


def inverse_frequency_weights(pixels: Sequence[int]) -> np.ndarray:
    """Inverse class frequency, as scikit-learn's ``class_weight="balanced"``.

    Args:
        pixels: ``[C]`` pixels of each class in the split.

    Returns:
        float64 ``[C]``: ``total / (K * pixels(c))`` over the ``K`` classes present (``total``
        their pixel sum); 0 for a class with no pixel.
    """
    pixels = np.asarray(pixels, np.float64)
    present = _present(pixels)
    weights = np.zeros_like(pixels)
    weights[present] = pixels.sum() / (present.sum() * pixels[present])
    return weights


def weights_from_stats(name: str, stats: SplitStats) -> np.ndarray:
    """The weight vector ``name`` (one of :data:`CHOICES`) of one split's counts, ``[C]``."""
    if name == "median_frequency":
        return median_frequency_weights(stats.pixels, stats.image_pixels)
    if name == "inverse_frequency":
        return inverse_frequency_weights(stats.pixels)
    raise ValueError(f"unknown class weighting {name!r}; choose one of {list(CHOICES)}")


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
    for field in ("pixels", "images_with", "image_pixels"):
        setattr(stats, field, np.asarray(data[field], np.int64))
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
        The split's :class:`~segkit.check_data.SplitStats` (counts only).

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
            f"problem(s):\n  {listed}\nFix the files; python -m segkit.check_data "
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


def _weight_nodes(node: Any, path: str) -> list[tuple[DictConfig, str]]:
    """Every ``(parent, dotted key)`` holding a ``class_weights`` key under ``node``."""
    if isinstance(node, DictConfig):
        keys: list[Any] = list(node.keys())
    elif isinstance(node, ListConfig):
        keys = list(range(len(node)))
    else:
        return []
    found = []
    for key in keys:
        if key == "class_weights":
            found.append((node, f"{path}.{key}"))
        elif not OmegaConf.is_missing(node, key):
            found += _weight_nodes(node[key], f"{path}.{key}")
    return found


def resolve_class_weights(
    loss_cfg: DictConfig, datamodule: Any, cache_dir: Path | str | None, key: str = "loss"
) -> DictConfig:
    """Replace every named ``class_weights`` in ``loss_cfg`` by its list of ``C`` floats.

    Works **in place** (and returns ``loss_cfg``), so a config stored afterwards (e.g. in a
    checkpoint) holds the numbers and rebuilding the loss needs no data. Lists are checked
    for length ``C``; ``null`` is left alone. The training split is counted only when a name
    is found, once for all of them.

    Args:
        loss_cfg: the ``loss`` config node (any depth: ``losses.ce.class_weights`` too).
        datamodule: the instantiated data module (see :func:`count_training_split`).
        cache_dir: folder for the cached counts, e.g. ``<paths.data_dir>/cache``.
        key: the node's name in messages (``loss.losses.ce.class_weights``).

    Returns:
        ``loss_cfg``, with lists of Python floats in place of the names.

    Raises:
        ValueError: an unknown name, a list whose length is not ``num_classes``, or a
            dataset whose labels cannot be counted.
    """
    num_classes = int(datamodule.num_classes)
    stats = None
    for parent, path in _weight_nodes(loss_cfg, key):
        value = parent.class_weights
        if value is None:
            continue
        if isinstance(value, str):
            if value not in CHOICES:
                raise ValueError(
                    f"{path}={value!r} is not a choice: use null, a list of {num_classes} "
                    f"floats, or one of {list(CHOICES)}."
                )
            if stats is None:
                stats = count_training_split(datamodule, cache_dir)
                absent = np.flatnonzero(stats.pixels == 0)
                if absent.size:
                    names = getattr(datamodule, "class_names", None)
                    listed = [names[i] for i in absent] if names else absent.tolist()
                    warnings.warn(
                        f"classes {listed} have no pixel in training split {stats.name!r}: "
                        f"{path}={value} gives them weight 0.",
                        stacklevel=2,
                    )
            parent.class_weights = weights_from_stats(value, stats).tolist()
        elif isinstance(value, (ListConfig, list, tuple)):
            if len(value) != num_classes:
                raise ValueError(
                    f"{path} has {len(value)} values but data.num_classes is {num_classes}: "
                    "give one weight per class, or a name such as median_frequency."
                )
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{path}={list(value)} must hold {num_classes} numbers.")
        else:
            raise ValueError(
                f"{path}={value!r} is neither null, a list of {num_classes} floats, nor one "
                f"of {list(CHOICES)}."
            )
    return loss_cfg
