"""Any folder of images and class-index masks: :class:`FolderDataset`, the dataset every layout
(CamVid, Cityscapes, VOC, ISBI 2012, instance folders) is built on.

Layout::

    root/images/<stem>.<ext>    .png .jpg .jpeg .bmp .tif .tiff .webp (any case)
    root/masks/<stem>.<ext>     lossless, single-channel: .png (or .bmp .tif .tiff, lossless
                                .webp); pixel value = class index
    root/splits/<split>.txt     one stem (or file name) per line, for each split a run uses

``split=None`` uses every image; a named split needs its list (:mod:`segkit.data.splits`),
and a missing list stops with the command that writes them (``python -m segkit.cli.convert
split <root> --val 0.2``). Mask values must be in ``[0, num_classes)`` or equal
``ignore_index`` after the optional ``label_map`` / ``reduce_zero_label``; anything else
stops with an error naming the file. Building the dataset checks a few samples at once
(``startup_check``), so a run never starts on broken files; ``python -m
segkit.cli.check_data`` checks them all. Files are read as an image viewer shows them, the
same way in training, check_data and predict.py (:mod:`segkit.data.io`).

Each sample is ``{"image": float32 [C, H, W] normalised with mean/std (0-1 pixel scale),
"mask": int64 [H, W], "name": stem}``, ``C`` the number of mean/std values: 3 (RGB), or 1
(greyscale, converted after the transform: :func:`~segkit.data.io.image_tensor`). The
albumentations ``transform`` sees the uint8 RGB image and the mask, so geometric transforms
keep them aligned; normalisation happens after it.

``decoded_cache=True`` reads samples from a decoded copy of the split instead of the files
(:mod:`segkit.data.decoded_cache`): built once under ``cache_dir`` from the files as read
above (label mapping applied, every sample checked), rebuilt when any source file's path,
size or modification time or a reading setting changes, and giving the same image and mask
arrays as the files, before the same transform.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.data import Dataset

from segkit.data.decoded_cache import DecodedCache, build_lock
from segkit.data.io import (
    DECODE_VERSION,
    IMAGE_SUFFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LOSSY_FORMATS,
    LOSSY_SUFFIXES,
    MASK_SUFFIXES,
    READ_ERRORS,
    SIXTEEN_BIT_MODES,
    DataError,
    Inspection,
    check_mask_values,
    exif_orientation,
    image_files,
    image_size,
    image_tensor,
    label_lut,
    mask_palette,
    mask_problems,
    read_image,
    read_mask,
    scaled_statistics,
    stored_format,
    unreadable,
)
from segkit.data.splits import read_split_list

SPACE_MARGIN = 1 << 30  # bytes a decoded-cache build leaves free on its disk

log = logging.getLogger(__name__)


def folder_samples(
    root: Path, split: str | None
) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    """The ``(name, image path, mask path)`` of every sample of ``split`` in the
    ``images/``/``masks/`` layout of ``root``, and the files skipped for their suffix.

    Raises:
        DataError: a folder or split list is missing or unreadable, an image has no mask, a
            mask is stored as JPEG, an entry named like an image is no file.
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
    stems = sorted(images) if split is None else read_split_list(root, split, images, image_dir)
    if not stems:
        folders = sorted(p.name for p in image_dir.iterdir() if p.is_dir())
        hint = ""
        if folders:
            hint = (
                f" It holds the folders {folders[:5]}: segkit reads the files directly in "
                "images/ and masks/ and picks them with split lists (splits/<split>.txt), so "
                "move the files up and list each folder's stems in its split list."
            )
        raise DataError(
            f"no images ({', '.join('*' + s for s in IMAGE_SUFFIXES)}) found for split "
            f"{split!r} in {image_dir}.{hint}"
        )
    missing = [images[stem] for stem in stems if stem not in masks]
    if missing:
        raise DataError(
            f"{len(missing)} images have no mask in {mask_dir}, e.g. image {missing[0]} "
            f"has no mask {mask_dir / (missing[0].stem + '.png')}. Add the masks or remove "
            "the images (or leave them out of the split list)."
        )
    # by content: a .jpg mask that holds PNG data is read as PNG (inspect notes the name),
    # one that cannot be opened stops when read, saying what is there
    lossy = [
        masks[stem]
        for stem in stems
        if masks[stem].suffix.lower() in LOSSY_SUFFIXES
        and stored_format(masks[stem]) in LOSSY_FORMATS
    ]
    if lossy:
        raise DataError(
            f"{len(lossy)} mask(s) are JPEG files, e.g. {lossy[0]}: JPEG is lossy and "
            "changes the label values along every edge. Masks must be lossless PNG: export "
            "them again as PNG from the annotation source (converting the JPEGs would keep "
            "the damaged edges)."
        )
    return [(stem, images[stem], masks[stem]) for stem in stems], skipped + skipped_masks


class FolderDataset(Dataset):
    """Images and class-index masks from a folder (see the module docstring).

    The datasets of other layouts (CamVid, Cityscapes, VOC, ISBI 2012, instance folders) are
    this class given their own ``samples``, ``label_map`` and, where the files hold
    something other than class indices, their ``read_raw_mask``/``map_raw_mask`` functions;
    checks, transforms, normalisation and the decoded cache are shared. A layout's
    constructor names only what it sets or defaults differently and passes every other
    argument on unchanged (``**options``). The constructor calls no method a subclass
    overrides.

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
            problems.append(str(unreadable(image_path, "image", error)))
        try:
            raw = self.read_raw_mask(mask_path)
        except DataError as error:
            return Inspection(None, None, [*problems, str(error)], notes)
        if mask_path.suffix.lower() in LOSSY_SUFFIXES:  # read, so its data is lossless
            notes.append(
                f"mask {mask_path} holds {stored_format(mask_path)} data under a JPEG name: "
                "read as stored (lossless); rename it so no tool takes it for a JPEG"
            )
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
