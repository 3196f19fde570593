"""Cityscapes on a miniature fake tree in the official layout: labelId -> trainId mapping,
``*_labelTrainIds.png``, class names and colours against the official table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from segkit.data.cityscapes import CLASS_NAMES, PALETTE, CityscapesDataset
from segkit.data.io import DataError

from ..helpers import PROJECT_ROOT

# cityscapesScripts helpers/labels.py: (name, id, trainId, color); 255 = not evaluated
LABELS = [
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
]
EVALUATED = sorted((t, name, color) for name, _, t, color in LABELS if t != 255)


def write_tree(root: Path, split: str = "train") -> np.ndarray:
    """Two cities; aachen has labelIds only, bremen also labelTrainIds. Returns the labelIds."""
    label_ids = np.tile(np.arange(34, dtype=np.uint8), (4, 1))  # every labelId, 4x34
    for city, frame in (("aachen", "000000_000019"), ("bremen", "000001_000019")):
        (root / "leftImg8bit" / split / city).mkdir(parents=True)
        (root / "gtFine" / split / city).mkdir(parents=True)
        stem = f"{city}_{frame}"
        image = np.full((4, 34, 3), 100, np.uint8)
        Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        Image.fromarray(label_ids).save(
            root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        )
    train_ids = np.full((4, 34), 255, np.uint8)
    train_ids[:, :19] = np.arange(19)
    Image.fromarray(train_ids).save(
        root / "gtFine" / split / "bremen" / "bremen_000001_000019_gtFine_labelTrainIds.png"
    )
    return label_ids


def test_every_label_id_maps_to_its_train_id(tmp_path):
    label_ids = write_tree(tmp_path)
    ds = CityscapesDataset(tmp_path, split="train")
    assert [s[0] for s in ds.samples] == ["aachen_000000_000019", "bremen_000001_000019"]
    mask = ds[0]["mask"].numpy()
    expected = {label_id: train_id for _, label_id, train_id, _ in LABELS}
    for column in range(34):
        assert (mask[:, column] == expected[label_ids[0, column]]).all(), column
    # 19 evaluated ids map to 0..18 once each; the 15 others are ignored
    assert sorted(np.unique(mask[0]).tolist()) == [*range(19), 255]
    assert (mask[0] == 255).sum() == 15


def test_label_train_ids_files_are_read_as_stored(tmp_path):
    write_tree(tmp_path)
    ds = CityscapesDataset(tmp_path, split="train")
    assert ds.samples[1][2].name.endswith("_gtFine_labelTrainIds.png")
    mask = ds[1]["mask"].numpy()
    assert (mask[:, :19] == np.arange(19)).all() and (mask[:, 19:] == 255).all()


def test_train_ids_stored_as_label_train_ids_with_label_ids_inside_is_an_error(tmp_path):
    write_tree(tmp_path)
    wrong = np.tile(np.arange(34, dtype=np.uint8), (4, 1))  # labelIds under the trainIds name
    Image.fromarray(wrong).save(
        tmp_path / "gtFine/train/bremen/bremen_000001_000019_gtFine_labelTrainIds.png"
    )
    with pytest.raises(DataError, match=r"labelTrainIds.png has values \[19, 20"):
        CityscapesDataset(tmp_path, split="train")


def test_class_names_and_palette_are_the_official_ones():
    assert list(CLASS_NAMES) == [name for _, name, _ in EVALUATED]
    assert [tuple(c) for c in PALETTE] == [color for _, _, color in EVALUATED]
    conf = OmegaConf.load(PROJECT_ROOT / "conf" / "data" / "cityscapes.yaml")
    assert list(conf.class_names) == list(CLASS_NAMES) and conf.num_classes == 19
    assert [tuple(c) for c in conf.palette] == [tuple(c) for c in PALETTE]


def test_missing_root_says_what_to_set(tmp_path):
    with pytest.raises(DataError, match="data.dataset.root"):
        CityscapesDataset(tmp_path / "nowhere", split="val")
