"""Instance datasets: hand-made folders and a tiny COCO json (polygon, RLE, empty image)."""

from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from segkit.data.instances import (
    CocoInstances,
    InstanceDataModule,
    InstanceFolderDataset,
    collate_instances,
    masks_to_boxes,
)
from segkit.data.io import DataError

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # images come back as raw 0-255 values


def write_instance_folder(root: Path) -> Path:
    """Two 6x8 images: 'a' with a class-1 and a class-2 object, 'empty' with none."""
    for sub in ("images", "masks", "instances"):
        (root / sub).mkdir(parents=True)
    semantic = np.zeros((6, 8), np.uint8)
    ids = np.zeros((6, 8), np.uint8)
    semantic[1:3, 1:4], ids[1:3, 1:4] = 1, 1  # rows 1-2, cols 1-3
    semantic[3:6, 5:8], ids[3:6, 5:8] = 2, 7  # rows 3-5, cols 5-7; ids need not be 1..N
    for stem, (sem, ins) in {"a": (semantic, ids), "empty": (semantic * 0, ids * 0)}.items():
        image = np.full((6, 8, 3), 100, np.uint8)
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(sem).save(root / "masks" / f"{stem}.png")
        Image.fromarray(ins).save(root / "instances" / f"{stem}.png")
    return root


def test_masks_to_boxes_uses_pixel_edges():
    masks = np.zeros((2, 5, 6), np.uint8)
    masks[0, 2, 3] = 1
    masks[1, 1:4, 0:2] = 1
    assert masks_to_boxes(masks).tolist() == [[3, 2, 4, 3], [0, 1, 2, 4]]


def test_folder_instances_boxes_labels_masks(tmp_path):
    dataset = InstanceFolderDataset(
        write_instance_folder(tmp_path), num_classes=3, mean=MEAN, std=STD
    )
    sample = dataset[0]
    target = sample["target"]
    assert sample["name"] == "a" and sample["image"].shape == (3, 6, 8)
    assert target["labels"].tolist() == [1, 2]
    assert target["boxes"].tolist() == [[1, 1, 4, 3], [5, 3, 8, 6]]
    assert target["masks"].shape == (2, 6, 8) and target["masks"].dtype == torch.uint8
    assert target["masks"].sum(dim=(1, 2)).tolist() == [6, 9]
    # the semantic mask is the class map the instances paint
    painted = (target["masks"] * target["labels"][:, None, None]).sum(0)
    assert torch.equal(painted, sample["mask"])

    empty = dataset[1]["target"]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["masks"].shape == (0, 6, 8)


def test_flip_keeps_boxes_on_masks(tmp_path):
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    dataset = InstanceFolderDataset(
        write_instance_folder(tmp_path), num_classes=3, transform=flip, mean=MEAN, std=STD
    )
    target = dataset[0]["target"]
    # x -> 8 - x for box edges: [1, 4] -> [4, 7], [5, 8] -> [0, 3]
    assert target["boxes"].tolist() == [[4, 1, 7, 3], [0, 3, 3, 6]]
    assert target["masks"][0, 1, 4] == 1 and target["masks"][0, 1, 1] == 0
    assert dataset[1]["target"]["masks"].shape == (0, 6, 8)  # empty image through a transform


def test_crop_drops_instances_left_without_pixels(tmp_path):
    crop = A.Compose([A.Crop(x_min=0, y_min=0, x_max=4, y_max=3)])
    dataset = InstanceFolderDataset(
        write_instance_folder(tmp_path), num_classes=3, transform=crop, mean=MEAN, std=STD
    )
    target = dataset[0]["target"]
    assert target["labels"].tolist() == [1]
    assert target["boxes"].tolist() == [[1, 1, 4, 3]]


def test_instance_on_two_classes_is_an_error(tmp_path):
    root = write_instance_folder(tmp_path)
    ids = np.asarray(Image.open(root / "instances" / "a.png")).copy()
    ids[3:6, 5:8] = 1  # instance 1 now also covers class-2 pixels
    Image.fromarray(ids).save(root / "instances" / "a.png")
    message = r"instance 1 of .*a\.png covers classes \[1, 2\]"
    with pytest.raises(DataError, match=message):  # at start-up, by the sample check
        InstanceFolderDataset(root, num_classes=3)
    dataset = InstanceFolderDataset(root, num_classes=3, startup_check=0)
    with pytest.raises(DataError, match=message):
        dataset[0]


def test_missing_instances_folder_names_it(tmp_path):
    root = write_instance_folder(tmp_path)
    for path in (root / "instances").iterdir():
        path.unlink()
    (root / "instances").rmdir()
    with pytest.raises(DataError, match="instances"):
        InstanceFolderDataset(root, num_classes=3)


