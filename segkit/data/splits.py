"""Split lists: ``root/splits/<split>.txt``, one image stem (or file name) per line, the lists
:class:`~segkit.data.folder.FolderDataset` reads (:func:`read_split_list`).

:func:`write_splits` cuts the stems of ``root/images`` into train/val(/test) lists by
fractions, :func:`write_folds` into K cross-validation folds; both shuffle with a seed,
write sorted lists and never overwrite an existing list unless asked (``--overwrite``,
:func:`segkit.outputs.check_new`; a list of another name is never removed). The one command
that writes them is
``python -m segkit.cli.convert split`` (:func:`split_command`); docs/data.md, "Your own data",
has the conventions.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from segkit.data.io import IMAGE_SUFFIXES, DataError, image_files
from segkit.outputs import OVERWRITE_FLAG, check_new


def split_command(root: Path | str) -> str:
    """The shell command that writes ``root/splits/{train,val}.txt`` (:func:`write_splits`)."""
    return f"python -m segkit.cli.convert split {root} --val 0.2"


def write_splits(
    root: Path | str, val: float = 0.2, test: float = 0.0, seed: int = 0, overwrite: bool = False
) -> dict[str, list[str]]:
    """Write ``root/splits/{train,val[,test]}.txt`` from the stems of ``root/images``.

    The stems are shuffled with ``seed`` and cut by the fractions ``val`` and ``test`` (each
    non-empty split gets at least one image). Existing lists are replaced only with
    ``overwrite``.

    Returns:
        ``{split name: stems}`` as written.

    Raises:
        DataError: ``images/`` is missing or empty, or the fractions leave no training image.
        segkit.outputs.OutputExistsError: a list exists already (none is written then).
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
    write_split_lists(root, splits, overwrite)
    return splits


def write_split_lists(
    root: Path, splits: Mapping[str, Sequence[str]], overwrite: bool = False
) -> None:
    """Write each ``{name: stems}`` as ``root/splits/<name>.txt``, one stem per line.

    Raises:
        segkit.outputs.OutputExistsError: one of the lists exists already and not
            ``overwrite`` (none is written then).
    """
    folder = root / "splits"
    if not overwrite:
        check_new((folder / f"{name}.txt" for name in splits), OVERWRITE_FLAG)
    folder.mkdir(exist_ok=True)
    for name, listed in splits.items():
        (folder / f"{name}.txt").write_text("\n".join(listed) + "\n")


def write_folds(
    root: Path | str, folds: int, test: float = 0.0, seed: int = 0, overwrite: bool = False
) -> dict[str, list[str]]:
    """Write K-fold lists ``root/splits/fold<k>_{train,val}.txt`` (and ``test.txt``).

    The stems of ``root/images`` are shuffled with ``seed``; with ``test`` > 0 the first
    ``max(1, round(test * N))`` form ``test.txt`` (in no fold), the rest is cut into
    ``folds`` parts of sizes differing by at most one: part ``k`` is ``fold<k>_val``, the
    other parts ``fold<k>_train``. Lists are sorted; existing lists are replaced only with
    ``overwrite``.

    Returns:
        ``{split name: stems}`` as written.

    Raises:
        DataError: ``images/`` missing, ``folds`` < 2, or fewer images than folds after the
            test split.
        segkit.outputs.OutputExistsError: a list exists already (none is written then).
    """
    root = Path(root).expanduser()
    if not (root / "images").is_dir():
        raise DataError(f"{root / 'images'} does not exist; give the dataset root.")
    if folds < 2:
        raise DataError(f"--folds {folds}: cross-validation needs at least 2 folds.")
    stems = sorted(image_files(root / "images")[0])
    random.Random(seed).shuffle(stems)
    held = max(1, round(test * len(stems))) if test > 0 else 0
    rest = stems[held:]
    if len(rest) < folds:
        raise DataError(
            f"{root / 'images'} holds {len(stems)} images: {len(rest)} after the test split, "
            f"too few for {folds} folds."
        )
    parts = [list(part) for part in np.array_split(np.array(rest, dtype=object), folds)]
    splits = {"test": sorted(stems[:held])} if held else {}
    for k, part in enumerate(parts):
        splits[f"fold{k}_train"] = sorted(s for other in parts if other is not part for s in other)
        splits[f"fold{k}_val"] = sorted(part)
    write_split_lists(root, splits, overwrite)
    return splits


def read_split_list(
    root: Path, split: str, images: Mapping[str, Path], image_dir: Path
) -> list[str]:
    """The stems listed in ``root/splits/<split>.txt`` (a line may give a file name or a path:
    ``images/a.png`` and ``a.png`` name the stem ``a``), each one of ``images``.

    Raises:
        DataError: the list is missing or empty, or names images not in ``image_dir``.
    """
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
