"""Any folder of images and class-index masks.

Layout::

    root/images/<stem>.<ext>    .png .jpg .jpeg .bmp .tif .tiff .webp (any case)
    root/masks/<stem>.<ext>     lossless, single-channel: .png (or .bmp .tif .tiff, lossless
                                .webp); pixel value = class index
    root/splits/<split>.txt     one stem (or file name) per line, for each split a run uses

``split=None`` uses every image; a named split needs its list, and a missing list stops
with the command that writes them (``python -m segkit.data.folder <root> --val 0.2``). Mask
values must be in ``[0, num_classes)`` or equal ``ignore_index`` after the optional
``label_map`` / ``reduce_zero_label``; anything else stops with an error naming the file.
Building the dataset checks a few samples at once (``startup_check``), so a run never starts
on broken files; ``python -m segkit.cli.check_data`` checks them all.

Every file is read the way an image viewer shows it, the same way in training, check_data and
predict.py (:func:`read_image`, :func:`read_mask`):

* EXIF Orientation is applied (``PIL.ImageOps.exif_transpose``) to images *and* masks, so a
  phone photo and the mask drawn over its displayed picture line up. (TIFF files: Pillow
  applies their orientation tag itself while loading.)
* Images become uint8 RGB: grey, palette, CMYK and 1-bit images are converted; an alpha
  channel is dropped (the stored colour of transparent pixels is kept); 16-bit images are
  scaled to 8 bits by ``value >> 8``, as Pillow does for 16-bit RGB PNGs; float images stop
  (their scale is unknown).
* Masks keep their stored values: mode ``L``, ``P`` (the palette *indices*, never the
  colours), ``1`` (1-bit: classes 0/1), ``I;16`` and ``I`` (16/32-bit indices). Colour or
  alpha masks, float masks and lossy files (JPEG, lossy WebP, JPEG-compressed TIFF) stop
  with the fix: a lossy mask has changed label values along every edge.
* Hidden files (``.DS_Store``, macOS ``._img.png``) are skipped; a stem with two files in one
  folder (``img.png`` and ``img.jpg``) stops, since a stem must name one image.

Each sample is ``{"image": float32 [C, H, W] normalised with mean/std (0-1 pixel scale),
"mask": int64 [H, W], "name": stem}``, ``C`` the number of mean/std values: 3 (RGB), or 1
(greyscale, converted after the transform: :func:`image_tensor`). The albumentations
``transform`` sees the uint8 RGB image and the mask, so geometric transforms keep them
aligned; normalisation happens after it.

``decoded_cache=True`` reads samples from a decoded copy of the split instead of the files
(:mod:`segkit.data.decoded_cache`): built once under ``cache_dir`` from the files as read
above (label mapping applied, every sample checked), rebuilt when any source file's path,
size or modification time or a reading setting changes, and giving the same image and mask
arrays as the files, before the same transform.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import PIL
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from segkit.data.decoded_cache import DecodedCache, build_lock

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".webp")  # lossless-capable formats
LOSSY_SUFFIXES = (".jpg", ".jpeg")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ORIENTATION = int(ExifTags.Base.Orientation)  # EXIF tag 274
MASK_MODES = ("L", "P", "1", "I", "I;16", "I;16L", "I;16B", "I;16N")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)
# Bump when read_image, read_mask or map_mask change what they return, so decoded caches
# built by older code are not read.
DECODE_VERSION = 1
SPACE_MARGIN = 1 << 30  # bytes a decoded-cache build leaves free on its disk

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset file or folder is missing or holds values that cannot be right."""