def write_coco(root: Path) -> Path:
    """images in root/tiny/, annotations/instances_tiny.json with category ids 3 and 7."""
    (root / "tiny").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name, (h, w) in {"one.png": (6, 8), "two.png": (4, 3), "none.png": (5, 5)}.items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "tiny" / name)
    compressed = mask_utils.encode(np.asfortranarray(np.eye(6, 8, dtype=np.uint8)))
    coco = {
        "images": [
            {"id": 1, "file_name": "one.png", "height": 6, "width": 8},
            {"id": 2, "file_name": "two.png", "height": 4, "width": 3},
            {"id": 5, "file_name": "none.png", "height": 5, "width": 5},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            # polygon: the rectangle x 1-5, y 1-4 covers pixel columns 1-4, rows 1-3
            {"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0,
             "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]},
            # compressed RLE of the diagonal (0,0)..(5,5), flagged crowd: not an object
            {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 1,
             "segmentation": {"counts": compressed["counts"].decode(), "size": [6, 8]}},
            # uncompressed RLE, column-major runs: 5 zeros, 2 ones, 5 zeros on 4x3
            {"id": 3, "image_id": 2, "category_id": 3, "iscrowd": 0,
             "segmentation": {"counts": [5, 2, 5], "size": [4, 3]}},
            # compressed RLE, not crowd
            {"id": 4, "image_id": 1, "category_id": 3, "iscrowd": 0,
             "segmentation": {"counts": compressed["counts"].decode(), "size": [6, 8]}},
        ],
    }  # fmt: skip
    (root / "annotations" / "instances_tiny.json").write_text(json.dumps(coco))
    return root


def test_coco_polygon_rle_crowd_and_empty_image(tmp_path):
    dataset = CocoInstances(
        write_coco(tmp_path), "tiny", ["background", "cat", "dog"], mean=MEAN, std=STD
    )
    assert len(dataset) == 3
    one = dataset[0]
    # category 7 (dog) -> label 2, category 3 (cat) -> label 1 (increasing id order)
    assert one["target"]["labels"].tolist() == [2, 1]
    rectangle = np.zeros((6, 8), np.uint8)
    rectangle[1:4, 1:5] = 1
    assert np.array_equal(one["target"]["masks"][0].numpy(), rectangle)
    assert np.array_equal(one["target"]["masks"][1].numpy(), np.eye(6, 8, dtype=np.uint8))
    assert one["target"]["boxes"].tolist() == [[1, 1, 5, 4], [0, 0, 6, 6]]
    # semantic view: later annotations on top; the crowd region (same diagonal) is ignored
    expected = rectangle * 2
    expected[np.eye(6, 8, dtype=bool)] = 255
    assert np.array_equal(one["mask"].numpy(), expected)
    # the crowd region is kept apart, for COCOeval's crowd rule
    assert one["crowd"]["labels"].tolist() == [1]
    assert one["crowd"]["boxes"].tolist() == [[0, 0, 6, 6]]
    assert np.array_equal(one["crowd"]["masks"][0].numpy(), np.eye(6, 8, dtype=np.uint8))

    two = dataset[1]["target"]
    assert two["labels"].tolist() == [1] and two["boxes"].tolist() == [[1, 1, 2, 3]]
    assert two["masks"][0].nonzero().tolist() == [[1, 1], [2, 1]]
    assert dataset[1]["crowd"]["masks"].shape == (0, 4, 3)

    none = dataset[2]
    assert none["target"]["masks"].shape == (0, 5, 5) and none["mask"].sum() == 0


def test_coco_class_names_are_checked(tmp_path):
    with pytest.raises(DataError, match=r"instances_tiny\.json has 2 categories"):
        CocoInstances(write_coco(tmp_path), "tiny", ["background", "dog", "cat"])


def test_coco_missing_annotations_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"annotations/instances_val\.json"):
        CocoInstances(tmp_path, "val", ["background"])


def test_loader_batches_lists(tmp_path):
    root = write_coco(tmp_path)
    module = InstanceDataModule(
        dataset=lambda split, transform: CocoInstances(root, split, ["background", "cat", "dog"]),
        num_classes=3,
        class_names=["background", "cat", "dog"],
        val_split="tiny",
        eval_batch_size=3,
        num_workers=0,
    )
    batch = next(iter(module.val_dataloader()))
    assert [image.shape for image in batch["image"]] == [(3, 6, 8), (3, 4, 3), (3, 5, 5)]
    assert [len(t["labels"]) for t in batch["target"]] == [2, 1, 0]
    assert batch["name"] == ["one", "two", "none"]
    assert collate_instances([{"a": 1}, {"a": 2}]) == {"a": [1, 2]}
