"""check_data lists every planted problem at once, and counts pixels per class correctly."""

from __future__ import annotations

import numpy as np
from PIL import Image

from segkit.cli.check_data import main

from ..helpers import write_folder_dataset


def run(capsys, root, num_classes=3, *extra):
    names = ",".join(f"c{i}" for i in range(num_classes))
    code = main(
        [
            "data=folder",
            f"data.dataset.root={root}",
            f"data.num_classes={num_classes}",
            f"data.class_names=[{names}]",
            *extra,
        ]
    )
    return code, capsys.readouterr().out


def test_clean_dataset_counts_pixels_and_images_per_class(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "data", num_images=4)
    code, out = run(capsys, root)
    assert code == 0 and "no problems found" in out
    for split, stems in (("train", ["img0", "img1"]), ("val", ["img2", "img3"])):
        masks = [np.asarray(Image.open(root / "masks" / f"{s}.png")) for s in stems]
        counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=3)
        assert f"split '{split}': 2 images" in out
        for c in range(3):
            assert f"c{c}" in out and str(counts[c]) in out


def test_every_planted_problem_is_listed(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "data", num_images=8, num_classes=2)
    (root / "splits" / "train.txt").write_text("\n".join(f"img{i}" for i in range(6)) + "\n")
    (root / "splits" / "val.txt").write_text("img6\nimg7\nimg6\n")  # duplicate sample
    (root / "splits" / "test.txt").write_text("")  # empty split
    out_of_range = np.zeros((24, 32), np.uint8)
    out_of_range[0, :3] = 5
    Image.fromarray(out_of_range).save(root / "masks" / "img0.png")
    binary = np.zeros((24, 32), np.uint8)
    binary[10:] = 255
    Image.fromarray(binary).save(root / "masks" / "img1.png")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "masks" / "img2.png")  # size
    truncated = root / "images" / "img3.png"
    truncated.write_bytes(truncated.read_bytes()[:-300])
    Image.fromarray(np.zeros((24, 32, 2), np.uint8), mode="LA").save(root / "masks" / "img4.png")
    code, out = run(capsys, root, 2, "data.test_split=test")
    assert code == 1
    problems = out.split("problems:")[1]
    assert "value 5 is no class" in problems and "img0.png" in problems
    assert "img1.png holds only 0 and 255" in problems
    assert "img2.png is 9x9" in problems
    assert "img3.png" in problems and "truncated" in problems
    assert "img4.png has mode 'LA'" in problems
    assert "lists sample 'img6' twice" in problems
    assert "test.txt is empty" in problems


def test_label_ids_where_train_ids_are_expected_and_missing_classes(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "data", num_images=4, num_classes=2)
    label_ids = np.full((24, 32), 7, np.uint8)  # Cityscapes labelIds: road 7, car 26
    label_ids[:, 16:] = 26
    Image.fromarray(label_ids).save(root / "masks" / "img0.png")
    code, out = run(capsys, root, 19)
    assert code == 1
    assert "look like labelIds where trainIds are expected" in out
    assert "value 26 is no class" in out
    # 2-class random masks: classes 2..18 never occur in either split
    assert "data.val_split='val': classes ['c2', 'c3', " in out


def test_one_based_masks_suggest_reduce_zero_label(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "data", num_images=4, num_classes=3)
    for i in range(4):
        mask = np.asarray(Image.open(root / "masks" / f"img{i}.png")) + 1  # values 1..3
        mask[0, 0] = 0
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"img{i}.png")
    code, out = run(capsys, root, 3)
    assert code == 1 and "reduce_zero_label=true" in out
    code, out = run(capsys, root, 3, "data.dataset.reduce_zero_label=true")
    assert code == 0


def write_coco(root, split, masks):
    """``root/<split>/<name>.png`` and a COCO json whose objects are uncompressed RLE
    (column-major runs) of the given binary masks, all category 1 ("cat")."""
    import json

    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for index, (name, mask) in enumerate(masks.items(), start=1):
        height, width = mask.shape
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(root / split / f"{name}.png")
        images.append({"id": index, "file_name": f"{name}.png", "height": height, "width": width})
        flat = mask.flatten(order="F").tolist()
        counts, value, run = [], 0, 0
        for pixel in flat:
            if pixel != value:
                counts.append(run)
                value, run = pixel, 0
            run += 1
        counts.append(run)
        annotations.append(
            {
                "id": index,
                "image_id": index,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": {"counts": counts, "size": [height, width]},
                "area": int(mask.sum()),
                "bbox": [0, 0, width, height],
            }
        )
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def test_coco_dataset_is_scanned(tmp_path, capsys):
    full, left = np.ones((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    left[:, :2] = 1  # the first two columns: 8 pixels
    write_coco(tmp_path, "a", {"full": full, "left": left})
    write_coco(tmp_path, "b", {"v": left})
    code = main(
        [
            "data=coco",
            f"data.dataset.root={tmp_path}",
            "data.num_classes=3",
            "data.class_names=[background,cat,dog]",
            "data.train_split=a",
            "data.val_split=b",
            "data.test_split=b",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    train = out.split("split 'a': 2 images")[1].split("split 'b'")[0]
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in train.splitlines()]
    rows = {row[0]: row[1] for row in cells if len(row) == 4}  # class, pixels, share, images
    assert rows["background"] == "8" and rows["cat"] == "24" and rows["dog"] == "0"
    assert "data.train_split='a': classes ['dog'] have no pixel" in out
    assert "data.test_split equals data.val_split ('b')" in out


def test_binary_masks_crops_and_skipped_files_are_reported(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "data", num_images=4, num_classes=2)
    for i in range(4):  # 0/255 masks with a 2x2 foreground: under the per-mask heuristic
        binary = np.zeros((24, 32), np.uint8)
        binary[4:6, 4:6] = 255
        Image.fromarray(binary).save(root / "masks" / f"img{i}.png")
    (root / "images" / "notes.txt").write_text("not an image")
    code, out = run(capsys, root, 2)
    assert code == 1
    problems = out.split("problems:")[1]
    assert "look like binary 0/255 masks" in problems and "label_map={255:1}" in problems
    warnings = out.split("warnings:")[1].split("problems:")[0]
    assert "files skipped for their extension" in warnings and "notes.txt" in warnings
    assert "(RandomCrop) makes 512x512 samples but the training images are about 32x24" in warnings
    code, out = run(capsys, root, 2, "data.dataset.label_map={255:1}")
    assert code == 0 and "no problems found" in out


def test_palette_masks_whose_colours_disagree_are_reported(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "data", num_images=4, num_classes=2)
    for i, colours in enumerate([[0, 0, 0, 255, 0, 0], [0, 0, 0, 0, 0, 255]]):
        # an editor's per-file palette: index 1 is red in img0, blue in img1
        mask = Image.fromarray(np.asarray(Image.open(root / "masks" / f"img{i}.png")), mode="P")
        mask.putpalette(colours + [0] * 762)
        mask.save(root / "masks" / f"img{i}.png")
    code, out = run(capsys, root, 2)
    assert code == 0  # indices in range: a warning, not a problem
    assert "img0.png and " in out and "give index 1 different colours (#ff0000, #0000ff)" in out
