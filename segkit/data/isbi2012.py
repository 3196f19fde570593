"""ISBI 2012 EM segmentation: the U-Net paper's neuronal-membrane data (Cardona et al. 2010;
Arganda-Carreras et al., Frontiers in Neuroanatomy 2015).

Layout (as in ``../shared/data/isbi2012``, README there)::

    root/images/<stem>.png      512x512 8-bit greyscale slices of one serial-section stack
    root/labels/<stem>.png      0 = membrane (cell boundary), 255 = cell interior

Classes: ``membrane`` (0) and ``cell`` (1): the label value 255 is mapped to 1. The folder has
no split lists; the validation split is the config's ``val_stems`` (default slices 20-23, a
contiguous block: neighbouring slices are 50 nm apart and look alike, so random held-out
slices would be near-copies of training ones), training is every other slice, ``split=None``
every slice. Images are read as RGB like every dataset; ``data.in_channels: 1`` (one mean/std
value) turns them back into the stored grey values (:func:`~segkit.data.io.image_tensor`).

The challenge's pixel and Rand errors: :mod:`segkit.evaluation.membrane_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segkit.data.folder import FolderDataset
from segkit.data.io import DataError, image_files

CLASS_NAMES = ("membrane", "cell")
PALETTE = ((0, 0, 0), (255, 255, 255))  # as the label files show them
CELL_VALUE = 255  # label value of cell interior in the files
VAL_STEMS = ("20", "21", "22", "23")


class ISBI2012Dataset(FolderDataset):
    """One split of the ISBI 2012 slices (see the module docstring).

    Args:
        root: folder holding ``images/`` and ``labels/``.
        num_classes: 2.
        split: ``train`` (every slice not in ``val_stems``), ``val`` (``val_stems``), or
            ``None`` (every slice).
        val_stems: file stems of the validation slices.
        ignore_index: label value excluded from losses and metrics (the files have none;
            the transforms' padding gets it).
        mean, std: one value each (greyscale), on the 0-1 scale.
        **options: ``transform``, ``startup_check``, ``decoded_cache``, ``cache_dir``, as in
            :class:`FolderDataset`.

    Raises:
        DataError: a folder is missing (naming ``data.dataset.root``), an unknown split, or
            ``val_stems`` naming slices that are not there.
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int = 2,
        split: str | None = "train",
        val_stems: Sequence[str] = VAL_STEMS,
        ignore_index: int = 255,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.25,),
        **options: Any,
    ) -> None:
        self.val_stems = [str(stem) for stem in val_stems]
        samples = isbi2012_samples(Path(root).expanduser(), split, self.val_stems)
        super().__init__(
            root, num_classes, split, ignore_index, mean=mean, std=std,
            label_map={CELL_VALUE: 1}, samples=samples, **options,
        )  # fmt: skip


def isbi2012_samples(
    root: Path, split: str | None, val_stems: Sequence[str]
) -> list[tuple[str, Path, Path]]:
    """The ``(stem, image path, label path)`` of every slice of ``split``, in stem order.

    Raises:
        DataError: see :class:`ISBI2012Dataset`.
    """
    image_dir, label_dir = root / "images", root / "labels"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DataError(
                f"ISBI 2012 folder {folder} does not exist. Set data.dataset.root to the "
                "folder holding images/ and labels/ (the shared copy: ../shared/data/isbi2012, "
                f"see its README.md); it is now {root}."
            )
    images, _ = image_files(image_dir)
    labels, _ = image_files(label_dir)
    unknown = sorted(set(val_stems) - set(images))
    if unknown:
        raise DataError(
            f"data.dataset.val_stems names slices {unknown} that are not in {image_dir} "
            f"(stems there: {sorted(images)[:3]}...); give file stems such as '20'."
        )
    wanted = {
        None: sorted(images),
        "train": sorted(set(images) - set(val_stems)),
        "val": sorted(val_stems),
    }
    if split not in wanted:
        raise DataError(f"ISBI 2012 has the splits train, val and None (all), not {split!r}.")
    if not wanted[split]:
        raise DataError(
            f"split {split!r} of {root} has no slices: data.dataset.val_stems={list(val_stems)} "
            "leaves none for training."
        )
    missing = [stem for stem in wanted[split] if stem not in labels]
    if missing:
        raise DataError(
            f"{len(missing)} slices of split {split!r} have no label in {label_dir}, e.g. "
            f"{missing[:3]}."
        )
    return [(stem, images[stem], labels[stem]) for stem in wanted[split]]
