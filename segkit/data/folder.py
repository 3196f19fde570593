"""Any folder of images and class-index masks.

Layout::

    root/images/<stem>.png|jpg|jpeg   RGB (or grey, converted to RGB)
    root/masks/<stem>.png             single-channel PNG (mode L or P), value = class index
    root/splits/<split>.txt           optional: one stem per line

With ``split=None`` (or when ``root/splits/`` does not exist and ``split`` is not given)
every image is used. Mask values must be in ``[0, num_classes)`` or equal ``ignore_index``;
anything else stops with an error naming the file.

Each sample is ``{"image": float32 [3, H, W] normalised with mean/std (0-1 pixel scale),
"mask": int64 [H, W], "name": stem}``. The albumentations ``transform`` sees the uint8 image
and the mask, so geometric transforms keep them aligned; normalisation happens after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(ValueError):
    """A dataset file or folder is missing or holds values that cannot be right."""


def read_image(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB ``[H, W, 3]``, with a clear error if unreadable."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(
            f"cannot read image {path}: {error}. Replace or remove the file."
        ) from error


def read_mask(path: Path) -> np.ndarray:
    """Read a single-channel class-index PNG as ``[H, W]`` (uint8 or int32)."""
    try:
        with Image.open(path) as mask:
            if mask.mode not in ("L", "P", "I", "I;16"):
                raise DataError(
                    f"mask {path} has mode {mask.mode!r} ({len(mask.getbands())} channels); "
                    "masks must be single-channel class-index PNGs (mode L or P). Convert colour "
                    "masks to class indices first."
                )
            array = np.asarray(mask)  # mode P gives the palette indices, not colours
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"cannot read mask {path}: {error}. Replace or remove the file.") from error
    return array


def check_mask_values(
    mask: np.ndarray, num_classes: int, ignore_index: int | None, path: Path | str
) -> None:
    """Raise :class:`DataError` if ``mask`` holds a value that is no class and not ignored."""
    values = np.unique(mask)
    allowed = (values >= 0) & (values < num_classes)
    if ignore_index is not None:
        allowed |= values == ignore_index
    bad = values[~allowed]
    if bad.size:
        raise DataError(
            f"mask {path} has values {bad.tolist()[:10]} outside the class set "
            f"0..{num_classes - 1} (ignore_index={ignore_index}). Check num_classes, "
            "ignore_index, or that the masks hold class indices (e.g. trainIds, not labelIds)."
        )
    # A 0/255 binary mask passes the check above when 255 is the ignore value, and would
    # silently train on background only. Real void regions are thin borders, not half an image.
    if ignore_index == 255 and values.tolist() == [0, 255] and (mask == 255).mean() > 0.1:
        raise DataError(
            f"mask {path} holds only 0 and 255 with {(mask == 255).mean():.0%} of pixels 255: "
            "this looks like a binary 0/255 mask, whose foreground would be ignored. Store the "
            "foreground as 1 (class index), or map 255 to 1 with a label map."
        )


class FolderDataset(Dataset):
    """Images and class-index masks from a folder (see the module docstring).

    Args:
        root: dataset folder with ``images/`` and ``masks/``.
        num_classes: number of classes ``C`` (mask values ``0..C-1``).
        split: name of a list ``root/splits/<split>.txt``; ``None`` uses every image.
        ignore_index: mask value excluded from losses and metrics.
        transform: albumentations transform called as ``transform(image=..., mask=...)``.
        mean: per-channel mean on the 0-1 scale, subtracted after the transform.
        std: per-channel standard deviation on the 0-1 scale.
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int,
        split: str | None = None,
        ignore_index: int = 255,
        transform: Callable[..., dict[str, Any]] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.root = Path(root).expanduser()
        self.num_classes = num_classes
        self.split = split
        self.ignore_index = ignore_index
        self.transform = transform
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.std = np.asarray(std, dtype=np.float32) * 255.0
        self.samples = self._find_samples()

    def _find_samples(self) -> list[tuple[str, Path, Path]]:
        image_dir, mask_dir = self.root / "images", self.root / "masks"
        for folder in (self.root, image_dir, mask_dir):
            if not folder.is_dir():
                raise DataError(
                    f"data folder {folder} does not exist. Set the dataset root (e.g. "
                    "data.root=/path/to/dataset) to a folder holding images/ and masks/."
                )
        images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        if self.split is None:
            stems = sorted(images)
        else:
            split_file = self.root / "splits" / f"{self.split}.txt"
            if not split_file.is_file():
                raise DataError(
                    f"split list {split_file} does not exist. Create it (one image stem per "
                    "line) or set the split to null to use every image."
                )
            stems = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
            missing = [stem for stem in stems if stem not in images]
            if missing:
                raise DataError(
                    f"{split_file} names {len(missing)} images not in {image_dir}, e.g. "
                    f"{missing[:3]}. Fix the list or add the images."
                )
        if not stems:
            raise DataError(
                f"no images (*.png, *.jpg) found for split {self.split!r} in {image_dir}."
            )
        samples = []
        for stem in stems:
            mask_path = mask_dir / f"{stem}.png"
            if not mask_path.is_file():
                raise DataError(
                    f"image {images[stem]} has no mask {mask_path}. Add the mask or remove the "
                    "image (or leave it out of the split list)."
                )
            samples.append((stem, images[stem], mask_path))
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Read and check one sample: uint8 RGB ``[H, W, 3]``, mask ``[H, W]``, stem."""
        name, image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        mask = read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask "
                f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH); they must match."
            )
        check_mask_values(mask, self.num_classes, self.ignore_index, mask_path)
        return image, mask, name

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, name = self.load(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = (np.asarray(image, dtype=np.float32) - self.mean) / self.std
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.asarray(mask, dtype=np.int64)),
            "name": name,
        }