class DataWarning(UserWarning):
    """Data that works but looks wrong (shown at start-up, listed by check_data)."""


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation (1-8) that reading ``image`` applies; 1 = as stored.

    Read from the header only. A PNG's EXIF chunk after the pixel data would need a full
    decode and is ignored; TIFF orientation Pillow applies itself while loading (and already
    reports the displayed size), so it counts as 1 here.
    """
    if image.format == "TIFF" or (image.format == "PNG" and "exif" not in image.info):
        return 1
    try:
        value = int(image.getexif().get(ORIENTATION, 1) or 1)
    except (TypeError, ValueError, SyntaxError, OSError):  # a damaged EXIF block
        return 1
    return value if 1 <= value <= 8 else 1


def oriented(image: Image.Image) -> Image.Image:
    """``image`` as displayed: the EXIF orientation applied (pixels permuted, never blended)."""
    if exif_orientation(image) == 1:
        return image
    return ImageOps.exif_transpose(image)


def _is_lossy(image: Image.Image, path: Path) -> bool:
    if image.format == "JPEG" or path.suffix.lower() in LOSSY_SUFFIXES:
        return True
    if image.format == "TIFF":
        return str(image.info.get("compression", "")).lower() in ("jpeg", "tiff_jpeg")
    if image.format == "WEBP":
        return _webp_is_lossy(path)
    return False


def _webp_is_lossy(path: Path) -> bool:
    """A WebP file's first image chunk: ``VP8 `` is lossy, ``VP8L`` lossless (RIFF layout)."""
    data = path.read_bytes()
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = (
            data[offset : offset + 4],
            int.from_bytes(data[offset + 4 : offset + 8], "little"),
        )
        if chunk == b"VP8L":
            return False
        if chunk == b"VP8 ":
            return True
        offset += 8 + size + (size & 1)
    return True  # no image chunk found: do not trust it as a label file


def greyscale(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 1]`` luma of a uint8 RGB ``[H, W, 3]`` image, as Pillow's ``convert("L")``
    computes it (ITU-R 601-2: ``(19595 R + 38470 G + 7471 B + 2**15) >> 16``), so a grey
    image read as RGB gets its stored values back exactly."""
    rgb = np.asarray(image, dtype=np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


def image_tensor(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """float32 ``[C, H, W]`` of a uint8 RGB ``[H, W, 3]`` image, normalised as
    ``(pixel - mean) / std`` with ``mean``/``std`` per channel on the 0-255 scale
    (:func:`scaled_statistics`). ``C`` is the number of statistics: 3 keeps RGB, 1 converts
    the image to greyscale first (:func:`greyscale`; ``data.in_channels: 1``). Every dataset
    and predict.py normalise through this."""
    pixels = np.asarray(image)
    if np.size(mean) == 1 and pixels.ndim == 3 and pixels.shape[2] == 3:
        pixels = greyscale(pixels)
    normalised = (pixels.astype(np.float32) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def scaled_statistics(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Config ``mean``/``std`` (0-1 pixel scale) as float32 arrays on the 0-255 scale."""
    return np.asarray(mean, np.float32) * 255.0, np.asarray(std, np.float32) * 255.0


def read_image(path: Path) -> np.ndarray:
    """Read an image file as displayed: uint8 RGB ``[H, W, 3]`` (see the module docstring).

    Raises:
        DataError: the file cannot be read, or holds float pixels.
    """
    try:
        with Image.open(path) as image:
            image = oriented(image)
            if image.mode == "F":
                raise DataError(
                    f"image {path} holds floating-point pixels (mode 'F'), whose scale segkit "
                    "cannot know. Save it as an 8-bit (or 16-bit) PNG."
                )
            if image.mode in SIXTEEN_BIT_MODES:
                values = np.asarray(image).astype(np.int64)
                if values.min() < 0 or values.max() > 65535:
                    raise DataError(
                        f"image {path} holds 32-bit values outside 0..65535; save it as an "
                        "8-bit or 16-bit PNG."
                    )
                grey = (values >> 8).astype(np.uint8)  # the top byte, as Pillow reads 16-bit RGB
                return np.repeat(grey[..., None], 3, axis=-1)
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")  # the palette's transparency needs RGBA first
            return np.asarray(image.convert("RGB"))
    except READ_ERRORS as error:
        if isinstance(error, DataError):
            raise
        raise DataError(
            f"cannot read image {path}: {error}. Replace or remove the file."
        ) from error


def image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image as :func:`read_image` returns it, from the header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if exif_orientation(image) in (5, 6, 7, 8):  # a quarter turn swaps the sides
                width, height = height, width
    except READ_ERRORS as error:
        raise DataError(
            f"cannot read image {path}: {error}. Replace or remove the file."
        ) from error
    return height, width


