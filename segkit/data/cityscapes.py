"""Cityscapes fine annotations (Cordts et al., CVPR 2016), 19 evaluation classes.

Official layout (``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip`` unpacked in
one folder)::

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The 34 ``labelIds`` are mapped to the 19 ``trainIds`` here (everything else to
``ignore_index``), so no conversion script is needed. Where cityscapesScripts'
``createTrainIdLabelImgs`` already wrote ``*_gtFine_labelTrainIds.png``, those are read as
they are. The test split's labels are all void (the benchmark server holds them).

Where every image of a split has ``*_gtFine_instanceIds.png`` beside its label and the split
has no transform (the eval splits, scored at full resolution), each sample also carries
``"instance"``: int64 ``[H, W]`` instance ids (the file's values above 1000, i.e.
``labelId * 1000 + k``; 0 elsewhere), and the semantic task adds Cityscapes' iIoU
(:class:`segkit.evaluation.metrics.InstanceIoU`) to the report.

:func:`label_ids` maps predicted trainIds back to labelIds, the official result format
(``predict.py format=cityscapes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segkit.data.folder import FolderDataset
from segkit.data.io import DataError

CLASS_NAMES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
# Official colours (cityscapesScripts helpers/labels.py), in trainId order.
PALETTE = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)
# labelId of each trainId 0..18 (labels.py); the other labelIds (0-6 void/flat extras,
# 9 parking, 10 rail track, 14 guard rail, 15 bridge, 16 tunnel, 18 polegroup, 29 caravan,
# 30 trailer) are not evaluated.
TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def label_id_lut(ignore_index: int = 255) -> np.ndarray:
    """``lut[labelId] -> trainId`` for all 256 uint8 values (non-evaluated ids -> ignore)."""
    lut = np.full(256, ignore_index, dtype=np.int64)
    lut[list(TRAIN_LABEL_IDS)] = np.arange(len(TRAIN_LABEL_IDS))
    return lut


class CityscapesDataset(FolderDataset):
    """One Cityscapes split in the official layout (see the module docstring).

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        num_classes: 19.
        split: ``train``, ``val`` or ``test``.
        ignore_index: what non-evaluated labelIds become.
        **options: ``transform``, ``mean``, ``std``, ``startup_check``, ``decoded_cache``,
            ``cache_dir``, as in :class:`FolderDataset`.

    Samples also carry ``"instance"`` (int64 ``[H, W]``, :func:`read_instance_ids`) when
    every image has ``*_gtFine_instanceIds.png`` and ``transform`` is ``None``
    (:func:`instance_files`); the decoded cache does not hold them (read from the files).
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int = 19,
        split: str = "train",
        ignore_index: int = 255,
        **options: Any,
    ) -> None:
        if num_classes != len(CLASS_NAMES):
            raise ValueError(f"Cityscapes has {len(CLASS_NAMES)} classes, got {num_classes}")
        samples = cityscapes_samples(Path(root).expanduser(), split)
        to_train_ids = partial(train_ids, lut=label_id_lut(ignore_index))
        super().__init__(
            root, num_classes, split, ignore_index, samples=samples, map_raw_mask=to_train_ids,
            **options,
        )  # fmt: skip
        self.instance_files = instance_files(self.samples, self.transform)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        if self.instance_files is not None:
            path = self.instance_files[index]
            ids = read_instance_ids(path)
            if ids.shape != sample["mask"].shape:
                raise DataError(
                    f"{path} is {ids.shape[1]}x{ids.shape[0]}, its label "
                    f"{tuple(sample['mask'].shape[::-1])}; instanceIds must match the labels."
                )
            sample["instance"] = torch.from_numpy(ids)
        return sample


def instance_files(samples: Sequence[tuple[str, Path, Path]], transform: Any) -> list[Path] | None:
    """The ``*_gtFine_instanceIds.png`` of every sample, or ``None`` when the split has a
    transform (instance ids would not follow crops and resizes) or no such files.

    Raises:
        DataError: some images have instanceIds and others not.
    """
    if transform is not None:
        return None
    files = [label.parent / f"{stem}_gtFine_instanceIds.png" for stem, _, label in samples]
    present = [f.is_file() for f in files]
    if not any(present):
        return None
    if not all(present):
        missing = files[present.index(False)]
        raise DataError(
            f"{present.count(False)} of {len(files)} images have no instanceIds file, e.g. "
            f"{missing}, while the others have one; unpack the whole gtFine zip (iIoU needs "
            "every image's instance ids) or remove the *_gtFine_instanceIds.png files."
        )
    return files


def read_instance_ids(path: Path) -> np.ndarray:
    """int64 ``[H, W]`` instance ids of a ``*_instanceIds.png``: values above 1000
    (``labelId * 1000 + k``, one per object) kept, the rest (class-only ids, e.g. crowds)
    0, as cityscapesScripts' evaluation counts instances."""
    ids = np.asarray(Image.open(path), dtype=np.int64)
    return np.where(ids > 1000, ids, 0)


def label_ids(train_ids: np.ndarray) -> np.ndarray:
    """uint8 labelIds ``[H, W]`` of predicted trainIds ``0..18`` (:data:`TRAIN_LABEL_IDS`)."""
    return np.asarray(TRAIN_LABEL_IDS, dtype=np.uint8)[train_ids]


def check_cityscapes_classes(class_names: Sequence[str], what: str) -> None:
    """Raise a ValueError naming ``what`` unless ``class_names`` are the 19 of Cityscapes."""
    if list(class_names) != list(CLASS_NAMES):
        raise ValueError(
            f"{what} needs a model of the 19 Cityscapes classes (trained with data=cityscapes); "
            f"this one has {len(class_names)}: {list(class_names)[:6]}..."
        )


def cityscapes_samples(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    """The ``(stem, leftImg8bit image, gtFine label)`` of every image of ``split``; the label
    is ``*_gtFine_labelTrainIds.png`` where present, else ``*_gtFine_labelIds.png``.

    Raises:
        DataError: a folder is missing, an image has no label file, the split is empty.
    """
    image_dir = root / "leftImg8bit" / split
    label_dir = root / "gtFine" / split
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DataError(
                f"Cityscapes folder {folder} does not exist. Set data.dataset.root to the "
                "folder holding leftImg8bit/ and gtFine/ (the unpacked official zips)."
            )
    samples, missing = [], []
    for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        folder = label_dir / image.parent.name
        label = folder / f"{stem}_gtFine_labelTrainIds.png"
        if not label.is_file():
            label = folder / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            missing.append(str(label))
        samples.append((stem, image, label))
    if missing:
        raise DataError(
            f"{len(missing)} Cityscapes images have no label file, e.g. {missing[0]} (nor "
            "*_gtFine_labelTrainIds.png). Unpack gtFine_trainvaltest.zip into the root."
        )
    if not samples:
        raise DataError(f"no *_leftImg8bit.png images under {image_dir}/<city>/.")
    return samples


def train_ids(raw: np.ndarray, path: Path, lut: np.ndarray) -> np.ndarray:
    """labelIds -> trainIds (``lut``, :func:`label_id_lut`) for ``*_labelIds.png``;
    ``*_labelTrainIds.png`` as stored."""
    if path.name.endswith("_labelIds.png") and raw.size and raw.max() < len(lut):
        return lut[raw]
    return raw
