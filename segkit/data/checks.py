"""The data checks that run at start-up and in ``python -m segkit.cli.check_data``.

Each check says the same thing in both places: a *problem* is a setting or data that cannot
give a right result (the run stops with one message naming the key or file and the fix), a
*warning* is data that works but looks wrong (a :class:`~segkit.data.io.DataWarning` at
start-up, a line in check_data). Splits are named by the key that chose them
(``data.val_split='val'``). :class:`~segkit.data.datamodule.SegmentationDataModule` calls
them while it is built and in :meth:`~segkit.data.datamodule.SegmentationDataModule.
check_splits`, which ``train()`` and ``evaluate()`` run at start-up on every split the run
will use, before a model or trainer is built; every sample is read once per change of the
files (the cached :func:`~segkit.data.stats.label_counts`), so later starts stay short.

Datasets other than :class:`~segkit.data.folder.FolderDataset` and its subclasses (COCO)
get the checks that need no file list: settings and split names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.io import DataError, image_size
from segkit.data.splits import split_command
from segkit.data.stats import label_counts

MAX_LISTED = 3
CROP_AREA_RATIO = 4  # a crop with this many times an image's pixels is mostly padding
SIZE_SAMPLES = 32  # training images whose header sizes the crop check reads
# albumentations transforms whose output size does not depend on the input's
FIXED_SIZE_TRANSFORMS = {
    "RandomCrop",
    "CenterCrop",
    "RandomResizedCrop",
    "RandomSizedCrop",
    "Resize",
    "CropNonEmptyMaskIfExists",
    "RandomSizedBBoxSafeCrop",
}
PADDED_CROPS = {"RandomCrop", "CenterCrop", "CropNonEmptyMaskIfExists", "PadIfNeeded"}
# Kinds of per-file notes, each listed up to MAX_NOTES times.
NOTE_KINDS = ("EXIF Orientation", "16-bit", "transparency", "palette masks")
MAX_NOTES = 5


def raise_problems(problems: Sequence[str]) -> None:
    """Raise one :class:`DataError` holding every problem (nothing when empty)."""
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        listed = "\n  ".join(problems)
        raise DataError(f"{len(problems)} data problems:\n  {listed}")


def _unset_arguments(dataset: Callable[..., Any]) -> list[str]:
    """Required arguments of a Hydra partial that the config leaves unset (``root: ???``)."""
    if not isinstance(dataset, partial):
        return []
    try:
        parameters = inspect.signature(dataset.func).parameters.values()
    except (TypeError, ValueError):
        return []
    bound = dataset.keywords
    return [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty
        and p.name not in ("self", "split", "transform")
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and bound.get(p.name) is None  # absent (``???``) or null
        and not dataset.args  # positional arguments: not a Hydra partial, trust it
    ]


def check_config(
    dataset: Callable[..., Any],
    num_classes: int,
    class_names: Sequence[str],
    ignore_index: int,
    mean: Sequence[float],
    std: Sequence[float],
    palette: Sequence[Sequence[int]] | None,
    in_channels: int = 3,
) -> None:
    """Stop on ``data.*`` settings that cannot be right (see the module docstring).

    Raises:
        ValueError: one message listing every wrong key with its fix.
    """
    problems = []
    for name in _unset_arguments(dataset):
        hint = " (a folder holding images/ and masks/ for data=folder)" if name == "root" else ""
        problems.append(
            f"data.dataset.{name} is not set: give data.dataset.{name}=...{hint} on the "
            "command line."
        )
    if len(class_names) != num_classes:
        problems.append(
            f"data.class_names has {len(class_names)} names but data.num_classes is "
            f"{num_classes}; give one name per class."
        )
    if palette is not None and len(palette) != num_classes:
        problems.append(
            f"data.palette has {len(palette)} colours but data.num_classes is {num_classes}."
        )
    if isinstance(ignore_index, int) and 0 <= ignore_index < num_classes:
        name = class_names[ignore_index] if ignore_index < len(class_names) else ignore_index
        void = "255, the usual void value" if num_classes <= 255 else "65535 in 16-bit masks"
        fix = f"Set data.ignore_index to a value that is no class ({void})"
        if ignore_index == 0:
            fix += (
                ", or, if 0 marks unlabelled pixels and the classes are stored as 1..C, set "
                "data.dataset.reduce_zero_label=true"
            )
        problems.append(
            f"data.ignore_index={ignore_index} is class {ignore_index} ({name!r}) of "
            f"0..{num_classes - 1}: that class would be neither trained nor scored. {fix}."
        )
    if in_channels not in (1, 3):
        problems.append(
            f"data.in_channels={in_channels}: images are read as RGB (3) or converted to "
            "greyscale (1); give 3 or 1."
        )
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != in_channels:
            problems.append(
                f"data.{key} has {len(values)} values but data.in_channels is {in_channels}: "
                "give one value per input channel."
            )
    if any(v > 1 for v in mean) or any(v > 1 for v in std):
        scaled = ", ".join(
            f"data.{key}=[{', '.join(f'{v / 255:.4g}' for v in values)}]"
            for key, values in (("mean", mean), ("std", std))
        )
        problems.append(
            f"data.mean={list(mean)} / data.std={list(std)} are on the 0-255 pixel scale "
            "(the mmsegmentation convention), but segkit normalises images on the 0-1 "
            f"scale: divide both by 255, i.e. {scaled}."
        )
    if any(v <= 0 for v in std):
        problems.append(f"data.std={list(std)} must be > 0 in every channel.")
    if problems:
        raise ValueError("\n".join(problems))


def split_name_problems(splits: Mapping[str, str | None]) -> tuple[list[str], list[str]]:
    """Validation on the training split itself: ``(problems, warnings)``.

    Both null (every image in both, the silent case) is a problem; the same list named on
    purpose (``data.val_split=train``, a fitting check) is a warning, since then the scores
    measure memorisation, not generalisation.
    """
    if splits["val"] != splits["train"]:
        return [], []
    fix = (
        "Give the validation images their own list (for data=folder: "
        f"{split_command('<root>')} writes splits/train.txt and splits/val.txt) and set "
        "data.train_split=train data.val_split=val."
    )
    if splits["train"] is None:
        return [
            "data.val_split and data.train_split are both None: the model would be validated, "
            f"and its best checkpoint chosen, on its own training images. {fix}"
        ], []
    return [], [
        f"data.val_split and data.train_split are both {splits['train']!r}: validation scores "
        "(and the best checkpoint) come from the training images, so they measure how well "
        "the model fits them, not how it generalises. Meant as a fitting check only; "
        f"otherwise: {fix}"
    ]


def _image_paths(dataset: Any) -> list[Path] | None:
    samples = getattr(dataset, "samples", None)
    if not isinstance(samples, list) or not samples:
        return None
    return [Path(sample[1]) for sample in samples]


def overlap_warning(first: Any, second: Any, first_key: str, second_key: str) -> list[str]:
    """A warning when two splits' datasets share images (by resolved image path)."""
    a, b = _image_paths(first), _image_paths(second)
    if a is None or b is None:
        return []
    shared = sorted({p.resolve() for p in a} & {p.resolve() for p in b})
    if not shared:
        return []
    same = len(shared) == len(set(b))
    return [
        f"{'all' if same else len(shared)} of the {len(set(b))} images of {second_key} are "
        f"also in {first_key}, e.g. {[str(p) for p in shared[:MAX_LISTED]]}: "
        f"scores on {second_key} are then not scores on held-out images."
    ]


