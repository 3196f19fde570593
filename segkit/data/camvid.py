"""CamVid, the 11-class SegNet version (Brostow et al. 2009; Badrinarayanan et al., SegNet 2017).

Layout (as distributed with the SegNet tutorial, e.g. ``../shared/data/camvid``)::

    root/{train,val,test}/<stem>.png            360x480 RGB frames
    root/{train,val,test}annot/<stem>.png       class index per pixel, 11 = void
    root/{train,val,test}.txt                   "<image path> <label path>" per line,
                                                relative to root

367 train, 101 val, 233 test images. Value 11 (Unlabelled) is mapped to ``ignore_index``.
``data=camvid`` reads each split from its decoded cache (``decoded_cache``, see
:class:`~segkit.data.folder.FolderDataset`): decoding a frame and its label took ~12 ms of
a 2-core CPU that the model needs; the cache (~330 MB for train and val) is read as slices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segkit.data.folder import FolderDataset
from segkit.data.io import DataError

CLASS_NAMES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
# The SegNet tutorial's colours (Scripts/camvid colour table), class order as above.
PALETTE = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)
VOID = 11


class CamVidDataset(FolderDataset):
    """CamVid split listed in ``root/<split>.txt`` (see the module docstring).

    Args:
        root: CamVid folder.
        num_classes: 11.
        split: ``train``, ``val`` or ``test`` (any ``<split>.txt`` in ``root``).
        ignore_index: value that void (11) becomes.
        **options: ``transform``, ``mean``, ``std``, ``startup_check``, ``decoded_cache``,
            ``cache_dir``, as in :class:`FolderDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int = 11,
        split: str = "train",
        ignore_index: int = 255,
        **options: Any,
    ) -> None:
        samples = camvid_samples(Path(root).expanduser(), split)
        label_map = {VOID: ignore_index}
        super().__init__(
            root, num_classes, split, ignore_index, label_map=label_map, samples=samples, **options
        )


def camvid_samples(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    """The ``(name, image path, label path)`` pairs listed in ``root/<split>.txt``.

    Raises:
        DataError: the list is missing or empty, a line is no pair, a named file is missing.
    """
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        available = sorted(p.stem for p in root.glob("*.txt")) if root.is_dir() else []
        raise DataError(
            f"CamVid split list {list_file} does not exist (lists found: {available}). "
            "Set data.dataset.root to a CamVid folder, or pick an existing split, e.g. "
            "data.test_split=val."
        )
    samples, bad_lines, missing = [], [], []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            bad_lines.append(number)
            continue
        image, label = (root / part.lstrip("/") for part in parts)
        missing += [str(p) for p in (image, label) if not p.is_file()]
        samples.append((image.stem, image, label))
    if bad_lines:
        raise DataError(
            f"{list_file} lines {bad_lines[:5]} are not '<image> <label>' pairs; fix them."
        )
    if missing:
        raise DataError(
            f"{list_file} names {len(missing)} files that do not exist, e.g. {missing[:3]}."
        )
    if not samples:
        raise DataError(f"split list {list_file} is empty: it must list image/label pairs.")
    return samples
