"""``python -m segkit.cli.convert``: labelme JSON files into the data=folder layout, checked
against masks drawn here with numpy, and split lists that FolderDataset reads."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkit.cli.convert import convert_labelme, main
from segkit.data.folder import FolderDataset
from segkit.data.io import DataError
from segkit.data.splits import write_folds

H, W = 40, 48
RECTANGLE = [[30, 20], [6, 4]]  # corners in labelme's drawing order (bottom-right first)
TRIANGLE = [[20.0, 10.0], [44.0, 14.0], [26.0, 36.0]]
CIRCLE = [[12.0, 30.0], [12.0, 23.0]]  # centre, then a point on the circle: radius 7


def labelme_file(folder: Path, stem: str, shapes: list[dict], embed: bool = False, **extra) -> None:
    """``folder/<stem>.json`` as labelme saves it, with a random image beside it (or in
    ``imageData`` when ``embed``)."""
    rng = np.random.default_rng(len(stem))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(buffer, "PNG")
    if not embed:
        (folder / f"{stem}.png").write_bytes(buffer.getvalue())
    record = {
        "version": "5.4.1",
        "flags": {},
        "shapes": [
            {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}
            for label, kind, points in shapes
        ],
        "imagePath": f"{stem}.png",
        "imageData": base64.b64encode(buffer.getvalue()).decode() if embed else None,
        "imageHeight": H,
        "imageWidth": W,
        **extra,
    }
    (folder / f"{stem}.json").write_text(json.dumps(record))


def segment_distance(x: np.ndarray, y: np.ndarray, polygon: list[list[float]]) -> np.ndarray:
    """Distance of each point to the closed polygon's outline."""
    distance = np.full(x.shape, np.inf)
    for (x0, y0), (x1, y1) in zip(polygon, polygon[1:] + polygon[:1], strict=True):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
        distance = np.minimum(distance, np.hypot(x - x0 - t * dx, y - y0 - t * dy))
    return distance


def inside_polygon(x: np.ndarray, y: np.ndarray, polygon: list[list[float]]) -> np.ndarray:
    """Even-odd rule: a ray from each point to the right crosses the outline an odd number
    of times."""
    inside = np.zeros(x.shape, bool)
    for (x0, y0), (x1, y1) in zip(polygon, polygon[1:] + polygon[:1], strict=True):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < at)
    return inside


def expected_mask(shapes: list[tuple[int, str, list]]) -> tuple[np.ndarray, np.ndarray]:
    """The mask of ``(value, kind, points)`` drawn in order, and where it is certain: pixel
    ``(x, y)`` = column x, row y; rectangles with integer corners are exact (both corners
    included), polygon and circle pixels within 1 px of the outline may go either way."""
    y, x = np.mgrid[0:H, 0:W].astype(float)
    mask, certain = np.zeros((H, W), np.uint8), np.ones((H, W), bool)
    for value, kind, points in shapes:
        if kind == "rectangle":
            (xa, ya), (xb, yb) = points
            inside = (
                (x >= min(xa, xb)) & (x <= max(xa, xb)) & (y >= min(ya, yb)) & (y <= max(ya, yb))
            )
            edge = np.zeros_like(inside)
        elif kind == "circle":
            (cx, cy), (px, py) = points
            radius, distance = np.hypot(cx - px, cy - py), np.hypot(x - cx, y - cy)
            inside, edge = distance <= radius, np.abs(distance - radius) <= 1
        else:
            inside, edge = inside_polygon(x, y, points), segment_distance(x, y, points) <= 1
        mask[inside & ~edge] = value
        certain[inside & ~edge] = True
        certain[edge] = False
    return mask, certain