def _transforms(transform: Any) -> list[Any]:
    """Every albumentations transform inside ``transform`` (Compose, OneOf, ... unrolled)."""
    if transform is None:
        return []
    inner = getattr(transform, "transforms", None)
    if inner is None:
        return [transform]
    return [t for child in inner for t in _transforms(child)]


def fixed_size(transform: Any) -> bool:
    """Whether ``transform`` gives every sample one size (a crop or a resize)."""
    return any(type(t).__name__ in FIXED_SIZE_TRANSFORMS for t in _transforms(transform))


def sizes(dataset: Any, limit: int | None = None) -> dict[tuple[int, int], Path]:
    """``{(H, W): first image of that size}`` from image headers (``limit`` evenly spread).

    Unreadable images are left out: the sample checks name them.
    """
    paths = _image_paths(dataset) or []
    if limit is not None and len(paths) > limit:
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, limit).round()]
    found: dict[tuple[int, int], Path] = {}
    for path in paths:
        try:
            found.setdefault(image_size(path), path)
        except DataError:
            continue
    return found


def batch_size_problem(
    dataset: Any, batch_size: int, transform: Any, batch_key: str, split_key: str
) -> list[str]:
    """A problem when a batch of ``batch_size`` would stack images of different sizes."""
    if batch_size <= 1 or fixed_size(transform):
        return []
    found = sizes(dataset)
    if len(found) <= 1:
        return []
    examples = [f"{path.name} {w}x{h}" for (h, w), path in list(found.items())[:MAX_LISTED]]
    return [
        f"{batch_key}={batch_size} but the images of {split_key} differ in size "
        f"({len(found)} sizes, e.g. {examples}), and one batch stacks one size. Set "
        f"{batch_key}=1, or add a crop or resize to the transform."
    ]


