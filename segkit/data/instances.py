"""Instance segmentation data: per-image lists of objects (box, class, mask).

Two datasets, one sample format, one collate and a data module:

* :class:`InstanceFolderDataset`: the folder layout of :class:`~segkit.data.folder.FolderDataset`
  plus ``root/instances/<stem>.png`` (instance id per pixel, 0 = none), as written by
  :func:`segkit.data.shapes.generate_shapes`. Instance ``k`` takes the class that
  ``masks/<stem>.png`` holds at its pixels.
* :class:`CocoInstances`: COCO-format ``root/annotations/instances_<split>.json`` with images
  in ``root/<split>/``; polygons, uncompressed and compressed RLE are decoded with
  pycocotools. Category ids (any, e.g. COCO's 1..90 with gaps) map to labels ``1..K`` in
  increasing id order. Crowd annotations (``iscrowd=1``) are not trained on: they go to the
  sample's ``crowd`` entry, which the AP evaluation passes to COCOeval as crowd regions
  (a detection matching one is neither a true nor a false positive, COCO's rule), and their
  pixels are ``ignore_index`` in the semantic mask.

Each sample is ``{"image": float32 [3, H, W] normalised with mean/std, "target": {"boxes":
float32 [N, 4] xyxy pixel edges, "labels": int64 [N] in 1..C-1, "masks": uint8 [N, H, W]},
"crowd": the crowd regions in the same format (``M = 0`` outside COCO), "mask": int64 [H, W]
class map (for the semantic view of the scores), "name": str}``; an image without objects has
``N = 0``. The albumentations ``transform`` is called with ``image``, ``mask`` and ``masks``
(the instance and crowd masks), so geometric transforms keep them aligned; boxes are then the
tight boxes of the transformed masks, and an instance left without pixels (e.g. cropped away)
is dropped.

Batches are lists, since images may differ in size and hold different numbers of objects:
:func:`collate_instances`. :class:`InstanceDataModule` is the semantic data module with that
collate, so instance loaders get the same unpadded evaluation sampler under DDP (each image
scored once) and the same augmentation seeding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from segkit.data.datamodule import SegmentationDataModule
from segkit.data.folder import FolderDataset
from segkit.data.io import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    Inspection,
    image_tensor,
    read_image,
    read_mask,
    scaled_statistics,
)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of binary masks ``[N, H, W]`` as float32 ``[N, 4]`` ``x1, y1, x2, y2``.

    Coordinates are pixel edges: a mask covering only pixel ``(x, y)`` has the box
    ``(x, y, x + 1, y + 1)``. Every mask must have at least one pixel.
    """
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


