"""Reading dataset files: images and class-index masks as an image viewer shows them, and
what reading one sample found.

Every file is read the same way in training, check_data and predict.py (:func:`read_image`,
:func:`read_mask`):

* EXIF Orientation is applied (``PIL.ImageOps.exif_transpose``) to images *and* masks, so a
  phone photo and the mask drawn over its displayed picture line up. (TIFF files: Pillow
  applies their orientation tag itself while loading.)
* Images become uint8 RGB: grey, palette, CMYK and 1-bit images are converted; an alpha
  channel is dropped (the stored colour of transparent pixels is kept); 16-bit images are
  scaled to 8 bits by ``value >> 8``, as Pillow does for 16-bit RGB PNGs; float images stop
  (their scale is unknown).
* Masks keep their stored values: mode ``L``, ``P`` (the palette *indices*, never the
  colours), ``1`` (1-bit: classes 0/1), ``I;16`` and ``I`` (16/32-bit indices), ``F`` (float)
  when every value is a whole number. A grey mask stored as RGB, RGBA or LA (every pixel
  ``R = G = B``, alpha fully opaque) is read as its one channel. Colour masks, transparent
  or 16-bit colour masks, float masks with fractions, multi-page TIFFs and lossy files (JPEG,
  lossy WebP, JPEG-compressed TIFF) stop with the fix: a lossy mask has changed label values
  along every edge. Lossy means the stored format, not the name: a ``.jpg`` holding PNG data
  is read as PNG (check_data notes the misleading name).
* A file that cannot be read stops naming what is there (a folder, a broken link, an empty
  file, a Git LFS pointer, a web page, a truncated file) and the fix (:func:`unreadable`).
* Hidden files (``.DS_Store``, macOS ``._img.png``) are skipped; a stem with two files in one
  folder (``img.png`` and ``img.jpg``) stops, since a stem must name one image, and so does a
  folder or a broken link named like an image.

A model gets an image as :func:`image_tensor` makes it: normalised with the config's
mean/std, greyscale when one mean/std value is given. Values a mask may hold:
:func:`mask_problems`; ``label_map`` / ``reduce_zero_label``: :func:`label_lut`. A dataset
whose samples can be read one file at a time without raising (:class:`InspectableDataset`:
:class:`~segkit.data.folder.FolderDataset` and the layouts built on it) returns an
:class:`Inspection` per sample, which the label counts (:mod:`segkit.data.stats`) and
``python -m segkit.cli.check_data`` read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".webp")  # lossless-capable formats
LOSSY_SUFFIXES = (".jpg", ".jpeg")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ORIENTATION = int(ExifTags.Base.Orientation)  # EXIF tag 274
MASK_MODES = ("L", "P", "1", "I", "I;16", "I;16L", "I;16B", "I;16N")
GREY_IN_COLOUR_MODES = ("RGB", "RGBA", "LA")  # read when every pixel is grey and opaque
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
READ_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,  # over twice Pillow's pixel limit
)
LOSSY_FORMATS = ("JPEG", "MPO")  # MPO: a JPEG with extra pictures (some cameras)
# Bump when read_image, read_mask or map_mask change what they return, so decoded caches
# built by older code are not read.
DECODE_VERSION = 1


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
    """Whether the stored format (never the file name) is lossy."""
    if image.format in LOSSY_FORMATS:
        return True
    if image.format == "TIFF":
        return str(image.info.get("compression", "")).lower() in ("jpeg", "tiff_jpeg")
    if image.format == "WEBP":
        return _webp_is_lossy(path)
    return False


def stored_format(path: Path) -> str | None:
    """The format Pillow finds in the bytes of ``path`` (``"PNG"``, ``"JPEG"``, ...), whatever
    its name says; ``None`` when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.format
    except READ_ERRORS:
        return None


def _what_is_there(path: Path) -> str | None:
    """What is at ``path`` when it is no image file, in words with the fix, else ``None``."""
    if path.is_symlink() and not path.exists():
        return (
            f"is a symbolic link to {os.readlink(path)}, which does not exist. Restore the file "
            "it points to, or replace the link with the file"
        )
    if not path.exists():
        return "does not exist (was it moved while segkit ran?)"
    if path.is_dir():
        return "is a folder, not a file. Move it out of the data folder"
    if not path.is_file():
        return "is not a regular file (a device, pipe or socket). Replace it with the image"
    size = path.stat().st_size
    if size == 0:
        return (
            "is empty (0 bytes): its copy or export was cut short. Copy it again from the "
            "source, or remove it"
        )
    with path.open("rb") as file:
        head = file.read(256)
    if head.startswith(b"version https://git-lfs"):
        return (
            "is a Git LFS pointer, a small text file standing for the image, which was never "
            "downloaded. Run git lfs pull in the repository the data came from"
        )
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return (
            "is an HTML page, not an image (a download that fetched an error or login "
            "page?). Download the file again"
        )
    if b"\x00" not in head:
        try:
            lines = head.decode("utf-8").strip().splitlines()
        except UnicodeDecodeError:
            return None
        first = lines[0][:60] if lines else ""
        return f"holds text, not an image (first line: {first!r}). Replace it with the image"
    return None