@pytest.fixture
def labelme_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "labelme"
    folder.mkdir()
    # a: a rectangle, a triangle over it, a circle; b: image embedded, an ignored region
    labelme_file(
        folder,
        "a",
        [("cat", "rectangle", RECTANGLE), ("dog", "polygon", TRIANGLE), ("cat", "circle", CIRCLE)],
    )
    labelme_file(
        folder,
        "b",
        [("dog", None, TRIANGLE), ("__ignore__", "rectangle", [[0, 0], [9, 5]])],
        embed=True,
        imagePath="../elsewhere/b.png",  # not there: the image comes from imageData
    )
    return folder


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_labelme_masks_match_shapes_drawn_independently(labelme_dir, tmp_path):
    before = listing(labelme_dir)
    out = tmp_path / "dataset"
    classes = convert_labelme(labelme_dir, out, classes=["background", "dog", "cat"])
    assert classes == ["background", "dog", "cat"]
    assert (out / "classes.txt").read_text() == "background\ndog\ncat\n"
    assert listing(labelme_dir) == before  # the input folder is left as it was

    cases = {
        "a": [(2, "rectangle", RECTANGLE), (1, "polygon", TRIANGLE), (2, "circle", CIRCLE)],
        "b": [(1, "polygon", TRIANGLE), (255, "rectangle", [[0, 0], [9, 5]])],
    }
    for stem, shapes in cases.items():
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert mask.dtype == np.uint8 and mask.shape == (H, W)
        expected, certain = expected_mask(shapes)
        np.testing.assert_array_equal(mask[certain], expected[certain])
        assert certain.mean() > 0.8  # the outline band is a thin part of the picture
    # a's triangle covers part of the rectangle (drawn later), the rectangle's rest stays cat
    mask_a = np.asarray(Image.open(out / "masks" / "a.png"))
    assert mask_a[5, 7] == 2 and mask_a[18, 27] == 1 and mask_a[30, 12] == 2
    # images: a copied byte for byte, b decoded from imageData
    assert (out / "images" / "a.png").read_bytes() == (labelme_dir / "a.png").read_bytes()
    embedded = json.loads((labelme_dir / "b.json").read_text())["imageData"]
    assert (out / "images" / "b.png").read_bytes() == base64.b64decode(embedded)

    # the split command's lists are read by data=folder's dataset, with the drawn masks
    assert main(["split", str(out), "--val", "0.5", "--seed", "0"]) == 0
    train = FolderDataset(out, num_classes=3, split="train")
    val = FolderDataset(out, num_classes=3, split="val")
    assert sorted(s[0] for s in train.samples + val.samples) == ["a", "b"]
    for dataset in (train, val):
        sample = dataset[0]
        drawn = np.asarray(Image.open(out / "masks" / f"{sample['name']}.png"))
        np.testing.assert_array_equal(sample["mask"].numpy(), drawn)


def test_default_classes_and_linked_images(labelme_dir, tmp_path):
    out = tmp_path / "dataset"
    assert main(["labelme", str(labelme_dir), str(out), "--link"]) == 0
    assert (out / "classes.txt").read_text().split() == ["background", "cat", "dog"]
    assert (out / "images" / "a.png").resolve() == (labelme_dir / "a.png").resolve()
    assert (out / "images" / "a.png").is_symlink()
    mask = np.asarray(Image.open(out / "masks" / "a.png"))
    assert mask[5, 7] == 1 and mask[18, 27] == 2  # cat = 1, dog = 2 (sorted labels)


def test_unknown_labels_and_unsupported_shapes_are_reported(labelme_dir, tmp_path):
    labelme_file(
        labelme_dir,
        "c",
        [
            ("bird", "polygon", TRIANGLE),
            ("cat", "line", [[1, 1], [9, 9]]),
            ("x", "point", [[3, 3]]),
        ],
    )
    out = tmp_path / "dataset"
    with pytest.raises(DataError) as error:
        convert_labelme(labelme_dir, out, classes=["background", "cat"])
    message = str(error.value)
    assert "nothing was written" in message and not out.exists()
    assert "'dog': 2 in ['a.json', 'b.json']" in message
    assert "'bird': 1 in ['c.json']" in message
    assert "line: 1 in ['c.json']; point: 1 in ['c.json']" in message
    assert "--skip-unsupported" in message and "--unknown-as-ignore" in message

    convert_labelme(
        labelme_dir, out, ["background", "cat"], skip_unsupported=True, unknown_as_ignore=True
    )
    expected, certain = expected_mask([(255, "polygon", TRIANGLE)])  # bird: ignored
    mask = np.asarray(Image.open(out / "masks" / "c.png"))
    np.testing.assert_array_equal(mask[certain], expected[certain])


def test_output_inside_the_input_and_size_mismatch_stop(labelme_dir, tmp_path):
    before = listing(labelme_dir)
    with pytest.raises(DataError, match="would write into the input folder"):
        convert_labelme(labelme_dir, labelme_dir / "converted")
    images = tmp_path / "raw" / "images"  # labelme files in images/: out_root is its parent
    images.parent.mkdir()
    labelme_dir.rename(images)
    with pytest.raises(DataError, match="would write into the input folder"):
        convert_labelme(images, images.parent)
    assert listing(images) == before and sorted(p.name for p in images.parent.iterdir()) == [
        "images"
    ]
    labelme_dir = images
    labelme_file(labelme_dir, "d", [("cat", "rectangle", RECTANGLE)], imageHeight=W, imageWidth=H)
    with pytest.raises(DataError, match=r"d.json gives imageHeight x imageWidth 48x40 .* 40x48"):
        convert_labelme(labelme_dir, tmp_path / "dataset")