def _objects(masks: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
    """``{"boxes", "labels", "masks"}`` of the masks that still have pixels."""
    keep = masks.any(axis=(1, 2))
    masks, labels = masks[keep], labels[keep]
    return {
        "boxes": torch.from_numpy(masks_to_boxes(masks)).reshape(-1, 4),
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
        "masks": torch.from_numpy(np.ascontiguousarray(masks)),
    }


def make_sample(
    image: np.ndarray,
    semantic: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    name: str,
    transform: Callable[..., dict[str, Any]] | None,
    mean: np.ndarray,
    std: np.ndarray,
    iscrowd: np.ndarray | None = None,
) -> dict[str, Any]:
    """Transform, drop emptied instances, derive boxes, normalise (see the module docstring).

    Args:
        image: uint8 RGB ``[H, W, 3]``.
        semantic: class map ``[H, W]``.
        masks: uint8 ``[N, H, W]`` binary instance masks.
        labels: ``[N]`` class of each instance.
        name: image stem.
        transform: albumentations transform or ``None``.
        mean, std: per-channel normalisation on the 0-255 scale.
        iscrowd: ``[N]`` bool, the masks that are crowd regions (go to ``"crowd"``);
            ``None``: none are.
    """
    if transform is not None:
        if len(masks):
            out = transform(image=image, mask=semantic, masks=masks)
            masks = np.asarray(out["masks"], dtype=np.uint8).reshape(-1, *out["mask"].shape[:2])
        else:  # albumentations cannot stack an empty list of masks
            out = transform(image=image, mask=semantic)
            masks = np.zeros((0, *out["mask"].shape[:2]), np.uint8)
        image, semantic = out["image"], out["mask"]
    labels = np.asarray(labels)
    crowd = np.zeros(len(masks), bool) if iscrowd is None else np.asarray(iscrowd, bool)
    return {
        "image": image_tensor(image, mean, std),
        "target": _objects(masks[~crowd], labels[~crowd]),
        "crowd": _objects(masks[crowd], labels[crowd]),
        "mask": torch.from_numpy(np.asarray(semantic, dtype=np.int64)),
        "name": name,
    }


class InstanceFolderDataset(FolderDataset):
    """Images, class masks and instance-id maps from a folder (see the module docstring).

    Args:
        root: folder with ``images/``, ``masks/``, ``instances/`` (and ``splits/``).
        num_classes: classes ``C`` including background 0.
        startup_check: as in :class:`FolderDataset` (the instance maps are checked too).
        **options: ``split``, ``ignore_index`` (class-mask value excluded from the semantic
            scores), ``transform`` (called with ``image``, ``mask``, ``masks``), ``mean``,
            ``std``, ``decoded_cache``, ``cache_dir`` (image and class mask only; the
            instance maps are read from their files), as in :class:`FolderDataset`.
    """

    def __init__(
        self, root: str | Path, num_classes: int, startup_check: int = 8, **options: Any
    ) -> None:
        if not (Path(root).expanduser() / "instances").is_dir():
            raise DataError(
                f"{Path(root).expanduser() / 'instances'} does not exist: an instance dataset "
                "needs instances/<stem>.png (instance id per pixel) next to images/ and masks/."
            )
        super().__init__(root, num_classes, startup_check=0, **options)
        if startup_check > 0:  # here, so the check includes the instance maps (inspect)
            self.check_sample(startup_check)

    def _instances(self, name: str, semantic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Binary masks ``[N, H, W]`` and labels ``[N]`` of ``instances/<name>.png``."""
        path = self.root / "instances" / f"{name}.png"
        if not path.is_file():
            raise DataError(f"image {name} has no instance map {path}; add it.")
        ids = read_mask(path)
        if ids.shape != semantic.shape:
            raise DataError(
                f"instance map {path} is {ids.shape[1]}x{ids.shape[0]} but its mask is "
                f"{semantic.shape[1]}x{semantic.shape[0]} (WxH); they must match."
            )
        masks, labels = [], []
        for instance in np.unique(ids[ids > 0]):
            region = ids == instance
            classes = np.unique(semantic[region])
            if len(classes) != 1 or classes[0] in (0, self.ignore_index):
                raise DataError(
                    f"instance {instance} of {path} covers classes {classes.tolist()} in "
                    f"masks/{name}.png; an instance must lie on one foreground class."
                )
            masks.append(region)
            labels.append(int(classes[0]))
        stacked = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, *ids.shape), np.uint8)
        return stacked, np.asarray(labels, np.int64)

    def inspect(self, index: int, decode_image: bool = True) -> Inspection:
        """:meth:`FolderDataset.inspect` plus the checks of the sample's instance map."""
        found = super().inspect(index, decode_image)
        if found.mask is not None and not found.problems:
            try:
                self._instances(self.samples[index][0], found.mask)
            except DataError as error:
                found.problems.append(str(error))
        return found

    def load_instances(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """Image ``[H, W, 3]``, class map ``[H, W]``, masks ``[N, H, W]``, labels ``[N]``."""
        image, semantic, name = self.load(index)
        masks, labels = self._instances(name, semantic)
        return image, semantic, masks, labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, semantic, masks, labels = self.load_instances(index)
        name = self.samples[index][0]
        return make_sample(
            image, semantic, masks, labels, name, self.transform, self.mean, self.std
        )


class CocoInstances(Dataset):
    """A COCO-format instance dataset (see the module docstring).

    Args:
        root: folder with ``annotations/instances_<split>.json`` and the images in
            ``<split>/`` (COCO 2017 layout: ``train2017/``, ``val2017/``).
        split: split name, e.g. ``"val2017"``.
        class_names: ``C`` names: ``background`` then the json's category names in
            increasing category-id order (checked).
        ignore_index: semantic-mask value of crowd regions.
        transform: albumentations transform (``image``, ``mask``, ``masks``).
        mean, std: per-channel normalisation on the 0-1 scale.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str],
        ignore_index: int = 255,
        transform: Callable[..., dict[str, Any]] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.root = Path(root).expanduser()
        self.image_dir = self.root / split
        self.annotation_file = self.root / "annotations" / f"instances_{split}.json"
        self.ignore_index = ignore_index
        self.transform = transform
        self.mean, self.std = scaled_statistics(mean, std)
        if not self.annotation_file.is_file():
            raise DataError(
                f"COCO annotations {self.annotation_file} do not exist. Set data.dataset.root "
                f"to a folder with annotations/instances_{split}.json and {split}/ images."
            )
        coco = json.loads(self.annotation_file.read_text())
        categories = sorted(coco.get("categories", []), key=lambda c: c["id"])
        names = ["background", *(c["name"] for c in categories)]
        if names != list(class_names):
            raise DataError(
                f"{self.annotation_file} has {len(categories)} categories {names[1:6]}...; "
                f"data.class_names must be background then these names in category-id order, "
                f"and data.num_classes={len(names)}. Got class_names {list(class_names)[:6]}..."
            )
        self.label_of = {c["id"]: label for label, c in enumerate(categories, start=1)}
        self.images = sorted(coco["images"], key=lambda i: i["id"])
        self.annotations: dict[int, list[dict[str, Any]]] = {i["id"]: [] for i in self.images}
        for annotation in coco.get("annotations", []):
            if annotation["image_id"] not in self.annotations:
                raise DataError(
                    f"{self.annotation_file}: annotation {annotation.get('id')} refers to "
                    f"image_id {annotation['image_id']}, which is not in 'images'."
                )
            self.annotations[annotation["image_id"]].append(annotation)

    def __len__(self) -> int:
        return len(self.images)

    def decode(self, annotation: dict[str, Any], height: int, width: int) -> np.ndarray:
        """Binary mask uint8 ``[H, W]`` of a polygon or RLE ``segmentation``."""
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list):  # polygons: one flat [x1, y1, x2, y2, ...] per part
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        return mask_utils.decode(rle).astype(np.uint8)

    def __getitem__(self, index: int) -> dict[str, Any]:
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        image = read_image(path)
        height, width = image.shape[:2]
        if (height, width) != (info["height"], info["width"]):
            message = (
                f"image {path} is {width}x{height} but {self.annotation_file} says "
                f"{info['width']}x{info['height']}; the annotations do not belong to this file."
            )
            if (width, height) == (info["height"], info["width"]):
                message += (
                    " The image carries an EXIF Orientation tag, which segkit applies (as "
                    "viewers do), while the json gives the stored size: the annotations were "
                    "made on the stored picture. Strip the tag (exiftool -Orientation=1 -n "
                    "<file>) or export the annotations on the displayed picture."
                )
            raise DataError(message)
        semantic = np.zeros((height, width), np.uint8)
        masks, labels, flags = [], [], []
        for annotation in self.annotations[info["id"]]:
            region = self.decode(annotation, height, width)
            if annotation["category_id"] not in self.label_of:
                raise DataError(
                    f"{self.annotation_file}: annotation {annotation.get('id')} has "
                    f"category_id {annotation['category_id']}, which is not in 'categories'."
                )
            label = self.label_of[annotation["category_id"]]
            flags.append(bool(annotation.get("iscrowd", 0)))
            if not flags[-1]:
                semantic[region.astype(bool)] = label  # later annotations on top
            masks.append(region)
            labels.append(label)
        stacked = np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)
        iscrowd = np.asarray(flags, bool)
        # ignored, even where an object annotation overlaps a crowd region
        semantic[stacked[iscrowd].any(axis=0)] = self.ignore_index
        name = Path(info["file_name"]).stem
        return make_sample(
            image,
            semantic,
            stacked,
            np.asarray(labels, np.int64),
            name,
            self.transform,
            self.mean,
            self.std,
            iscrowd,
        )


def collate_instances(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Batch samples as lists: ``{"image": [3,H,W] each, "target": dicts, "mask", "name"}``."""
    return {key: [sample[key] for sample in samples] for key in samples[0]}


class InstanceDataModule(SegmentationDataModule):
    """:class:`SegmentationDataModule` whose loaders batch with :func:`collate_instances`.

    Same arguments and the same loaders (samplers, seeding); ``dataset`` must return
    instance samples (see the module docstring).
    """

    collate = staticmethod(collate_instances)