def read_mask(path: Path) -> np.ndarray:
    """Read a single-channel class-index mask as displayed, ``[H, W]`` (uint8/uint16/int32).

    Raises:
        DataError: unreadable, lossy, colour/alpha or float masks (see the module docstring).
    """
    try:
        with Image.open(path) as mask:
            if _is_lossy(mask, path):
                raise DataError(
                    f"mask {path} is stored lossy ({mask.format}): lossy compression changes "
                    "the label values along every edge. Masks must be lossless PNG: export "
                    "them again as PNG from the annotation source (converting this file would "
                    "keep the damaged edges)."
                )
            if mask.mode not in MASK_MODES:
                raise DataError(
                    f"mask {path} has mode {mask.mode!r} ({len(mask.getbands())} channels); "
                    "masks must be single-channel class-index PNGs (mode L or P), value = "
                    "class index. Convert colour masks to class indices first."
                )
            mask = oriented(mask)
            array = np.asarray(mask)  # mode P gives the palette indices, not colours
    except READ_ERRORS as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"cannot read mask {path}: {error}. Replace or remove the file.") from error
    if array.dtype == bool:  # 1-bit masks: classes 0 and 1
        return array.astype(np.uint8)
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:
        return array.astype(np.uint16)  # native byte order for I;16B
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise DataError(
            f"mask {path} holds negative values (min {array.min()}); class indices are >= 0."
        )
    return array