def unreadable(path: Path, what: str, error: Exception) -> DataError:
    """The :class:`DataError` for the ``what`` (``"image"``, ``"mask"``) file ``path`` that
    Pillow failed to read with ``error``: what is there (:func:`_what_is_there`: a folder, a
    broken link, an empty file, text), else what the error means, and the fix."""
    found = _what_is_there(path)
    if found is not None:
        return DataError(f"cannot read {what} {path}: it {found}.")
    if isinstance(error, Image.DecompressionBombError):
        return DataError(
            f"cannot read {what} {path}: it is too large to decode safely ({error}). Cut it "
            "into tiles of a few thousand pixels a side (one file per tile, masks alike)."
        )
    if "truncated" in str(error):
        return DataError(
            f"cannot read {what} {path}: image file is truncated ({path.stat().st_size} "
            "bytes; the data ends early): its copy or save was cut short. Copy it again from "
            "the source, or remove it."
        )
    if isinstance(error, UnidentifiedImageError):
        with path.open("rb") as file:
            head = file.read(8)
        return DataError(
            f"cannot read {what} {path}: no image format Pillow reads (it starts with "
            f"{head!r}). Save it as PNG, or remove it."
        )
    return DataError(f"cannot read {what} {path}: {error}. Replace or remove the file.")


def _single_page(image: Image.Image, path: Path, what: str) -> None:
    """Stop on a multi-page TIFF: a stack of pictures, of which only the first would be read."""
    pages = getattr(image, "n_frames", 1) if image.format == "TIFF" else 1
    if pages > 1:
        raise DataError(
            f"{what} {path} is a TIFF of {pages} pages (a stack); segkit reads one picture "
            "per file and would see only the first. Save each page as its own file (images "
            "and masks alike, with matching stems)."
        )


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
            _single_page(image, path, "image")
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
        raise unreadable(path, "image", error) from error


def image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image as :func:`read_image` returns it, from the header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if exif_orientation(image) in (5, 6, 7, 8):  # a quarter turn swaps the sides
                width, height = height, width
    except READ_ERRORS as error:
        raise unreadable(path, "image", error) from error
    return height, width


def read_mask(path: Path) -> np.ndarray:
    """Read a single-channel class-index mask as displayed, ``[H, W]`` (uint8/uint16/int32).

    Raises:
        DataError: unreadable, lossy, colour/alpha, fractional float or multi-page masks
            (see the module docstring).
    """
    try:
        with Image.open(path) as mask:
            if _is_lossy(mask, path):
                named = ""
                if path.suffix.lower() not in LOSSY_SUFFIXES:
                    named = f" under a {path.suffix} name"
                raise DataError(
                    f"mask {path} is stored lossy ({mask.format}{named}): lossy compression "
                    "changes the label values along every edge. Masks must be lossless PNG: "
                    "export them again as PNG from the annotation source (converting this "
                    "file would keep the damaged edges)."
                )
            _single_page(mask, path, "mask")
            if mask.mode not in (*MASK_MODES, "F", *GREY_IN_COLOUR_MODES):
                raise DataError(
                    f"mask {path} has mode {mask.mode!r} ({len(mask.getbands())} channels); "
                    "masks must be single-channel class-index PNGs (mode L or P), value = "
                    "class index. Convert it to class indices first."
                )
            if mask.mode in GREY_IN_COLOUR_MODES and _raw_mode(mask).endswith(";16B"):
                raise DataError(
                    f"mask {path} is a 16-bit {mask.mode} PNG, which Pillow reads cut to 8 bits "
                    "per channel. Save the class indices as a single-channel 16-bit PNG "
                    "(numpy uint16 -> mode I;16) or, below 256 classes, an 8-bit one (mode L)."
                )
            mode = mask.mode
            array = np.asarray(oriented(mask))  # mode P gives the palette indices, not colours
    except READ_ERRORS as error:
        if isinstance(error, DataError):
            raise
        raise unreadable(path, "mask", error) from error
    if mode in GREY_IN_COLOUR_MODES:
        return _grey_channel(array, mode, path)
    if mode == "F":
        return _whole_numbers(array, path)
    if array.dtype == bool:  # 1-bit masks: classes 0 and 1
        return array.astype(np.uint8)
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:
        return array.astype(np.uint16)  # native byte order for I;16B
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise DataError(
            f"mask {path} holds negative values (min {array.min()}); class indices are >= 0."
        )
    return array