def image_folder(root: Path, count: int) -> list[str]:
    (root / "images").mkdir(parents=True)
    stems = [f"img{i:02d}" for i in range(count)]
    for stem in stems:
        Image.new("RGB", (4, 4)).save(root / "images" / f"{stem}.png")
    return stems


def read_list(root: Path, name: str) -> list[str]:
    return (root / "splits" / f"{name}.txt").read_text().split()


def test_split_by_fractions_is_seeded_and_disjoint(tmp_path):
    stems = image_folder(tmp_path / "a", 10)
    image_folder(tmp_path / "b", 10)
    image_folder(tmp_path / "c", 10)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        args = ["split", str(tmp_path / name), "--val", "0.2", "--test", "0.2", "--seed", str(seed)]
        assert main(args) == 0
    splits = {n: {s: read_list(tmp_path / n, s) for s in ("train", "val", "test")} for n in "abc"}
    a = splits["a"]
    assert [len(a[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(a["train"] + a["val"] + a["test"]) == stems  # each image in one split
    assert splits["b"] == a and splits["c"] != a  # the seed decides
    assert main(["split", str(tmp_path / "a")]) == 1  # existing lists are never overwritten


def test_k_folds_cover_every_image_once_and_hold_out_the_test_split(tmp_path):
    stems = image_folder(tmp_path, 11)
    assert main(["split", str(tmp_path), "--folds", "3", "--test", "0.2", "--seed", "0"]) == 0
    test = read_list(tmp_path, "test")
    assert len(test) == 2  # round(0.2 * 11)
    vals = [read_list(tmp_path, f"fold{k}_val") for k in range(3)]
    assert sorted(len(v) for v in vals) == [3, 3, 3]
    rest = sorted(set(stems) - set(test))
    assert sorted(s for v in vals for s in v) == rest  # every non-test image in one val fold
    for k, val in enumerate(vals):
        assert read_list(tmp_path, f"fold{k}_train") == sorted(set(rest) - set(val))
    # the lists are what FolderDataset reads (a mask for each image)
    (tmp_path / "masks").mkdir()
    for stem in stems:
        Image.new("L", (4, 4)).save(tmp_path / "masks" / f"{stem}.png")
    fold = FolderDataset(tmp_path, num_classes=2, split="fold1_train")
    assert [s[0] for s in fold.samples] == read_list(tmp_path, "fold1_train")
    with pytest.raises(DataError, match="too few for 12 folds"):
        write_folds(tmp_path, 12)
    with pytest.raises(SystemExit):  # --val and --folds exclude each other
        main(["split", str(tmp_path), "--folds", "3", "--val", "0.2"])


def test_labelme_and_split_never_replace_a_file_unless_overwrite(labelme_dir, tmp_path, capsys):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "classes.txt").write_text("road\ncar\n")  # the user's own file
    source = listing(labelme_dir)
    assert main(["labelme", str(labelme_dir), str(out), "--link"]) == 1
    assert f"{out / 'classes.txt'} exists already" in capsys.readouterr().err
    assert listing(out) == {"classes.txt": b"road\ncar\n"}  # nothing written

    (out / "classes.txt").unlink()
    assert main(["labelme", str(labelme_dir), str(out), "--link"]) == 0
    converted = listing(out)
    (out / "notes.txt").write_text("mine")
    assert main(["labelme", str(labelme_dir), str(out)]) == 1
    message = capsys.readouterr().err
    assert f"{out / 'images' / 'a.png'} exists already (and 4 more" in message
    assert "--overwrite" in message
    assert listing(out) == {**converted, "notes.txt": b"mine"}
    # --overwrite replaces the link to the user's image by a copy, never writes through it
    assert main(["labelme", str(labelme_dir), str(out), "--overwrite"]) == 0
    assert not (out / "images" / "a.png").is_symlink()
    assert listing(out) == {**converted, "notes.txt": b"mine"}
    assert listing(labelme_dir) == source

    assert main(["split", str(out), "--val", "0.5"]) == 0
    lists = listing(out / "splits")
    assert main(["split", str(out), "--val", "0.5", "--seed", "1"]) == 1
    assert f"{out / 'splits' / 'val.txt'} exists already" in capsys.readouterr().err
    assert listing(out / "splits") == lists
    assert main(["split", str(out), "--folds", "2", "--overwrite"]) == 0
    assert set(listing(out / "splits")) == {"train.txt", "val.txt", *(
        f"fold{k}_{s}.txt" for k in (0, 1) for s in ("train", "val")
    )}  # fmt: skip
    assert listing(out / "splits")["val.txt"] == lists["val.txt"]  # no list is removed
