"""PASCAL VOC 2012 (+ SBD train_aug) on a miniature fake tree in the official layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from scipy.io import savemat

from segkit.data.io import DataError
from segkit.data.voc import CLASS_NAMES, PALETTE, VOCDataset

from ..helpers import PROJECT_ROOT

OFFICIAL_NAMES = (
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog "
    "horse motorbike person pottedplant sheep sofa train tvmonitor"
).split()
OFFICIAL_COLOURS = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
    (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0),
    (64, 0, 128), (192, 0, 128), (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0),
    (0, 192, 0), (128, 192, 0), (0, 64, 128),
]  # fmt: skip
VOID_COLOUR = (224, 224, 192)


def labels() -> np.ndarray:
    """6x22 mask: every class index in the middle rows, 255 (void) borders."""
    mask = np.full((6, 22), 255, np.uint8)
    mask[1:5, :21] = np.arange(21)
    return mask


def palette_png(mask: np.ndarray, path: Path) -> None:
    image = Image.fromarray(mask, mode="P")
    flat = [0] * 768
    for index, colour in [*enumerate(OFFICIAL_COLOURS), (255, VOID_COLOUR)]:
        flat[3 * index : 3 * index + 3] = colour
    image.putpalette(flat)
    image.save(path)


def write_voc(root: Path, train: list[str], val: list[str]) -> Path:
    voc = root / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    for stem in train + val:
        Image.fromarray(np.full((6, 22, 3), 90, np.uint8)).save(voc / "JPEGImages" / f"{stem}.jpg")
        palette_png(labels(), voc / "SegmentationClass" / f"{stem}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(train) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(val) + "\n")
    return voc


def test_palette_pngs_decode_to_class_indices(tmp_path):
    voc = write_voc(tmp_path, ["2007_000032"], ["2007_000033"])
    ds = VOCDataset(voc, split="train")
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), labels())
    assert len(VOCDataset(voc, split="val")) == 1


def test_colour_masks_decode_with_the_voc_palette(tmp_path):
    voc = write_voc(tmp_path, ["a"], ["b"])
    lut = np.zeros((256, 3), np.uint8)
    lut[:21] = OFFICIAL_COLOURS
    lut[255] = VOID_COLOUR
    Image.fromarray(lut[labels()]).save(voc / "SegmentationClass" / "a.png")  # RGB file
    np.testing.assert_array_equal(VOCDataset(voc, split="train")[0]["mask"].numpy(), labels())
    odd = lut[labels()]
    odd[0, 0] = (1, 2, 3)
    Image.fromarray(odd).save(voc / "SegmentationClass" / "a.png")
    with pytest.raises(DataError, match=r"a.png has colours \['#010203'\]"):
        VOCDataset(voc, split="train")


def test_train_aug_joins_sbd_and_leaves_out_voc_val(tmp_path):
    voc = write_voc(tmp_path, ["a", "b"], ["c"])
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "img").mkdir()
    (sbd / "train.txt").write_text("b\nc\nd\n")
    (sbd / "val.txt").write_text("e\n")
    for stem, value in (("b", 7), ("c", 8), ("d", 9), ("e", 10)):
        seg = np.full((6, 22), value, np.uint8)
        savemat(sbd / "cls" / f"{stem}.mat", {"GTcls": {"Segmentation": seg}})
        Image.fromarray(np.zeros((6, 22, 3), np.uint8)).save(sbd / "img" / f"{stem}.jpg")
    with pytest.raises(DataError, match="sbd_root"):
        VOCDataset(voc, split="train_aug")
    ds = VOCDataset(voc, split="train_aug", sbd_root=sbd)
    # (VOC train + SBD train + SBD val) - VOC val, by hand: a, b, d, e
    assert [s[0] for s in ds.samples] == ["a", "b", "d", "e"]
    masks = {ds[i]["name"]: ds[i]["mask"].numpy() for i in range(len(ds))}
    np.testing.assert_array_equal(masks["b"], labels())  # VOC's own label preferred
    assert (masks["d"] == 9).all() and (masks["e"] == 10).all()  # from the SBD .mat files
    assert ds.samples[2][1] == sbd / "img" / "d.jpg"  # image not in JPEGImages: SBD's


def test_class_names_and_palette_are_the_official_ones():
    assert list(CLASS_NAMES) == OFFICIAL_NAMES
    assert [tuple(c) for c in PALETTE] == OFFICIAL_COLOURS
    conf = OmegaConf.load(PROJECT_ROOT / "conf" / "data" / "voc.yaml")
    assert list(conf.class_names) == OFFICIAL_NAMES and conf.num_classes == 21
    assert [tuple(c) for c in conf.palette] == OFFICIAL_COLOURS