def _raw_mode(image: Image.Image) -> str:
    """How the file stores its pixels (``"RGB;16B"`` for a 16-bit RGB PNG), before Pillow
    converts them to its mode."""
    if not image.tile:
        return image.mode
    args = image.tile[0].args
    return args if isinstance(args, str) else str(args[0]) if args else image.mode


def _grey_channel(array: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """The one channel of a mask stored as ``RGB``/``RGBA``/``LA`` ``[H, W, C]`` uint8, when
    it is a grey mask in disguise (``R = G = B``, alpha 255 everywhere); else a DataError."""
    colour, alpha = (array[..., :-1], array[..., -1]) if "A" in mode else (array, None)
    if alpha is not None and (alpha != 255).any():
        raise DataError(
            f"mask {path} has mode {mode!r} ({array.shape[-1]} channels) with "
            f"{int((alpha != 255).sum())} transparent pixels, whose class cannot be known; "
            "masks are single-channel class-index PNGs (mode L or P), value = class index. "
            "Save it without the alpha channel, as class indices."
        )
    if (colour == colour[..., :1]).all():
        return np.ascontiguousarray(colour[..., 0])
    colours = np.unique(colour.reshape(-1, colour.shape[-1]), axis=0)
    shown = [tuple(int(v) for v in rgb) for rgb in colours[:4]]
    raise DataError(
        f"mask {path} has mode {mode!r} ({array.shape[-1]} channels) holding "
        f"{len(colours)} colours, e.g. {shown}: a colour-coded mask. Masks must be "
        "single-channel class-index PNGs (mode L or P), value = class index: map each colour "
        "to its class index and save the indices (data=voc decodes the VOC palette itself)."
    )


def _whole_numbers(array: np.ndarray, path: Path) -> np.ndarray:
    """A float (mode ``F``) mask as int32 class indices, if every value is a whole number >= 0."""
    finite = np.isfinite(array)
    fractional = finite & (array != np.round(array))
    if not finite.all() or fractional.any():
        found = array[~finite | fractional]
        raise DataError(
            f"mask {path} holds floating-point values that are no class index, e.g. "
            f"{np.unique(found)[:5].tolist()}: interpolated when resized, or not a label "
            "image. Save class indices as an 8-bit (or 16-bit) PNG, resized with "
            "nearest-neighbour."
        )
    if array.size and (array.min() < 0 or array.max() > np.iinfo(np.int32).max):
        raise DataError(
            f"mask {path} holds values outside 0..2^31-1 (min {array.min()}, max "
            f"{array.max()}); class indices are >= 0."
        )
    return array.astype(np.int32)


def image_files(
    folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> tuple[dict[str, Path], list[Path]]:
    """The files of ``folder`` by stem, and the (non-hidden) files skipped for their suffix.

    Suffixes match in any case (``IMG.JPG``); hidden files are ignored, and so are folders
    and other entries not named like an image.

    Raises:
        DataError: two files share a stem (``img.png`` and ``img.jpg``), or an entry named
            like an image is no file (a folder, a broken symbolic link).
    """
    files: dict[str, Path] = {}
    skipped, clashes, not_files = [], [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in suffixes:
            if path.is_file():
                skipped.append(path)
            continue
        if not path.is_file():
            not_files.append(f"{path} {_what_is_there(path)}")
            continue
        if path.stem in files:
            clashes.append(f"{files[path.stem].name} and {path.name}")
        files[path.stem] = path
    if not_files:
        raise DataError(
            f"{folder} holds entries named like images that are no files ({len(not_files)}): "
            + "; ".join(not_files[:3])
            + "."
        )
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


class Inspection(NamedTuple):
    """What :meth:`~segkit.data.folder.FolderDataset.inspect` found in one sample.

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
    read one by one, beyond ``len``/``[i]``: :class:`~segkit.data.folder.FolderDataset` and
    every dataset built on it. Other datasets are checked from ``dataset[i]["mask"]`` only.

    Attributes:
        samples: ``(name, image path, mask path)`` of every sample, in index order.
    """

    samples: list[tuple[str, Path, Path]]

    def __len__(self) -> int: ...

    def inspect(self, index: int, decode_image: bool = True) -> Inspection:
        """Read and check sample ``index`` without raising
        (:meth:`~segkit.data.folder.FolderDataset.inspect`)."""
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
