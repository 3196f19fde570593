"""Get annotations into the ``data=folder`` layout, and split a folder for training.

    python -m segkit.cli.convert labelme <dir> <out_root> [--classes background,a,b] [--link]
    python -m segkit.cli.convert split <root> [--val 0.2] [--test 0.0] [--seed 0]
    python -m segkit.cli.convert split <root> --folds K [--test 0.0] [--seed 0]

Each also takes ``--overwrite``.

Contract: ``labelme`` reads ``<dir>/*.json`` and writes ``<out_root>/images/``,
``<out_root>/masks/<stem>.png`` (8-bit class indices; the first class is the background, the
value of every pixel no shape covers) and ``<out_root>/classes.txt``. ``split`` writes
``<root>/splits/*.txt``, one stem per line, sorted, the format
:class:`~segkit.data.folder.FolderDataset` reads (:mod:`segkit.data.splits`: fractions, or K
folds). Invariants: every JSON file is checked before anything is written; the input folder
is never written to; an existing file of those written (images, masks, ``classes.txt``, split
lists) stops the command before anything is written, unless ``--overwrite``, which replaces
those files (a symlink is replaced, not written through) and deletes nothing
(:func:`segkit.outputs.check_new`). The conventions
(class order, drawing order and shape types, unknown labels, sizes, folds) are in
docs/data.md, "Your own data".
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import math
import shutil
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from segkit.data.io import READ_ERRORS, DataError, image_size, oriented
from segkit.data.splits import write_folds, write_splits
from segkit.outputs import OVERWRITE_FLAG, OutputExistsError, check_new

SUPPORTED_SHAPES = ("polygon", "rectangle", "circle")
IGNORE_LABEL = "__ignore__"  # labelme's label for regions left out of training
BACKGROUND = "background"
MAX_LISTED = 5


@dataclass
class LabelmeShape:
    """One drawable shape: class ``value``, labelme ``kind`` and ``points`` ``[(x, y), ...]``."""

    value: int
    kind: str
    points: list[tuple[float, float]]


@dataclass
class LabelmeFile:
    """What one labelme JSON file holds, checked: where the image comes from and its shapes."""

    json_path: Path
    stem: str
    size: tuple[int, int]  # (H, W)
    image_path: Path | None  # the image file, or None when it comes from image_bytes
    image_bytes: bytes | None
    image_suffix: str
    shapes: list[LabelmeShape]


def rasterise(
    shapes: Sequence[LabelmeShape], size: tuple[int, int], background: int = 0
) -> np.ndarray:
    """Draw ``shapes`` in order (later over earlier) into a uint8 ``[H, W]`` class-index mask.

    Pixel ``(x, y)`` is column ``x``, row ``y``; the outline is part of the shape, as in
    labelme's exporter: a rectangle covers columns ``min(x)..max(x)`` and rows
    ``min(y)..max(y)`` inclusive, a circle every pixel within the radius of its centre.
    """
    height, width = size
    canvas = Image.new("L", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        if shape.kind == "rectangle":
            xs, ys = zip(*shape.points, strict=True)
            draw.rectangle(
                [min(xs), min(ys), max(xs), max(ys)], fill=shape.value, outline=shape.value
            )
        elif shape.kind == "circle":
            (cx, cy), (px, py) = shape.points[:2]
            r = math.hypot(cx - px, cy - py)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=shape.value, outline=shape.value)
        else:  # polygon
            draw.polygon(shape.points, fill=shape.value, outline=shape.value)
    return np.asarray(canvas)


def _labelme_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read labelme file {path}: {error}") from error
    if not isinstance(record, dict) or not isinstance(record.get("shapes"), list):
        raise DataError(f"{path} is no labelme file: it has no 'shapes' list.")
    return record


def _image_source(path: Path, record: dict[str, Any]) -> tuple[Path | None, bytes | None, str]:
    """The image file named by ``imagePath`` (relative to the JSON file), else the decoded
    ``imageData``; with the suffix the copy gets."""
    named = str(record.get("imagePath") or "").replace("\\", "/")  # Windows-saved paths
    if named and (path.parent / named).is_file():
        image_path = path.parent / named
        return image_path, None, image_path.suffix
    data = record.get("imageData")
    if data:
        try:
            raw = base64.b64decode(data, validate=True)
            with Image.open(io.BytesIO(raw)) as image:
                kind = image.format or "PNG"
        except (binascii.Error, ValueError, *READ_ERRORS) as error:
            raise DataError(f"{path}: its imageData cannot be decoded ({error}).") from error
        return None, raw, ".jpg" if kind == "JPEG" else f".{kind.lower()}"
    raise DataError(
        f"{path}: its image {path.parent / named if named else '(no imagePath)'} does not "
        "exist and the file holds no imageData. Put the image beside the JSON file, or save "
        "the annotation in labelme with the image data included."
    )


def read_labelme(
    folder: Path | str,
    classes: Sequence[str] | None = None,
    ignore_index: int = 255,
    skip_unsupported: bool = False,
    unknown_as_ignore: bool = False,
) -> tuple[list[LabelmeFile], list[str]]:
    """Read and check every ``folder/*.json`` labelme file (see the module docstring).

    Args:
        folder: the folder holding the JSON files (not searched recursively).
        classes: class names in index order, the first the background; ``None``:
            ``background`` and every label found, sorted.
        ignore_index: the mask value of ``__ignore__`` shapes (and of unknown labels with
            ``unknown_as_ignore``); not a class index.
        skip_unsupported: leave out shapes of other types than polygon, rectangle, circle
            instead of stopping.
        unknown_as_ignore: give labels not in ``classes`` ``ignore_index`` instead of stopping.

    Returns:
        the checked files (sorted by name) and the class names.

    Raises:
        DataError: listing every problem found: unreadable files, unknown labels,
            unsupported shape types, shapes with too few points, missing images, size
            mismatches.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder} is no folder; give the folder holding the labelme .json files.")
    paths = sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))
    if not paths:
        raise DataError(f"{folder} holds no .json files (labelme saves one per image).")
    records = {path: _labelme_json(path) for path in paths}
    labels = {
        str(shape.get("label", "")) for record in records.values() for shape in record["shapes"]
    }
    if classes is None:
        classes = [BACKGROUND, *sorted(labels - {IGNORE_LABEL, BACKGROUND})]
    classes = list(classes)
    if len(set(classes)) != len(classes) or not classes:
        raise DataError(f"--classes {','.join(classes)}: give each class name once.")
    if len(classes) > 255 or not len(classes) <= ignore_index <= 255:
        raise DataError(
            f"{len(classes)} classes with --ignore-index {ignore_index}: masks are 8-bit, so "
            "at most 255 classes and an ignore index in classes..255 (default 255)."
        )
    index = {name: i for i, name in enumerate(classes)} | {IGNORE_LABEL: ignore_index}
    unknown: dict[str, list[str]] = defaultdict(list)
    unsupported: dict[str, list[str]] = defaultdict(list)
    problems: list[str] = []
    files = []
    for path, record in records.items():
        shapes = []
        for number, shape in enumerate(record["shapes"]):
            label, kind = str(shape.get("label", "")), shape.get("shape_type") or "polygon"
            try:
                points = [(float(x), float(y)) for x, y in shape.get("points") or []]
            except (TypeError, ValueError):
                problems.append(f"{path} shape {number} ({label!r}): points are not [x, y] pairs.")
                continue
            if kind not in SUPPORTED_SHAPES:
                unsupported[kind].append(path.name)
                continue
            needed = 3 if kind == "polygon" else 2
            if len(points) < needed:
                problems.append(
                    f"{path} shape {number} ({kind} {label!r}) has {len(points)} points, "
                    f"needs {needed}: fix or delete it in labelme."
                )
                continue
            if label not in index:
                unknown[label].append(path.name)
                if not unknown_as_ignore:
                    continue
            shapes.append(LabelmeShape(index.get(label, ignore_index), kind, points))
        try:
            image_path, image_bytes, suffix = _image_source(path, record)
            if image_path is not None:
                size = image_size(image_path)
            else:
                with Image.open(io.BytesIO(image_bytes or b"")) as image:
                    size = oriented(image).size[::-1]
        except DataError as error:
            problems.append(str(error))
            continue
        stated = (record.get("imageHeight"), record.get("imageWidth"))
        if None not in stated and tuple(int(v) for v in stated) != size:
            problems.append(
                f"{path} gives imageHeight x imageWidth {stated[0]}x{stated[1]} but its image "
                f"{image_path or '(imageData)'} is {size[0]}x{size[1]} as displayed: the "
                "annotation belongs to another image (or was drawn before a rotation)."
            )
            continue
        files.append(LabelmeFile(path, path.stem, size, image_path, image_bytes, suffix, shapes))
    if unsupported and not skip_unsupported:
        listed = "; ".join(
            f"{kind}: {_files(names)}" for kind, names in sorted(unsupported.items())
        )
        problems.append(
            f"shape types other than {', '.join(SUPPORTED_SHAPES)} have no area to fill "
            f"({listed}). Redraw them as polygons, or pass --skip-unsupported to leave them out."
        )
    if unknown and not unknown_as_ignore:
        listed = "; ".join(
            f"{label!r}: {_files(names)}" for label, names in sorted(unknown.items())
        )
        problems.append(
            f"labels not in --classes {','.join(classes)}: {listed}. Add them to --classes, "
            "fix the labels in labelme, or pass --unknown-as-ignore to mark their pixels "
            f"ignore_index ({ignore_index})."
        )
    if problems:
        raise DataError(
            f"{len(problems)} problem(s) in {folder}; nothing was written:\n  "
            + "\n  ".join(problems)
        )
    return files, classes


def _check_output(source: Path, out_root: Path) -> None:
    """Stop before writing into the input folder."""
    source, target = source.resolve(), out_root.resolve()
    if target.is_relative_to(source) or any(
        source.is_relative_to(target / sub) for sub in ("images", "masks")
    ):
        raise DataError(
            f"output folder {out_root} would write into the input folder {source} (segkit "
            "never writes into the input). Choose an output folder outside it."
        )


def _labelme_targets(out_root: Path, files: Sequence[LabelmeFile]) -> list[Path]:
    """Every file :func:`convert_labelme` writes: each image and mask, then ``classes.txt``."""
    images = [out_root / "images" / f"{item.stem}{item.image_suffix}" for item in files]
    masks = [out_root / "masks" / f"{item.stem}.png" for item in files]
    return [*images, *masks, out_root / "classes.txt"]


def convert_labelme(
    folder: Path | str,
    out_root: Path | str,
    classes: Sequence[str] | None = None,
    link: bool = False,
    ignore_index: int = 255,
    skip_unsupported: bool = False,
    unknown_as_ignore: bool = False,
    overwrite: bool = False,
) -> list[str]:
    """Write the labelme files of ``folder`` into ``out_root`` in the ``data=folder`` layout.

    Arguments as in :func:`read_labelme`; ``link`` symlinks the images (absolute paths)
    instead of copying them (images decoded from ``imageData`` are always written);
    ``overwrite`` replaces the images, masks and ``classes.txt`` of the same names.

    Returns:
        the class names, in index order (also written to ``out_root/classes.txt``).

    Raises:
        DataError: a problem of :func:`read_labelme`, or an output folder inside ``folder``.
        segkit.outputs.OutputExistsError: a file it writes exists and not ``overwrite``.
    """
    folder, out_root = Path(folder).expanduser(), Path(out_root).expanduser()
    _check_output(folder, out_root)
    files, classes = read_labelme(
        folder, classes, ignore_index, skip_unsupported, unknown_as_ignore
    )
    targets = _labelme_targets(out_root, files)
    if not overwrite:
        check_new(targets, OVERWRITE_FLAG)
    for target in targets:  # replace a link (an earlier --link), never write through it
        if target.is_symlink():
            target.unlink()
    (out_root / "images").mkdir(parents=True, exist_ok=True)
    (out_root / "masks").mkdir(exist_ok=True)
    for item in files:
        target = out_root / "images" / f"{item.stem}{item.image_suffix}"
        if item.image_path is None:
            target.write_bytes(item.image_bytes or b"")
        elif link:
            target.symlink_to(item.image_path.resolve())
        else:
            shutil.copy2(item.image_path, target)
        mask = rasterise(item.shapes, item.size)
        Image.fromarray(mask, mode="L").save(out_root / "masks" / f"{item.stem}.png")
    (out_root / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    return classes


def _files(names: list[str]) -> str:
    """``"3 in ['a.json', ...]"``: how many shapes, and (a few of) their files."""
    files = sorted(set(names))
    more = f" and {len(files) - MAX_LISTED} more" if len(files) > MAX_LISTED else ""
    return f"{len(names)} in {files[:MAX_LISTED]}{more}"


def _class_list(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m segkit.cli.convert",
        description="Convert annotations into the data=folder layout, or write its splits.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    labelme = commands.add_parser("labelme", help="labelme JSON files -> images/ + masks/")
    labelme.add_argument("dir", type=Path, help="folder holding the labelme .json files")
    labelme.add_argument("out_root", type=Path, help="new dataset root (outside dir)")
    labelme.add_argument(
        "--classes", type=_class_list, help="class names in index order, background first"
    )
    labelme.add_argument("--link", action="store_true", help="symlink the images, not copy")
    labelme.add_argument("--ignore-index", type=int, default=255, help="mask value of __ignore__")
    labelme.add_argument(
        "--skip-unsupported", action="store_true", help="leave out lines, points, ..."
    )
    labelme.add_argument(
        "--unknown-as-ignore", action="store_true", help="labels not in --classes -> ignore index"
    )
    labelme.add_argument(
        OVERWRITE_FLAG, action="store_true", help="replace same-named images, masks, classes.txt"
    )
    split = commands.add_parser("split", help="write root/splits/*.txt")
    split.add_argument("root", type=Path, help="dataset root holding images/")
    split.add_argument("--val", type=float, default=None, help="fraction for val.txt (default 0.2)")
    split.add_argument("--test", type=float, default=0.0, help="fraction for test.txt")
    split.add_argument("--folds", type=int, default=None, help="K-fold lists instead of val.txt")
    split.add_argument("--seed", type=int, default=0, help="shuffle seed")
    split.add_argument(OVERWRITE_FLAG, action="store_true", help="replace lists of these names")
    args = parser.parse_args(argv)
    try:
        if args.command == "labelme":
            classes = convert_labelme(
                args.dir, args.out_root, args.classes, args.link, args.ignore_index,
                args.skip_unsupported, args.unknown_as_ignore, args.overwrite,
            )  # fmt: skip
            count = len(list((args.out_root / "masks").glob("*.png")))
            print(f"wrote {count} images and masks to {args.out_root}")
            print("classes: " + ", ".join(f"{i} {name}" for i, name in enumerate(classes)))
            print(f"next: python -m segkit.cli.convert split {args.out_root} --val 0.2")
            names = ",".join(classes)
            print(
                f"then: python train.py data=folder data.dataset.root={args.out_root} "
                f"data.num_classes={len(classes)} 'data.class_names=[{names}]'"
            )
            return 0
        if args.folds is not None and args.val is not None:
            parser.error("--val and --folds exclude each other: each fold's val list is one fold")
        if args.folds is not None:
            written = write_folds(args.root, args.folds, args.test, args.seed, args.overwrite)
        else:
            val = 0.2 if args.val is None else args.val
            written = write_splits(args.root, val, args.test, args.seed, args.overwrite)
    except (DataError, OutputExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, stems in written.items():
        print(f"wrote {args.root / 'splits' / (name + '.txt')}: {len(stems)} stems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
