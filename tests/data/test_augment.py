"""The ``augment`` presets: the default is each data config's recipe as it was, and every
preset keeps masks to class indices and ``ignore_index`` and images aligned with them."""

from __future__ import annotations

import albumentations as A
import hydra
import numpy as np
import pytest
from omegaconf import OmegaConf

from segkit.data.augment import SemanticCompose, random_crop
from segkit.data.datamodule import SegmentationDataModule
from segkit.data.io import DataError

from ..helpers import compose

PRESETS = ["none", "light", "strong"]
IGNORE = 11  # not 255, so a fill left at a default (0 or 255) shows
SCALE_CROP = [  # the big-image recipe: scale 0.5-2.0, crop <H>x<W>, flip
    {"_target_": "albumentations.RandomScale", "scale_limit": [-0.5, 1.0], "p": 1.0},
    {"_target_": "albumentations.RandomCrop", "height": 512, "width": 512,
     "pad_if_needed": True, "fill_mask": 255},
    {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
]  # fmt: skip
FLIP = {"_target_": "albumentations.HorizontalFlip", "p": 0.5}
JITTER = {"_target_": "albumentations.ColorJitter", "brightness": 0.2, "contrast": 0.2,
          "saturation": 0.2, "hue": 0.05, "p": 0.5}  # fmt: skip


def with_crop(height: int, width: int) -> list[dict]:
    crop = {**SCALE_CROP[1], "height": height, "width": width}
    return [SCALE_CROP[0], crop, SCALE_CROP[2]]


# data.train_transform of every data config before the augment group existed (git eef6a3d),
# written out by hand: augment=default must reproduce each one exactly.
BEFORE = {
    "shapes": [FLIP, JITTER],
    "shapes_instances": [FLIP, JITTER],
    "folder": with_crop(512, 512),
    "voc": with_crop(512, 512),
    "cityscapes": with_crop(512, 1024),
    "camvid": [*with_crop(352, 480), {**JITTER, "hue": 0.0}],
    "coco": [FLIP],
}


@pytest.mark.parametrize("data", sorted(BEFORE))
def test_default_preset_is_the_data_configs_recipe_as_before(data, tmp_path):
    cfg = compose(tmp_path, [f"data={data}"])
    assert cfg.hydra.runtime.choices.augment == "default"
    recipe = OmegaConf.to_container(cfg.data.train_transform, resolve=True)
    assert recipe == {"_target_": "albumentations.Compose", "transforms": BEFORE[data]}


def preset(tmp_path, name: str, *overrides: str, crop=(40, 48)) -> A.Compose:
    """The preset ``name`` on shapes data with ``ignore_index`` 11 and a 40x48 crop."""
    cfg = compose(
        tmp_path,
        [f"augment={name}", f"data.ignore_index={IGNORE}", f"data.crop_size=[{crop[0]},{crop[1]}]",
         *overrides],
    )  # fmt: skip
    transform = hydra.utils.instantiate(cfg.data.train_transform)
    transform.set_random_seed(0)
    return transform


def blocks(rng: np.random.Generator, shape=(56, 64), size=8, classes=(0, 3)) -> np.ndarray:
    """A label map of ``size`` x ``size`` blocks, each one of ``classes``."""
    grid = rng.choice(classes, size=(shape[0] // size, shape[1] // size))
    return np.kron(grid, np.ones((size, size), int)).astype(np.uint8)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_masks_hold_only_the_input_classes_and_ignore_index(name, tmp_path):
    transform = preset(tmp_path, name)
    rng = np.random.default_rng(0)
    filled = 0
    for _ in range(20):
        mask = blocks(rng)  # classes 0 and 3 only: 1, 2 or 4 would be a blend of them
        image = rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
        out = transform(image=image, mask=mask)
        assert out["mask"].shape == (40, 48) and out["image"].shape == (40, 48, 3)
        assert set(np.unique(out["mask"]).tolist()) <= {0, 3, IGNORE}
        filled += int((out["mask"] == IGNORE).any())
    if name != "none":  # rotation, shift and zoom-out leave borders: they are ignored
        assert filled > 0
    else:  # the 56x64 images are larger than the crop: nothing to pad
        assert filled == 0


# class index -> colour; black is what geometric transforms fill the image with
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]])


def geometric(transform: A.Compose) -> A.Compose:
    """The transforms of ``transform`` that move pixels (albumentations DualTransforms)."""
    moving = [t for t in transform.transforms if isinstance(t, A.DualTransform)]
    return A.Compose(moving, seed=0)


@pytest.mark.parametrize("name", PRESETS)
def test_colour_coded_image_stays_aligned_with_its_mask(name, tmp_path):
    # Nearest-neighbour sampling for the image too: image and mask must then be the same
    # picture, pixel for pixel: colour PALETTE[c] where the mask says c, black where ignored.
    moving = [0, 2] if name != "none" else []  # RandomScale and Affine
    nearest = [f"+data.train_transform.transforms.{i}.interpolation=0" for i in moving]
    exact = geometric(preset(tmp_path, name, *nearest))
    # The preset's own bilinear image sampling: each pixel inside a uniform 5x5 patch of the
    # mask has the colour of the mask's class (nearest palette colour, black for ignored).
    blended = geometric(preset(tmp_path, name))
    palette = np.concatenate([PALETTE, [[0, 0, 0]]])  # index 5: ignored, black
    rng = np.random.default_rng(1)
    moved = 0
    for _ in range(15):
        mask = blocks(rng, classes=range(5))
        image = PALETTE[mask].astype(np.uint8)
        out = exact(image=image, mask=mask)
        label = np.where(out["mask"] == IGNORE, 5, out["mask"])
        np.testing.assert_array_equal(out["image"], palette[label])
        moved += not any(
            np.array_equal(out["mask"], m[y : y + 40, x : x + 48])
            for m in (mask, mask[:, ::-1]) for y in range(17) for x in range(17)
        )  # fmt: skip

        out = blended(image=image, mask=mask)
        label = np.where(out["mask"] == IGNORE, 5, out["mask"]).astype(int)
        windows = np.lib.stride_tricks.sliding_window_view(label, (5, 5))
        uniform = (windows == windows[..., :1, :1]).all(axis=(-1, -2))
        centre = label[2:-2, 2:-2][uniform]
        pixels = out["image"][2:-2, 2:-2][uniform].astype(int)
        nearest_colour = ((pixels[:, None] - palette[None]) ** 2).sum(-1).argmin(1)
        assert centre.size > 100 and (nearest_colour == centre).all()
    if name != "none":  # more than a crop and a horizontal flip happened
        assert moved > 0


def test_presets_refuse_instance_masks_and_a_missing_crop_size():
    compose_ = SemanticCompose([A.HorizontalFlip(p=1.0)])
    image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    assert compose_(image=image, mask=mask)["mask"].shape == (8, 8)
    with pytest.raises(DataError, match="augment=default with instance data"):
        compose_(image=image, mask=mask, masks=[mask])
    with pytest.raises(ValueError, match=r"data.crop_size.*augment=default"):
        random_crop(None, fill_mask=255)
    with pytest.raises(ValueError, match=r"data.crop_size=\[512\]: .*\[height, width\]"):
        SegmentationDataModule(lambda split, transform: [], 2, ["a", "b"], crop_size=[512])
