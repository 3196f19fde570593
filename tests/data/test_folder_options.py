"""FolderDataset options (reduce_zero_label, label_map) and the bad-data survey: each broken
input gets an error naming the file, and building a dataset checks a sample up front."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segkit.data.folder import FolderDataset
from segkit.data.io import DataError


def save_mask(root, stem, mask):
    Image.fromarray(np.asarray(mask, np.uint8)).save(root / "masks" / f"{stem}.png")


def test_reduce_zero_label_maps_zero_to_ignore_and_shifts_the_rest(folder_dataset):
    mask = np.zeros((24, 32), np.uint8)
    mask[:, 10:] = 1
    mask[:, 20:] = 3
    mask[0, 0] = 255
    save_mask(folder_dataset, "img0", mask)
    ds = FolderDataset(folder_dataset, num_classes=3, split="train", reduce_zero_label=True)
    got = ds[0]["mask"].numpy()
    expected = np.full((24, 32), 255)  # by hand: 0 -> 255, 1 -> 0, 3 -> 2, 255 stays
    expected[:, 10:] = 0
    expected[:, 20:] = 2
    expected[0, 0] = 255
    np.testing.assert_array_equal(got, expected)


def test_label_map_turns_binary_0_255_masks_into_classes(folder_dataset):
    mask = np.zeros((24, 32), np.uint8)
    mask[12:] = 255
    save_mask(folder_dataset, "img0", mask)
    save_mask(folder_dataset, "img1", np.zeros((24, 32)))
    with pytest.raises(DataError, match="binary 0/255"):
        FolderDataset(folder_dataset, num_classes=2, split="train")
    ds = FolderDataset(folder_dataset, num_classes=2, split="train", label_map={255: 1})
    got = ds[0]["mask"].numpy()
    assert (got[:12] == 0).all() and (got[12:] == 1).all()


def test_label_map_then_reduce_zero_label(folder_dataset):
    save_mask(folder_dataset, "img0", np.full((24, 32), 7))
    ds = FolderDataset(
        folder_dataset, num_classes=3, split="train", label_map={7: 2}, reduce_zero_label=True
    )
    assert (ds[0]["mask"] == 1).all()  # 7 -> 2 (map), then 2 -> 1 (reduce)


def test_truncated_png_names_the_file(folder_dataset):
    path = folder_dataset / "images" / "img1.png"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"cannot read image .*img1.png.*truncated"):
        FolderDataset(folder_dataset, num_classes=3, split="train")


def test_mask_with_an_extra_channel_names_the_file(folder_dataset):
    grey_alpha = np.zeros((24, 32, 2), np.uint8)
    Image.fromarray(grey_alpha, mode="LA").save(folder_dataset / "masks" / "img0.png")
    with pytest.raises(DataError, match=r"img0.png has mode 'LA' \(2 channels\)"):
        FolderDataset(folder_dataset, num_classes=3, split="train")


def test_empty_split_names_the_list(folder_dataset):
    (folder_dataset / "splits" / "val.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"split list .*val.txt is empty"):
        FolderDataset(folder_dataset, num_classes=3, split="val")


def test_duplicate_stems_are_an_error(folder_dataset):
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(folder_dataset / "images" / "img0.jpg")
    with pytest.raises(DataError, match=r"same stem.*img0.jpg and img0.png"):
        FolderDataset(folder_dataset, num_classes=3, split="train")


def test_stem_listed_twice_in_a_split_is_an_error(folder_dataset):
    (folder_dataset / "splits" / "train.txt").write_text("img0\nimg1\nimg0\n")
    with pytest.raises(DataError, match="lists sample 'img0' twice"):
        FolderDataset(folder_dataset, num_classes=3, split="train")


def test_startup_check_lists_every_problem_of_the_sample(folder_dataset):
    bad = np.zeros((24, 32), np.uint8)
    bad[0, 0] = 9
    save_mask(folder_dataset, "img0", bad)
    save_mask(folder_dataset, "img1", np.zeros((10, 10)))
    with pytest.raises(DataError) as info:
        FolderDataset(folder_dataset, num_classes=3, split="train")
    message = str(info.value)
    assert "2 problem(s) in 2 checked samples" in message
    assert "img0.png has values [9]" in message and "img1.png is 10x10" in message
    assert "segkit.cli.check_data" in message
    # with the check off the dataset builds, and the sample fails when read
    ds = FolderDataset(folder_dataset, num_classes=3, split="train", startup_check=0)
    with pytest.raises(DataError, match=r"img0.png has values \[9\]"):
        ds[0]