def image_files(
    folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> tuple[dict[str, Path], list[Path]]:
    """The files of ``folder`` by stem, and the (non-hidden) files skipped for their suffix.

    Suffixes match in any case (``IMG.JPG``); hidden files are ignored.

    Raises:
        DataError: two files share a stem (``img.png`` and ``img.jpg``).
    """
    files: dict[str, Path] = {}
    skipped, clashes = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            skipped.append(path)
            continue
        if path.stem in files:
            clashes.append(f"{files[path.stem].name} and {path.name}")
        files[path.stem] = path
    if clashes:
        raise DataError(
            f"{folder} holds {len(clashes)} files with the same stem, e.g. {clashes[:3]}: a "
            "stem must name one file. Remove or rename the duplicates."
        )
    return files, skipped


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
    # (Binary masks with less foreground are caught on the whole training split, see
    # segkit.data.checks.label_findings.)
    if ignore_index == 255 and values.tolist() == [0, 255] and (mask == 255).mean() > 0.1:
        problems.append(
            f"mask {path} holds only 0 and 255 with {(mask == 255).mean():.0%} of pixels 255: "
            "this looks like a binary 0/255 mask, whose foreground would be ignored. Store the "
            "foreground as 1 (class index), or map 255 to 1: data.dataset.label_map={255:1}."
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


def split_command(root: Path | str) -> str:
    """The shell command that writes ``root/splits/{train,val}.txt`` (:func:`write_splits`)."""
    return f"python -m segkit.data.folder {root} --val 0.2"


def write_splits(
    root: Path | str, val: float = 0.2, test: float = 0.0, seed: int = 0
) -> dict[str, list[str]]:
    """Write ``root/splits/{train,val[,test]}.txt`` from the stems of ``root/images``.

    The stems are shuffled with ``seed`` and cut by the fractions ``val`` and ``test`` (each
    non-empty split gets at least one image). Existing lists are never overwritten.

    Returns:
        ``{split name: stems}`` as written.

    Raises:
        DataError: ``images/`` is missing or empty, a list exists already, or the fractions
            leave no training image.
    """
    root = Path(root).expanduser()
    if not (root / "images").is_dir():
        raise DataError(f"{root / 'images'} does not exist; give the dataset root.")
    stems = sorted(image_files(root / "images")[0])
    counts = {
        name: max(1, round(fraction * len(stems))) if fraction > 0 else 0
        for name, fraction in (("val", val), ("test", test))
    }
    if not stems or sum(counts.values()) >= len(stems):
        raise DataError(
            f"{root / 'images'} holds {len(stems)} images: too few for val={val}, test={test} "
            "and at least one training image."
        )
    random.Random(seed).shuffle(stems)
    splits = {"val": stems[: counts["val"]]}
    splits["test"] = stems[counts["val"] : counts["val"] + counts["test"]]
    splits["train"] = stems[counts["val"] + counts["test"] :]
    splits = {name: sorted(listed) for name, listed in splits.items() if listed}
    write_split_lists(root, splits)
    return splits


def write_split_lists(root: Path, splits: Mapping[str, Sequence[str]]) -> None:
    """Write each ``{name: stems}`` as ``root/splits/<name>.txt``, one stem per line.

    Raises:
        DataError: one of the lists exists already (none is written then).
    """
    folder = root / "splits"
    existing = [str(folder / f"{name}.txt") for name in splits if (folder / f"{name}.txt").exists()]
    if existing:
        raise DataError(f"{existing} exist already; remove them to write new split lists.")
    folder.mkdir(exist_ok=True)
    for name, listed in splits.items():
        (folder / f"{name}.txt").write_text("\n".join(listed) + "\n")


class Inspection(NamedTuple):
    """What :meth:`FolderDataset.inspect` found in one sample.

    ``raw`` and ``mask`` (stored values and class indices, ``[H, W]``) are ``None`` when the
    label file cannot be read; ``problems`` are definite errors, ``notes`` facts worth a line
    in check_data (EXIF orientation applied, 16-bit image scaled, alpha dropped), both as
    messages naming the files. ``palette`` maps each index of a palette (mode ``P``) mask to
    its RGB colour, so check_data can find masks whose palettes disagree.
    """

    raw: np.ndarray | None
    mask: np.ndarray | None
    problems: list[str]
    notes: list[str]
    palette: dict[int, tuple[int, int, int]] | None = None


@runtime_checkable
class InspectableDataset(Protocol):
    """A dataset whose files ``python -m segkit.cli.check_data`` and the class-weight counts
    read one by one, beyond ``len``/``[i]``: :class:`FolderDataset` and every dataset built
    on it. Other datasets are checked from ``dataset[i]["mask"]`` only.

    Attributes:
        samples: ``(name, image path, mask path)`` of every sample, in index order.
    """

    samples: list[tuple[str, Path, Path]]

    def __len__(self) -> int: ...

    def inspect(self, index: int, decode_image: bool = True) -> Inspection:
        """Read and check sample ``index`` without raising (:meth:`FolderDataset.inspect`)."""
        ...


def mask_palette(path: Path, indices: np.ndarray) -> dict[int, tuple[int, int, int]] | None:
    """``{index: RGB}`` of the ``indices`` in a palette (mode ``P``) file, else ``None``."""
    try:
        with Image.open(path) as mask:
            if mask.mode != "P":
                return None
            flat = mask.getpalette() or []
    except READ_ERRORS:
        return None
    colours = {}
    for index in indices.tolist():
        rgb = flat[3 * index : 3 * index + 3]
        colours[int(index)] = tuple(rgb) if len(rgb) == 3 else (0, 0, 0)
    return colours


def folder_samples(
    root: Path, split: str | None
) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    """The ``(name, image path, mask path)`` of every sample of ``split`` in the
    ``images/``/``masks/`` layout of ``root``, and the files skipped for their suffix.

    Raises:
        DataError: a folder or split list is missing, an image has no mask, a mask is JPEG.
    """
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (root, image_dir, mask_dir):
        if not folder.is_dir():
            hint = ""
            if root.is_dir() and image_files(root)[0]:
                hint = f" {root} itself holds images: give its parent folder."
            raise DataError(
                f"data folder {folder} does not exist. Set data.dataset.root=/path/to/"
                f"dataset, a folder holding images/ and masks/.{hint}"
            )
    images, skipped = image_files(image_dir)
    masks, skipped_masks = image_files(mask_dir, MASK_SUFFIXES + LOSSY_SUFFIXES)
    stems = sorted(images) if split is None else _read_split_list(root, split, images, image_dir)
    if not stems:
        raise DataError(
            f"no images ({', '.join('*' + s for s in IMAGE_SUFFIXES)}) found for split "
            f"{split!r} in {image_dir}."
        )
    missing = [images[stem] for stem in stems if stem not in masks]
    if missing:
        raise DataError(
            f"{len(missing)} images have no mask in {mask_dir}, e.g. image {missing[0]} "
            f"has no mask {mask_dir / (missing[0].stem + '.png')}. Add the masks or remove "
            "the images (or leave them out of the split list)."
        )
    lossy = [masks[stem] for stem in stems if masks[stem].suffix.lower() in LOSSY_SUFFIXES]
    if lossy:
        raise DataError(
            f"{len(lossy)} mask(s) are JPEG files, e.g. {lossy[0]}: JPEG is lossy and "
            "changes the label values along every edge. Masks must be lossless PNG: export "
            "them again as PNG from the annotation source (converting the JPEGs would keep "
            "the damaged edges)."
        )
    return [(stem, images[stem], masks[stem]) for stem in stems], skipped + skipped_masks


def _read_split_list(
    root: Path, split: str, images: Mapping[str, Path], image_dir: Path
) -> list[str]:
    split_file = root / "splits" / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(
            f"split list {split_file} does not exist. Each split a run uses "
            "(data.train_split, data.val_split, data.test_split) needs "
            f"splits/<split>.txt with one image stem per line; "
            f"{split_command(root)} writes train.txt and val.txt. Or set that split "
            "to null to use every image."
        )
    stems = []
    for line in split_file.read_text().splitlines():
        entry = line.strip()
        if not entry:
            continue
        name = Path(entry).name  # "images/a.png" and "a.png" name the stem "a"
        if name not in images and Path(name).suffix.lower() in IMAGE_SUFFIXES:
            name = Path(name).stem
        stems.append(name)
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
    return stems


class FolderDataset(Dataset):
    """Images and class-index masks from a folder (see the module docstring).

    The datasets of official layouts (Cityscapes, VOC, CamVid) are this class given their
    own ``samples`` and, where the files hold something other than class indices, their
    ``read_raw_mask``/``map_raw_mask`` functions; checks, transforms, normalisation and the
    decoded cache are shared. The constructor calls no method a subclass overrides.

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
            ``python -m segkit.cli.check_data`` checks every file.
        decoded_cache: read samples from a decoded copy of the split under ``cache_dir``
            (built on first use, see :meth:`open_decoded_cache`) instead of decoding files.
        cache_dir: folder for decoded caches (``<cache_dir>/decoded/``), needed when
            ``decoded_cache`` is on (the configs give ``${paths.data_dir}/cache``, so the
            data folder itself is never written to).
        samples: the ``(name, image path, mask path)`` of every sample; ``None`` reads the
            ``images/``/``masks/`` layout of ``root`` (:func:`folder_samples`).
        read_raw_mask: ``path -> [H, W]`` stored label values (default :func:`read_mask`).
        map_raw_mask: ``(values [H, W], path) -> values [H, W]``, applied to the stored
            values before ``label_map``/``reduce_zero_label`` (e.g. Cityscapes labelIds to
            trainIds); ``None`` keeps them.
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
        decoded_cache: bool = False,
        cache_dir: str | Path | None = None,
        *,
        samples: Sequence[tuple[str, Path, Path]] | None = None,
        read_raw_mask: Callable[[Path], np.ndarray] = read_mask,
        map_raw_mask: Callable[[np.ndarray, Path], np.ndarray] | None = None,
    ) -> None:
        if decoded_cache and cache_dir is None:
            raise ValueError(
                "decoded_cache=True needs a cache_dir for the decoded files: set "
                "data.dataset.cache_dir (the shipped configs use ${data.cache_dir}), or "
                "data.dataset.decoded_cache=false."
            )
        self.root = Path(root).expanduser()
        self.num_classes = num_classes
        self.split = split
        self.ignore_index = ignore_index
        self.transform = transform
        self.mean, self.std = scaled_statistics(mean, std)
        self.reduce_zero_label = reduce_zero_label
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        self.decoded_cache = decoded_cache
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self._decoded: DecodedCache | None = None  # opened on first use
        self._read_raw_mask = read_raw_mask
        self._map_raw_mask = map_raw_mask
        self.skipped_files: list[Path] = []  # files ignored for their suffix (check_data)
        if samples is None:
            samples, self.skipped_files = folder_samples(self.root, split)
        self.samples = list(samples)
        self._check_unique_names()
        if startup_check > 0:
            self.check_sample(startup_check)

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
        """The label file's values as stored (EXIF orientation applied), ``[H, W]``."""
        return self._read_raw_mask(path)

    def map_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Class indices ``[H, W]`` from stored values (``map_raw_mask``, then ``label_map``
        and ``reduce_zero_label``)."""
        if self._map_raw_mask is not None:
            raw = self._map_raw_mask(raw, path)
        size = max(256, int(raw.max()) + 1) if raw.size else 256
        lut = label_lut(self.label_map, self.reduce_zero_label, self.ignore_index, size)
        return raw if lut is None else lut[raw]

    def _size_mismatch(
        self, image_path: Path, image_hw: tuple[int, int], mask_path: Path, mask_hw: tuple
    ) -> str:
        message = (
            f"image {image_path} is {image_hw[1]}x{image_hw[0]} but its mask {mask_path} is "
            f"{mask_hw[1]}x{mask_hw[0]} (WxH); they must match."
        )
        try:
            with Image.open(image_path) as image:
                orientation = exif_orientation(image)
        except READ_ERRORS:
            return message
        if orientation in (5, 6, 7, 8) and tuple(mask_hw) == tuple(image_hw[::-1]):
            message += (
                f" The image carries EXIF Orientation {orientation}, which segkit applies (as "
                "every viewer does), while the mask has the stored, unrotated size: it was "
                "drawn on the stored picture. Rotate the masks to the displayed picture, or "
                "strip the images' tag (exiftool -Orientation=1 -n <file>) if the stored "
                "picture is the right one."
            )
        return message

    def inspect(self, index: int, decode_image: bool = True) -> Inspection:
        """Read and check one sample without raising.

        Args:
            index: sample index.
            decode_image: decode the whole image (finds truncated files); ``False`` reads
                only its header for the size.

        Returns:
            An :class:`Inspection`: the stored and class-index masks, problems and notes.
        """
        _, image_path, mask_path = self.samples[index]
        problems: list[str] = []
        notes: list[str] = []
        image_hw = None
        try:
            with Image.open(image_path) as header:
                orientation, mode = exif_orientation(header), header.mode
                transparent = "A" in mode or "transparency" in header.info
            if orientation != 1:
                notes.append(
                    f"image {image_path} carries EXIF Orientation {orientation}: read as "
                    "displayed (rotated/flipped); its mask must match the displayed picture"
                )
            if decode_image:
                image_hw = read_image(image_path).shape[:2]
                if mode in SIXTEEN_BIT_MODES:
                    notes.append(f"image {image_path} is 16-bit (mode {mode}): read as value >> 8")
                if transparent:
                    notes.append(
                        f"image {image_path} has transparency (mode {mode}): alpha dropped, "
                        "transparent pixels keep their stored colour"
                    )
            else:
                image_hw = image_size(image_path)
        except DataError as error:
            problems.append(str(error))
        except READ_ERRORS as error:
            problems.append(f"cannot read image {image_path}: {error}")
        try:
            raw = self.read_raw_mask(mask_path)
        except DataError as error:
            return Inspection(None, None, [*problems, str(error)], notes)
        if image_hw is not None and tuple(image_hw) != raw.shape[:2]:
            problems.append(self._size_mismatch(image_path, image_hw, mask_path, raw.shape[:2]))
        mask = self.map_mask(raw, mask_path)
        problems += mask_problems(mask, self.num_classes, self.ignore_index, mask_path)
        palette = mask_palette(mask_path, np.unique(raw)) if decode_image else None
        return Inspection(raw, mask, problems, notes, palette)

    def check_sample(self, count: int) -> None:
        """Check ``count`` evenly spread samples; raise one :class:`DataError` listing all."""
        indices = np.unique(np.linspace(0, len(self) - 1, min(count, len(self))).round())
        problems = [p for i in indices.astype(int) for p in self.inspect(int(i)).problems]
        if problems:
            listed = "\n  ".join(problems)
            raise DataError(
                f"{len(problems)} problem(s) in {len(indices)} checked samples of split "
                f"{self.split!r} ({self.root}):\n  {listed}\nFix the files; "
                "python -m segkit.cli.check_data data=<name> lists the problems of every file."
            )

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """One sample: uint8 RGB ``[H, W, 3]``, class-index mask ``[H, W]``, stem.

        From the decoded cache when ``decoded_cache`` is on (the same arrays as
        :meth:`decode`, checked when the cache was built), else decoded from the files.
        """
        if self.decoded_cache:
            image, mask = (self._decoded or self.open_decoded_cache()).read(index)
            return image, mask, self.samples[index][0]
        return self.decode(index)

    def decoded_cache_key(self) -> dict[str, Any]:
        """Everything the decoded arrays depend on; a cache is reused only for an equal key.

        The source files (path, size, modification time of every image and label file, as
        one digest), the dataset class and split, the reading code (:data:`DECODE_VERSION`,
        Pillow's version: EXIF and mode handling) and the label settings (``label_map``,
        ``reduce_zero_label``, ``ignore_index``, and ``num_classes``, which the build's value
        check uses). A subclass whose reading depends on more settings adds them.
        """
        files = []
        for name, image_path, mask_path in self.samples:
            entry: list[Any] = [name]
            for path in (image_path, mask_path):
                status = Path(path).stat()
                entry += [str(Path(path).resolve()), status.st_size, status.st_mtime_ns]
            files.append(entry)
        dataset_class = type(self)
        return {
            "decode_version": DECODE_VERSION,
            "pillow": PIL.__version__,
            "dataset": f"{dataset_class.__module__}.{dataset_class.__qualname__}",
            "split": self.split,
            "num_classes": int(self.num_classes),
            "ignore_index": int(self.ignore_index),
            "label_map": sorted(self.label_map.items()),
            "reduce_zero_label": bool(self.reduce_zero_label),
            "samples": len(files),
            "files_sha1": hashlib.sha1(json.dumps(files).encode()).hexdigest(),
        }

    def open_decoded_cache(self) -> DecodedCache:
        """This split's decoded cache, built first if no cache matches the current files.

        Called by :meth:`load` on first use; the data module calls it in ``setup`` so a build
        happens at start-up in the main process (DDP ranks: one builds, the others wait for
        it). A build decodes and checks every sample (:meth:`decode`) into
        ``<cache_dir>/decoded/<Dataset>-<split>-<key digest>/``. Caches of older file
        versions stay (another run may read them); delete ``<cache_dir>/decoded`` to free
        the space.

        Raises:
            DataError: a sample cannot be read or checked, or the disk lacks the space.
        """
        if self._decoded is not None:
            return self._decoded
        if self.cache_dir is None:
            raise ValueError("open_decoded_cache needs cache_dir")
        key = self.decoded_cache_key()
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        folder = (
            self.cache_dir / "decoded" / f"{type(self).__name__}-{self.split or 'all'}-{digest}"
        )
        cache = DecodedCache.open(folder, key)
        if cache is None:
            with build_lock(folder) as locked:
                cache = DecodedCache.open(folder, key)  # built while this process waited
                if cache is None:
                    self._check_cache_space(folder.parent)
                    log.info(
                        "decoding %d samples of %s split %r into the decoded cache %s (once)",
                        len(self), type(self).__name__, self.split, folder,
                    )  # fmt: skip
                    samples = (self.decode(i)[:2] for i in range(len(self)))
                    cache = DecodedCache.build(folder, key, samples, remove_stale=locked)
        self._decoded = cache
        return cache

    def _check_cache_space(self, folder: Path) -> None:
        """Stop before a decoded-cache build would fill the disk (sizes from the headers)."""
        needed = sum(4 * h * w for h, w in (image_size(p) for _, p, _ in self.samples))
        free = shutil.disk_usage(folder).free
        if needed + SPACE_MARGIN > free:
            raise DataError(
                f"the decoded cache of split {self.split!r} needs about {needed / 1e9:.1f} GB "
                f"but {folder} has {free / 1e9:.1f} GB free. Free space, point "
                "data.dataset.cache_dir elsewhere, or set data.dataset.decoded_cache=false."
            )

    def decode(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Read and check one sample from its files: uint8 RGB ``[H, W, 3]``, mask ``[H, W]``
        (the stored values after ``label_map`` / ``reduce_zero_label``), stem."""
        name, image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        mask = self.map_mask(self.read_raw_mask(mask_path), mask_path)
        if image.shape[:2] != mask.shape:
            raise DataError(self._size_mismatch(image_path, image.shape[:2], mask_path, mask.shape))
        check_mask_values(mask, self.num_classes, self.ignore_index, mask_path)
        return image, mask, name

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, name = self.load(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": image_tensor(image, self.mean, self.std),
            "mask": torch.from_numpy(np.asarray(mask, dtype=np.int64)),
            "name": name,
        }


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m segkit.data.folder <root> [--val F] [--test F] [--seed N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m segkit.data.folder",
        description="Write root/splits/{train,val,test}.txt from the stems in root/images.",
    )
    parser.add_argument("root", type=Path)
    parser.add_argument("--val", type=float, default=0.2, help="fraction for val.txt")
    parser.add_argument("--test", type=float, default=0.0, help="fraction for test.txt")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    args = parser.parse_args(argv)
    for name, stems in write_splits(args.root, args.val, args.test, args.seed).items():
        print(f"wrote {args.root / 'splits' / (name + '.txt')}: {len(stems)} stems")


if __name__ == "__main__":
    main()
