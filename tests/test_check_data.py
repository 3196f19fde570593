"""check_data lists every planted problem at once, and counts pixels per class correctly."""

from __future__ import annotations

import numpy as np
from PIL import Image

from segkit.check_data import main

from .conftest import write_folder_dataset


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
    assert "split 'val': no pixel of classes ['c2', 'c3'" in out


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
