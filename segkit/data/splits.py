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

import codecs
import os
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


# Encodings a split list may carry a byte-order mark for, UTF-32 first (its little-endian
# mark starts with UTF-16's).
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _split_text(split_file: Path) -> str:
    """The text of a split list: UTF-8, with or without a byte-order mark, or UTF-16/32 with
    one (Windows Notepad's "Unicode").

    Raises:
        DataError: unreadable, binary (NUL bytes: also UTF-16 without a byte-order mark), or
            not UTF-8 (naming the line and the byte).
    """
    try:
        data = split_file.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read split list {split_file}: {error}.") from error
    for bom, encoding in BYTE_ORDER_MARKS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as error:
                raise DataError(
                    f"split list {split_file} starts with the {encoding} byte-order mark but is "
                    f"no {encoding} text ({error.reason} at byte {error.start}). Save it as "
                    "UTF-8 text, one image stem per line."
                ) from error
    if b"\x00" in data:
        raise DataError(
            f"split list {split_file} holds NUL bytes: binary data, or UTF-16 text without a "
            "byte-order mark. Give a text file (UTF-8) with one image stem per line; "
            f"{split_command(split_file.parent.parent)} writes them."
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        byte = data[error.start]
        raise DataError(
            f"split list {split_file} is not UTF-8 text: line {line} holds the byte "
            f"0x{byte:02x} ({bytes([byte]).decode('latin-1')!r} in Latin-1). Save the list as "
            "UTF-8, the encoding of file names (iconv -f latin1 -t utf-8 <old list> > "
            f"{split_file.name})."
        ) from error


def _listed_stem(entry: str, images: Mapping[str, Path]) -> str:
    """The stem a split-list line names: the line itself when it is a stem, else its last
    path part (``/`` or ``\\``), without an image extension when that names an image."""
    if entry in images:
        return entry
    name = entry.replace("\\", "/").rsplit("/", 1)[-1]
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    if name not in images and suffix in IMAGE_SUFFIXES and stem in images:
        return stem
    return name


def _missing_list(root: Path, split: str, split_file: Path) -> DataError:
    """The error for a split list that is not there, with the lists that are."""
    folder = root / "splits"
    listed = sorted(p.stem for p in folder.glob("*.txt") if p.is_file()) if folder.is_dir() else []
    there = f" {folder} holds the lists {listed}." if listed else ""
    if split.endswith(".txt") or "/" in split:
        there += f" Name a split by its list's stem: {Path(split).stem!r}, not {split!r}."
    if split_file.is_symlink() and not split_file.exists():
        found = f"is a symbolic link to {os.readlink(split_file)}, which does not exist"
    elif split_file.is_dir():
        found = "is a folder, not a text file"
    else:
        found = "does not exist"
    return DataError(
        f"split list {split_file} {found}.{there} Each split a run uses (data.train_split, "
        "data.val_split, data.test_split) needs splits/<split>.txt with one image stem per "
        f"line; {split_command(root)} writes train.txt and val.txt. Or set that split to "
        "null to use every image."
    )


def read_split_list(
    root: Path, split: str, images: Mapping[str, Path], image_dir: Path
) -> list[str]:
    """The stems listed in ``root/splits/<split>.txt``, each one of ``images`` (stem -> file
    of ``image_dir``), in list order.

    Accepted forms (docs/data.md, "Your own data"): UTF-8 with or without a byte-order mark,
    or UTF-16/32 with one (Windows Notepad's "Unicode"); any line ends (LF, CRLF, CR); spaces
    and tabs around a line; blank lines; lines starting with ``#`` (comments, unless the line
    is an image's stem). A line names an image by its stem (``img0``), its file name
    (``img0.png``) or a path to it (``images/img0.png``, ``C:\\data\\images\\img0.png``): the
    last path part, without its image extension, is the stem.

    Raises:
        DataError: the list is missing, a folder or a broken link; binary (also UTF-16 without
            a byte-order mark) or not UTF-8; empty; lists one image twice; or names images not
            in ``image_dir``. Each names the list, the lines and the fix.
    """
    split_file = root / "splits" / f"{split}.txt"
    if not split_file.is_file():
        raise _missing_list(root, split, split_file)
    first_line: dict[str, int] = {}
    stems, missing, twice = [], [], []
    for number, line in enumerate(_split_text(split_file).splitlines(), start=1):
        entry = line.strip()
        if not entry or (entry.startswith("#") and entry not in images):
            continue
        stem = _listed_stem(entry, images)
        if stem not in images:
            missing.append((number, entry))
        elif stem in first_line:
            twice.append(f"{stem!r} twice (lines {first_line[stem]} and {number})")
        else:
            first_line[stem] = number
        stems.append(stem)
    if not stems:
        raise DataError(
            f"split list {split_file} is empty: add one image stem per line, or "
            "choose another split."
        )
    if missing:
        separated = any(any(c in entry for c in ",; \t") for _, entry in missing)
        hint = " A line holds one image stem only, not several fields." if separated else ""
        shown = [f"line {number}: {entry!r}" for number, entry in missing[:3]]
        raise DataError(
            f"{split_file} names {len(missing)} images not in {image_dir}, e.g. {shown}.{hint} "
            "Fix the list or add the images."
        )
    if twice:
        raise DataError(
            f"split list {split_file} lists sample {twice[0]}"
            + (f", and {len(twice) - 1} more" if len(twice) > 1 else "")
            + ": each image must appear once, or it counts twice in the metrics. Remove the "
            "duplicate lines."
        )
    return stems
