"""FolderDataset: sample format and a clear error for each kind of bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.data.folder import FolderDataset
from segkit.data.io import DataError


def test_sample_format_and_normalisation(folder_dataset):
    ds = FolderDataset(
        folder_dataset, num_classes=3, split="train", mean=(0.5,) * 3, std=(0.25,) * 3
    )
    assert len(ds) == 2
    sample = ds[0]
    assert sample["image"].shape == (3, 24, 32) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (24, 32) and sample["mask"].dtype == torch.int64
    raw = np.asarray(Image.open(folder_dataset / "images" / f"{sample['name']}.png"))
    expected = (raw.astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(sample["image"].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    mask = np.asarray(Image.open(folder_dataset / "masks" / f"{sample['name']}.png"))
    np.testing.assert_array_equal(sample["mask"].numpy(), mask)


def test_no_split_uses_every_image(folder_dataset):
    assert len(FolderDataset(folder_dataset, num_classes=3)) == 4


def test_transform_keeps_image_and_mask_aligned(folder_dataset):
    import albumentations as A

    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    plain = FolderDataset(folder_dataset, num_classes=3, split="train")[0]
    flipped = FolderDataset(folder_dataset, num_classes=3, split="train", transform=flip)[0]
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1))
    assert torch.allclose(flipped["image"], plain["image"].flip(-1))


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FolderDataset(tmp_path / "nope", num_classes=3)


def test_empty_root(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no images"):
        FolderDataset(tmp_path, num_classes=3)


def test_missing_mask_names_the_image(folder_dataset):
    (folder_dataset / "masks" / "img1.png").unlink()
    with pytest.raises(DataError, match="img1.png has no mask"):
        FolderDataset(folder_dataset, num_classes=3)


def test_value_outside_class_set_names_the_file(folder_dataset):
    mask = np.zeros((24, 32), np.uint8)
    mask[0, 0] = 7
    Image.fromarray(mask).save(folder_dataset / "masks" / "img0.png")
    ds = FolderDataset(folder_dataset, num_classes=3, split="train", startup_check=0)
    with pytest.raises(DataError, match=r"img0.png has values \[7\]"):
        ds[0]


def test_ignore_value_is_allowed(folder_dataset):
    mask = np.zeros((24, 32), np.uint8)
    mask[:2] = 255
    mask[5] = 2
    Image.fromarray(mask).save(folder_dataset / "masks" / "img0.png")
    sample = FolderDataset(folder_dataset, num_classes=3, split="train")[0]
    assert (sample["mask"] == 255).sum() == 64


def test_binary_0_255_mask_is_an_error(folder_dataset):
    mask = np.zeros((24, 32), np.uint8)
    mask[8:] = 255
    Image.fromarray(mask).save(folder_dataset / "masks" / "img0.png")
    with pytest.raises(DataError, match="binary 0/255"):
        FolderDataset(folder_dataset, num_classes=2, split="train")[0]


def test_size_mismatch_names_both_files(folder_dataset):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder_dataset / "masks" / "img0.png")
    with pytest.raises(DataError, match="img0.png is 32x24 but its mask .*img0.png is 10x10"):
        FolderDataset(folder_dataset, num_classes=3, split="train")[0]


def test_unreadable_image_names_the_file(folder_dataset):
    (folder_dataset / "images" / "img0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*img0.png"):
        FolderDataset(folder_dataset, num_classes=3, split="train")[0]


def test_colour_mask_is_an_error(folder_dataset):
    colours = np.zeros((24, 32, 3), np.uint8)
    colours[:, 16:] = (128, 0, 0)  # a colour, not a grey value stored as RGB
    Image.fromarray(colours).save(folder_dataset / "masks" / "img0.png")
    with pytest.raises(DataError, match="single-channel"):
        FolderDataset(folder_dataset, num_classes=3, split="train")[0]


def test_split_list_naming_unknown_image(folder_dataset):
    (folder_dataset / "splits" / "train.txt").write_text("img0\nghost\n")
    with pytest.raises(DataError, match="ghost"):
        FolderDataset(folder_dataset, num_classes=3, split="train")
