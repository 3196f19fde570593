"""Any folder of images and class-index masks.

Layout::

    root/images/<stem>.png|jpg|jpeg   RGB (or grey, converted to RGB)
    root/masks/<stem>.png             single-channel PNG (mode L or P), value = class index
    root/splits/<split>.txt           optional: one stem per line

With ``split=None`` (or when ``root/splits/`` does not exist and ``split`` is not given)
every image is used. Mask values must be in ``[0, num_classes)`` or equal ``ignore_index``
after the optional ``label_map`` / ``reduce_zero_label``; anything else stops with an error
naming the file. Building the dataset checks a few samples at once (``startup_check``), so a
run never starts on broken files; ``python -m segkit.check_data`` checks them all.

Each sample is ``{"image": float32 [3, H, W] normalised with mean/std (0-1 pixel scale),
"mask": int64 [H, W], "name": stem}``. The albumentations ``transform`` sees the uint8 image
and the mask, so geometric transforms keep them aligned; normalisation happens after it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


def mask_problems(
    mask: np.ndarray, num_classes: int, ignore_index: int | None, path: Path | str
) -> list[str]:
    """Every reason why ``mask`` (class indices) cannot be right, as messages naming ``path``.

    Finds values that are no class and not ignored, and binary 0/255 masks whose foreground
    would be ignored. An empty list means the mask is fine.
    """
    values = np.unique(mask)
    allowed = (values >= 0) & (values < num_classes)
    if ignore_index is not None:
        allowed |= values == ignore_index
    bad = values[~allowed]
    problems = []
    if bad.size:
        problems.append(
            f"mask {path} has values {bad.tolist()[:10]} outside the class set "
            f"0..{num_classes - 1} (ignore_index={ignore_index}). Check num_classes, "
            "ignore_index, or that the masks hold class indices (e.g. trainIds, not labelIds)."
        )
    # A 0/255 binary mask passes the check above when 255 is the ignore value, and would
    # silently train on background only. Real void regions are thin borders, not half an image.
    if ignore_index == 255 and values.tolist() == [0, 255] and (mask == 255).mean() > 0.1:
        problems.append(
            f"mask {path} holds only 0 and 255 with {(mask == 255).mean():.0%} of pixels 255: "
            "this looks like a binary 0/255 mask, whose foreground would be ignored. Store the "
            "foreground as 1 (class index), or map 255 to 1 with a label map."
        )
    return problems


def check_mask_values(
    mask: np.ndarray, num_classes: int, ignore_index: int | None, path: Path | str
) -> None:
    """Raise :class:`DataError` if ``mask`` holds a value that is no class and not ignored."""
    problems = mask_problems(mask, num_classes, ignore_index, path)
    if problems:
        raise DataError(problems[0])


def label_lut(
    label_map: Mapping[int, int] | None, reduce_zero_label: bool, ignore_index: int, size: int
) -> np.ndarray | None:
    """Lookup table ``lut[raw value] -> class index`` of length ``size``, or ``None`` (identity).

    ``label_map`` is applied first (unlisted values stay), then ``reduce_zero_label`` maps 0
    to ``ignore_index`` and every other value ``v`` to ``v - 1`` (ADE20K-style masks, where 0
    is "other").
    """
    if not label_map and not reduce_zero_label:
        return None
    lut = np.arange(size, dtype=np.int64)
    for raw, index in (label_map or {}).items():
        if 0 <= int(raw) < size:
            lut[int(raw)] = int(index)
    if reduce_zero_label:
        zero = lut == 0
        lut = np.where(lut == ignore_index, ignore_index, lut - 1)
        lut[zero] = ignore_index
    return lut


class FolderDataset(Dataset):
    """Images and class-index masks from a folder (see the module docstring).

    Subclasses for official layouts (Cityscapes, VOC, CamVid) override :meth:`find_samples`
    and, where the files hold something other than class indices, :meth:`read_raw_mask`
    or :meth:`map_mask`; checks, transforms and normalisation are shared.

    Args:
        root: dataset folder with ``images/`` and ``masks/``.
        num_classes: number of classes ``C`` (mask values ``0..C-1``).
        split: name of a list ``root/splits/<split>.txt``; ``None`` uses every image.
        ignore_index: mask value excluded from losses and metrics.
        transform: albumentations transform called as ``transform(image=..., mask=...)``.
        mean: per-channel mean on the 0-1 scale, subtracted after the transform.
        std: per-channel standard deviation on the 0-1 scale.
        reduce_zero_label: the masks use 0 for "unlabelled" and ``1..C`` for the classes
            (ADE20K style): 0 becomes ``ignore_index``, every other value ``v`` becomes ``v-1``.
        label_map: ``{value in file: class index}``, applied before ``reduce_zero_label``;
            unlisted values stay, e.g. ``{255: 1}`` for 0/255 binary masks.
        startup_check: number of samples (evenly spread) read and checked when the dataset
            is built, so a run stops at once on broken files; 0 skips the check.
            ``python -m segkit.check_data`` checks every file.
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
        reduce_zero_label: bool = False,
        label_map: Mapping[int, int] | None = None,
        startup_check: int = 8,
    ) -> None:
        self.root = Path(root).expanduser()
        self.num_classes = num_classes
        self.split = split
        self.ignore_index = ignore_index
        self.transform = transform
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.std = np.asarray(std, dtype=np.float32) * 255.0
        self.reduce_zero_label = reduce_zero_label
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        self.samples = self.find_samples()
        self._check_unique_names()
        if startup_check > 0:
            self.check_sample(startup_check)

    def find_samples(self) -> list[tuple[str, Path, Path]]:
        """The ``(name, image path, mask path)`` of every sample of ``self.split``."""
        image_dir, mask_dir = self.root / "images", self.root / "masks"
        for folder in (self.root, image_dir, mask_dir):
            if not folder.is_dir():
                raise DataError(
                    f"data folder {folder} does not exist. Set the dataset root (e.g. "
                    "data.root=/path/to/dataset) to a folder holding images/ and masks/."
                )
        images: dict[str, Path] = {}
        clashes = []
        for path in sorted(image_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.stem in images:
                clashes.append(f"{images[path.stem].name} and {path.name}")
            images[path.stem] = path
        if clashes:
            raise DataError(
                f"{image_dir} holds {len(clashes)} images with the same stem, e.g. "
                f"{clashes[:3]}: a stem must name one image. Remove or rename the duplicates."
            )
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
            if not stems:
                raise DataError(
                    f"split list {split_file} is empty: add one image stem per line, or "
                    "choose another split."
                )
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
        samples = [(stem, images[stem], mask_dir / f"{stem}.png") for stem in stems]
        missing = [image for _, image, mask in samples if not mask.is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} images have no mask in {mask_dir}, e.g. image {missing[0]} "
                f"has no mask {mask_dir / (missing[0].stem + '.png')}. Add the masks or remove "
                "the images (or leave them out of the split list)."
            )
        return samples

    def _check_unique_names(self) -> None:
        seen: dict[str, Path] = {}
        for name, image, _ in self.samples:
            if name in seen:
                raise DataError(
                    f"split {self.split!r} of {self.root} lists sample {name!r} twice "
                    f"({seen[name]} and {image}); each image must appear once, or it "
                    "counts twice in the metrics. Remove the duplicate line."
                )
            seen[name] = image

    def read_raw_mask(self, path: Path) -> np.ndarray:
        """The label file's values as stored, ``[H, W]``."""
        return read_mask(path)

    def map_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Class indices ``[H, W]`` from stored values (``label_map``, ``reduce_zero_label``)."""
        size = max(256, int(raw.max()) + 1) if raw.size else 256
        lut = label_lut(self.label_map, self.reduce_zero_label, self.ignore_index, size)
        return raw if lut is None else lut[raw]

    def inspect(
        self, index: int, decode_image: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
        """Read and check one sample without raising.

        Args:
            index: sample index.
            decode_image: decode the whole image (finds truncated files); ``False`` reads
                only its header for the size.

        Returns:
            ``(raw mask, class-index mask, problems)``; the masks are ``None`` when the
            label file cannot be read, ``problems`` lists messages naming the files.
        """
        _, image_path, mask_path = self.samples[index]
        problems: list[str] = []
        image_size = None
        try:
            if decode_image:
                image_size = read_image(image_path).shape[:2]
            else:
                with Image.open(image_path) as image:
                    image_size = (image.height, image.width)
        except (DataError, UnidentifiedImageError, OSError) as error:
            problems.append(
                str(error) if isinstance(error, DataError) else f"{image_path}: {error}"
            )
        try:
            raw = self.read_raw_mask(mask_path)
        except DataError as error:
            return None, None, [*problems, str(error)]
        if image_size is not None and tuple(image_size) != raw.shape[:2]:
            problems.append(
                f"image {image_path} is {image_size[1]}x{image_size[0]} but its mask "
                f"{mask_path} is {raw.shape[1]}x{raw.shape[0]} (WxH); they must match."
            )
        mask = self.map_mask(raw, mask_path)
        problems += mask_problems(mask, self.num_classes, self.ignore_index, mask_path)
        return raw, mask, problems

    def check_sample(self, count: int) -> None:
        """Check ``count`` evenly spread samples; raise one :class:`DataError` listing all."""
        indices = np.unique(np.linspace(0, len(self) - 1, min(count, len(self))).round())
        problems = [p for i in indices.astype(int) for p in self.inspect(int(i))[2]]
        if problems:
            listed = "\n  ".join(problems)
            raise DataError(
                f"{len(problems)} problem(s) in {len(indices)} checked samples of split "
                f"{self.split!r} ({self.root}):\n  {listed}\nFix the files; "
                "python -m segkit.check_data data=<name> lists the problems of every file."
            )

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Read and check one sample: uint8 RGB ``[H, W, 3]``, mask ``[H, W]``, stem."""
        name, image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        mask = self.map_mask(self.read_raw_mask(mask_path), mask_path)
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
