"""PASCAL VOC 2012 segmentation (Everingham et al. 2010), 20 classes + background.

Official layout (``VOCtrainval_11-May-2012.tar`` unpacked; ``root`` is ``.../VOC2012``)::

    root/JPEGImages/<stem>.jpg
    root/SegmentationClass/<stem>.png       palette PNG: index = class, 255 = void border
    root/ImageSets/Segmentation/{train,val,trainval}.txt

Optional SBD (Hariharan et al., ICCV 2011; ``benchmark_RELEASE/dataset`` as ``sbd_root``)::

    sbd_root/cls/<stem>.mat                 MATLAB struct GTcls.Segmentation (class index)
    sbd_root/img/<stem>.jpg
    sbd_root/{train,val}.txt

Split ``train_aug`` is the usual augmented training set: VOC train + SBD train + SBD val,
minus VOC val (10582 images). Its labels come from ``SegmentationClass`` where VOC has one
(finer, with void borders) and from the SBD ``.mat`` otherwise.

Masks saved as RGB colour images (palette converted away) are decoded back to indices with
the VOC palette; a colour outside it is an error naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from segkit.data.folder import FolderDataset
from segkit.data.io import DataError, oriented, read_mask

CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOID = 255


def voc_colour(index: int) -> tuple[int, int, int]:
    """The VOC devkit colour of label ``index`` (bits of the index spread over R, G, B)."""
    rgb = [0, 0, 0]
    for shift in range(8):
        for channel in range(3):
            rgb[channel] |= ((index >> channel) & 1) << (7 - shift)
        index >>= 3
    return rgb[0], rgb[1], rgb[2]


PALETTE = tuple(voc_colour(i) for i in range(len(CLASS_NAMES)))


def read_sbd_mat(path: Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/<stem>.mat`` as uint8 ``[H, W]``."""
    from scipy.io import loadmat  # scipy is needed for SBD only

    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
        return np.asarray(mat["GTcls"].Segmentation, dtype=np.uint8)
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise DataError(
            f"cannot read SBD label {path}: {error}. It must be a MATLAB file holding the "
            "struct GTcls with field Segmentation (as in benchmark_RELEASE/dataset/cls)."
        ) from error


def decode_colours(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Class indices ``[H, W]`` from a VOC colour mask ``[H, W, 3]`` (void colour -> 255)."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(PALETTE)}
    r, g, b = voc_colour(VOID)
    table[(r << 16) | (g << 8) | b] = VOID
    values, inverse = np.unique(codes, return_inverse=True)
    unknown = [f"#{v:06x}" for v in values.tolist() if v not in table]
    if unknown:
        raise DataError(
            f"colour mask {path} has colours {unknown[:5]} that are not in the VOC palette; "
            "save masks as palette PNGs (mode P) or with the VOC colours."
        )
    return np.asarray([table[v] for v in values.tolist()], np.uint8)[inverse].reshape(codes.shape)


class VOCDataset(FolderDataset):
    """One VOC 2012 split (see the module docstring).

    Args:
        root: the ``VOC2012`` folder.
        num_classes: 21.
        split: a list in ``ImageSets/Segmentation`` (``train``, ``val``, ``trainval``) or
            ``train_aug`` (needs ``sbd_root``).
        ignore_index: 255, VOC's void value.
        sbd_root: SBD ``benchmark_RELEASE/dataset`` folder, or ``None``.
        **options: ``transform``, ``mean``, ``std``, ``startup_check``, ``decoded_cache``,
            ``cache_dir``, as in :class:`FolderDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int = 21,
        split: str = "train",
        ignore_index: int = 255,
        sbd_root: str | Path | None = None,
        **options: Any,
    ) -> None:
        self.sbd_root = None if sbd_root is None else Path(sbd_root).expanduser()
        samples = voc_samples(Path(root).expanduser(), split, self.sbd_root)
        super().__init__(
            root, num_classes, split, ignore_index, label_map={VOID: ignore_index},
            samples=samples, read_raw_mask=read_voc_mask, **options,
        )  # fmt: skip


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(
            f"split list {path} does not exist. Set data.dataset.root to the VOC2012 "
            "folder (and data.dataset.sbd_root for train_aug)."
        )
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_samples(root: Path, split: str, sbd_root: Path | None) -> list[tuple[str, Path, Path]]:
    """The ``(stem, JPEG image, label)`` of every image of ``split``: a list in
    ``ImageSets/Segmentation``, or ``train_aug`` (VOC train + SBD train/val minus VOC val,
    images and ``cls/*.mat`` labels from ``sbd_root`` where VOC has none).

    Raises:
        DataError: a list or a named file is missing, the split is empty.
    """
    lists = root / "ImageSets" / "Segmentation"
    if split == "train_aug":
        if sbd_root is None:
            raise DataError(
                "split train_aug needs the SBD annotations: set data.dataset.sbd_root to "
                "benchmark_RELEASE/dataset (with cls/ and train.txt, val.txt)."
            )
        stems = _read_list(lists / "train.txt")
        stems += _read_list(sbd_root / "train.txt")
        stems += _read_list(sbd_root / "val.txt")
        held_out = set(_read_list(lists / "val.txt"))
        stems = sorted(set(stems) - held_out)
    else:
        stems = _read_list(lists / f"{split}.txt")
    samples, missing = [], []
    for stem in stems:
        image = root / "JPEGImages" / f"{stem}.jpg"
        label = root / "SegmentationClass" / f"{stem}.png"
        if sbd_root is not None:
            if not image.is_file():
                image = sbd_root / "img" / f"{stem}.jpg"
            if not label.is_file():
                label = sbd_root / "cls" / f"{stem}.mat"
        missing += [str(p) for p in (image, label) if not p.is_file()]
        samples.append((stem, image, label))
    if missing:
        raise DataError(
            f"VOC split {split!r} names {len(missing)} files that do not exist, e.g. {missing[:3]}."
        )
    if not samples:
        raise DataError(f"VOC split {split!r} is empty.")
    return samples


def read_voc_mask(path: Path) -> np.ndarray:
    """Palette index PNG, SBD ``.mat``, or VOC-coloured RGB PNG -> ``[H, W]`` values."""
    if path.suffix == ".mat":
        return read_sbd_mat(path)
    try:
        with Image.open(path) as mask:
            if mask.mode == "RGB":
                return decode_colours(np.asarray(oriented(mask)), path)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"cannot read mask {path}: {error}. Replace the file.") from error
    return read_mask(path)