def crop_warning(
    transform: Any, image_sizes: Mapping[tuple[int, int], Path], key: str
) -> list[str]:
    """A warning when a padding crop of ``transform`` is many times larger than the images."""
    if not image_sizes:
        return []
    areas = sorted(h * w for h, w in image_sizes)
    typical = areas[len(areas) // 2]
    found = []
    for index, t in enumerate(getattr(transform, "transforms", []) or []):
        name = type(t).__name__
        if name not in PADDED_CROPS:
            continue
        height = getattr(t, "height", None) or getattr(t, "min_height", None)
        width = getattr(t, "width", None) or getattr(t, "min_width", None)
        if not height or not width or height * width < CROP_AREA_RATIO * typical:
            continue
        h, w = next(hw for hw in image_sizes if hw[0] * hw[1] == typical)
        side = "height" if name != "PadIfNeeded" else "min_height"
        found.append(
            f"{key}.transforms.{index} ({name}) makes {width}x{height} samples but the "
            f"training images are about {w}x{h}: each sample is "
            f"{height * width / typical:.0f}x the image, mostly padding. Crop to the image "
            f"size, e.g. data.crop_size=[{h},{w}] (the crop of the shipped data configs and "
            f"of every augment preset), or for a transform of your own "
            f"{key}.transforms.{index}.{side}={h} "
            f"{key}.transforms.{index}.{side.replace('height', 'width')}={w}."
        )
    return found


def _first_mask_with(dataset: Any, value: int) -> str | None:
    """The first label file of ``dataset`` whose class-index mask holds ``value``."""
    for _, _, mask_path in getattr(dataset, "samples", []):
        try:
            mask = dataset.map_mask(dataset.read_raw_mask(mask_path), mask_path)
        except DataError:
            continue
        if (mask == value).any():
            return str(mask_path)
    return None


def label_findings(
    stats: Any,
    class_names: Sequence[str],
    ignore_index: int,
    dataset: Any = None,
    key: str | None = None,
) -> tuple[list[str], list[str]]:
    """Problems and warnings of a training split's label counts.

    Args:
        stats: the split's :class:`~segkit.data.stats.SplitStats` (``pixels [C]``,
            ``ignored``, ``images``, ``name``).
        class_names: ``C`` names.
        ignore_index: the ignored value.
        dataset: the split's dataset, to name a file in a problem (and its ``label_map``: a
            map that names 255 says that 255 was meant).
        key: how the messages name the split (default ``data.train_split=<name>``).

    Returns:
        ``(problems, warnings)``: no labelled pixel, or a single class (with the binary
        0/255 fix where it fits), are problems; classes without a pixel are a warning.
    """
    if stats.images == 0:
        return [], []
    pixels = np.asarray(stats.pixels)
    present = np.flatnonzero(pixels)
    split = key or split_key("train", stats.name)
    example = _first_mask_with(dataset, ignore_index) if present.size <= 1 else None
    named = f" (e.g. {example})" if example else ""
    if present.size == 0:
        return [
            f"{split}: none of its {stats.images} masks{named} holds a labelled pixel (every "
            f"pixel is ignore_index={ignore_index}): the model would learn nothing. Check "
            "data.ignore_index, the label mapping (data.dataset.label_map, "
            "reduce_zero_label) and that the masks hold class indices; python -m "
            "segkit.cli.check_data data=<name> counts each class."
        ], []
    label_map = getattr(dataset, "label_map", None) or {}
    if present.size == 1 and len(class_names) > 1:
        only = int(present[0])
        if only == 0 and ignore_index == 255 and stats.ignored and 255 not in label_map:
            return [
                f"{split}: its {stats.images} masks hold only class 0 ({class_names[0]!r}) "
                f"and the ignored value 255{named}: these look like binary 0/255 masks, "
                "whose foreground 255 is ignored, so the model would never see class 1 "
                f"({class_names[1]!r}). Map 255 to the foreground class: "
                "data.dataset.label_map={255:1}."
            ], []
        return [
            f"{split}: its {stats.images} masks hold only class {only} "
            f"({class_names[only]!r}); a model cannot learn to tell classes apart from them. "
            "Check data.num_classes, the label mapping and that the masks hold class indices."
        ], []
    missing = [class_names[c] for c in range(len(class_names)) if pixels[c] == 0]
    if missing:
        return [], [
            f"{split}: classes {missing} have no pixel: the model never learns them, and "
            "their IoU is 0 or undefined."
        ]
    return [], []


def split_key(subset: str, split: str | None) -> str:
    """How every message names a split: the config key that chose it."""
    return f"data.{subset}_split={split!r}"


def note_warnings(notes: Sequence[str], key: str) -> list[str]:
    """Per-file notes of a scan (EXIF orientation, 16-bit, ...) as warnings: the first
    :data:`MAX_NOTES` of each kind, then a count of the rest."""
    shown = []
    lines = list(notes)
    for kind in (*NOTE_KINDS, ""):
        same = [line for line in lines if kind in line]
        lines = [line for line in lines if kind not in line]
        shown += [f"{key}: {line}" for line in same[:MAX_NOTES]]
        if len(same) > MAX_NOTES:
            shown.append(f"{key}: ... and {len(same) - MAX_NOTES} more like these")
    return shown


def split_label_findings(
    stats: Any,
    subset: str,
    key: str,
    class_names: Sequence[str],
    ignore_index: int,
    dataset: Any = None,
) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of one split's label counts, the same at start-up and in
    check_data.

    The training split: :func:`label_findings`. A validation or test split: a warning when
    no pixel is labelled (its scores are undefined) or when classes have no pixel (their
    IoU is NaN and left out of the mean). Every split: its per-file notes.
    """
    if subset == "train":
        problems, found = label_findings(stats, class_names, ignore_index, dataset, key)
    else:
        problems, found = [], []
        pixels = np.asarray(stats.pixels)
        missing = [class_names[c] for c in range(len(class_names)) if pixels[c] == 0]
        if stats.images and not pixels.any():
            found.append(
                f"{key}: none of its {stats.images} masks holds a labelled pixel (every pixel "
                f"is ignore_index={ignore_index}): its scores are undefined."
            )
        elif stats.images and missing:
            found.append(
                f"{key}: classes {missing} have no pixel: their IoU is undefined (NaN) and "
                "left out of mIoU."
            )
    return problems, found + note_warnings(stats.notes, key)


def counted_split_findings(datamodule: Any, subset: str) -> tuple[list[str], list[str]]:
    """:func:`split_label_findings` of ``subset``'s :func:`~segkit.data.stats.label_counts`
    (every sample read once, cached).

    Datasets without per-sample label files (COCO) are skipped. A file with a problem (a
    value outside the class set, a truncated image, a size mismatch, ...) is a problem.
    """
    dataset = datamodule.datasets.get(subset)
    if dataset is None or not (hasattr(dataset, "samples") and hasattr(dataset, "inspect")):
        return [], []
    try:
        stats = label_counts(datamodule, subset)
    except DataError as error:
        return [str(error)], []
    key = split_key(subset, datamodule.splits[subset])
    return split_label_findings(
        stats, subset, key, datamodule.class_names, datamodule.ignore_index, dataset
    )


def loader_findings(datamodule: Any, subsets: Sequence[str]) -> tuple[list[str], list[str]]:
    """Batches of mixed image sizes (problems) and train/val overlap (warning)."""
    problems: list[str] = []
    found: list[str] = []
    if type(datamodule).collate is None:  # default collate stacks: one size per batch
        for subset in subsets:
            train = subset == "train"
            problems += batch_size_problem(
                datamodule.datasets[subset],
                datamodule.batch_size if train else datamodule.eval_batch_size,
                datamodule.train_transform if train else datamodule.eval_transform,
                "data.batch_size" if train else "data.eval_batch_size",
                split_key(subset, datamodule.splits[subset]),
            )
    splits = datamodule.splits
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        if first in subsets and second in subsets and splits[first] != splits[second]:
            found += overlap_warning(
                datamodule.datasets[first],
                datamodule.datasets[second],
                split_key(first, splits[first]),
                split_key(second, splits[second]),
            )
    return problems, found


def crop_findings(datamodule: Any) -> list[str]:
    """:func:`crop_warning` for the training transform and a sample of training images."""
    dataset = datamodule.datasets.get("train")
    if dataset is None or datamodule.train_transform is None:
        return []
    return crop_warning(
        datamodule.train_transform, sizes(dataset, SIZE_SAMPLES), "data.train_transform"
    )


def test_split_findings(datamodule: Any) -> list[str]:
    """A warning when the test split is the validation (or training) split."""
    splits = datamodule.splits
    for other in ("val", "train"):
        if splits["test"] == splits[other]:
            return [
                f"data.test_split equals data.{other}_split ({splits['test']!r}): the test "
                f"scores are scores on the {other} images"
                + (", which chose the best checkpoint" if other == "val" else "")
                + ", not a held-out result. Set data.test_split to a held-out split where "
                "the dataset has one (or test=false)."
            ]
    return []
