"""The embedded ``shapes`` dataset: textured shapes on noisy backgrounds, generated offline.

Classes (index: name): 0 background, 1 circle, 2 square, 3 triangle, 4 star. Stars are
small and rare (about one image in three holds one, about a hundred pixels each), so
per-class scores differ from the pixel-weighted ones. Each shape has a texture (flat,
two-tone stripes or noise) in jittered tones of its class's colour family (reddish circles,
greenish squares, bluish triangles, yellowish stars) on a greyish noisy background with a
lighting gradient, so both colour and outline carry the class. 1-4 shapes per image (plus
the star); shapes do not overlap (their circumscribed discs are kept apart).

:func:`generate_shapes` writes the dataset once, in the layout read by
:class:`segkit.data.folder.FolderDataset`::

    root/images/<stem>.png       uint8 RGB
    root/masks/<stem>.png        uint8 class index per pixel (mode L)
    root/instances/<stem>.png    uint8 instance id per pixel, 0 = background; instance k has
                                 the class of ``masks`` at its pixels
    root/splits/{train,val,test}.txt
    root/meta.json               the generation arguments; a root with the same meta is reused

Generation is seeded per image (``seed + index``), so the data is the same on every machine
and for any number of workers. Each set of arguments has its own folder: ``conf/data/
shapes.yaml`` names it after them (``data/shapes/n320-64-64_size96_seed0``, and
``data/shapes_instances/...`` for ``data=shapes_instances``), so runs with other arguments
never touch the files a concurrent run reads, and :func:`generate_shapes` never deletes a
folder: one that holds other data stops with the fix.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("background", "circle", "square", "triangle", "star")
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25))
# Each class is drawn in jittered tones of its own colour family, so a small model learns it
# in minutes on a CPU; the outline still decides at the jittered overlaps and for stars,
# whose yellow family neighbours the red and green ones.
CLASS_HUES = {1: (200, 70, 70), 2: (70, 180, 70), 3: (70, 100, 210), 4: (220, 200, 60)}
FORMAT_VERSION = 3


def _outline(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon of a square, triangle or five-pointed star of circumradius ``r``."""
    if kind == "square":
        corners = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if kind == "triangle":
        corners = [angle + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    points = []  # star: alternate outer and inner radius
    for k in range(10):
        radius = r if k % 2 == 0 else 0.45 * r
        a = angle + k * math.pi / 5
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def _texture(rng: np.random.Generator, size: int, hue: tuple[int, int, int]) -> np.ndarray:
    """A ``[size, size, 3]`` float texture around ``hue``: flat, two-tone stripes, or noise."""
    colour = np.clip(np.asarray(hue) + rng.uniform(-45, 45, size=3), 0, 255)
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(colour, (size, size, 3)).astype(np.float32)
    if kind == 1:
        other = colour * rng.uniform(0.5, 0.8)  # a darker tone of the same colour
        period = rng.integers(4, 10)
        yy, xx = np.mgrid[0:size, 0:size]
        stripes = ((xx + yy * rng.integers(0, 2)) // period) % 2 == 0
        return np.where(stripes[..., None], colour, other).astype(np.float32)
    return np.clip(colour + rng.normal(0, 35, size=(size, size, 3)), 0, 255).astype(np.float32)


def render_sample(
    seed: int, size: int = 96, max_shapes: int = 4, star_probability: float = 0.35
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one sample.

    Returns:
        image uint8 ``[size, size, 3]``, class mask uint8 ``[size, size]``, instance mask
        uint8 ``[size, size]`` (0 = background, 1..K the shapes in drawing order).
    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 190) + rng.uniform(-20, 20, size=3)  # greyish, slightly tinted
    image = base + rng.normal(0, rng.uniform(10, 40), size=(size, size, 3))
    image += np.linspace(-30, 30, size)[None, :, None] * rng.uniform(-1, 1)  # lighting gradient
    mask = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.uint8)
    kinds = list(rng.choice([1, 2, 3], size=rng.integers(1, max_shapes + 1)))
    if rng.random() < star_probability:
        kinds.append(4)
    placed: list[tuple[float, float, float]] = []
    for class_id in kinds:
        small = class_id == 4
        r = rng.uniform(0.07, 0.11) * size if small else rng.uniform(0.12, 0.24) * size
        for _ in range(20):  # rejection sampling: circumscribed discs must not touch
            cx, cy = rng.uniform(r, size - r, size=2)
            if all(math.hypot(cx - x, cy - y) > r + q + 2 for x, y, q in placed):
                break
        else:
            continue  # no room left for this shape
        placed.append((cx, cy, r))
        instance_id = len(placed)
        canvas = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(canvas)
        if class_id == 1:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
        else:
            kind = CLASS_NAMES[class_id]
            draw.polygon(_outline(kind, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=1)
        region = np.asarray(canvas, dtype=bool)
        image[region] = _texture(rng, size, CLASS_HUES[class_id])[region]
        mask[region] = class_id
        instances[region] = instance_id
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, mask, instances


def generate_shapes(
    root: str | Path,
    num_train: int = 320,
    num_val: int = 64,
    num_test: int = 64,
    size: int = 96,
    seed: int = 0,
) -> Path:
    """Write the shapes dataset under ``root`` unless an identical one is already there.

    The dataset is built in a temporary folder next to ``root`` and renamed into place, so a
    crash never leaves a half-written dataset behind; a lock file next to ``root`` lets
    concurrent callers wait for one generation instead of racing. An existing ``root`` is
    never deleted or changed: another run may be reading it.

    Returns:
        ``root`` as a ``Path``.

    Raises:
        FileExistsError: ``root`` holds something else (other files, or shapes data made with
            other arguments or by another segkit version).
    """
    root = Path(root).expanduser()
    meta = {
        "format_version": FORMAT_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "size": size,
        "seed": seed,
        "class_names": list(CLASS_NAMES),
    }
    meta_path = root / "meta.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    # Several processes may ask at once (multirun jobs, tests): one generates while the others
    # wait on the lock, then find the finished dataset.
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if meta_path.is_file():
            try:
                stored = json.loads(meta_path.read_text())
            except json.JSONDecodeError:
                stored = {}
            if stored == meta:
                return root
            changed = {
                key: (stored.get(key), value)
                for key, value in meta.items()
                if stored.get(key) != value
            }
            raise FileExistsError(
                f"{root} holds shapes data made with other arguments or by another segkit "
                f"version (stored vs asked: {changed}); refusing to change it, since another "
                "run may be reading it. The default data.prepare.root names the folder after "
                "the arguments; with your own data.prepare.root choose a new folder, or "
                "delete this one when no run uses it."
            )
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(
                f"{root} exists and is not a shapes dataset (no meta.json); refusing to "
                "overwrite. Point paths.data_dir elsewhere or remove the folder."
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
        try:
            _write_shapes(staging, meta)
            if root.exists():
                root.rmdir()  # empty (checked above): os.replace needs it gone
            os.replace(staging, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return root


def _write_shapes(folder: Path, meta: dict) -> None:
    """Render every sample of ``meta`` into ``folder`` (the layout of the module docstring)."""
    for sub in ("images", "masks", "instances", "splits"):
        (folder / sub).mkdir()
    index = 0
    for split in ("train", "val", "test"):
        stems = []
        for _ in range(meta[f"num_{split}"]):
            stem = f"{split}_{index:05d}"
            image, mask, instances = render_sample(
                meta["seed"] * 1_000_003 + index, size=meta["size"]
            )
            Image.fromarray(image).save(folder / "images" / f"{stem}.png")
            Image.fromarray(mask).save(folder / "masks" / f"{stem}.png")
            Image.fromarray(instances).save(folder / "instances" / f"{stem}.png")
            stems.append(stem)
            index += 1
        (folder / "splits" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
