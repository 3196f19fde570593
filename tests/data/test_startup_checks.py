"""Start-up checks of the data module: wrong settings and unlearnable labels stop before
training with the key or file and the fix; suspicious data warns (segkit.data.checks)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import albumentations as A
import hydra
import numpy as np
import pytest
import torch
from PIL import Image

from segkit.cli.check_data import main as check_data_main
from segkit.config import compose
from segkit.data.datamodule import SegmentationDataModule, UnpaddedDistributedSampler
from segkit.data.folder import FolderDataset
from segkit.data.instances import InstanceDataModule, InstanceFolderDataset
from segkit.data.io import DataError, DataWarning


def write(root: Path, masks: dict[str, np.ndarray], splits: dict[str, list[str]] | None = None):
    """images/ (random RGB), masks/ as given, and splits/<name>.txt; returns root."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem, mask in masks.items():
        image = rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(np.asarray(mask, np.uint8)).save(root / "masks" / f"{stem}.png")
    for name, stems in (splits or {}).items():
        (root / "splits" / f"{name}.txt").write_text("\n".join(stems) + "\n")
    return root


def module(root: Path, num_classes: int = 2, **options) -> SegmentationDataModule:
    dataset = partial(FolderDataset, root=root, num_classes=num_classes)
    names = [f"c{i}" for i in range(num_classes)]
    options = {"num_workers": 0, "pin_memory": False, "batch_size": 2, **options}
    return SegmentationDataModule(dataset, num_classes, names, **options)


def random_masks(count: int, num_classes: int = 2, size=(8, 8)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {f"m{i}": rng.integers(0, num_classes, size) for i in range(count)}


# --- settings (construction) ----------------------------------------------------------------


def test_ignore_index_equal_to_a_class_stops_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"data\.ignore_index=1 is class 1 \('c1'\)"):
        module(tmp_path, num_classes=3, ignore_index=1)
    with pytest.raises(ValueError, match="reduce_zero_label=true"):
        module(tmp_path, num_classes=3, ignore_index=0)
    module(tmp_path, num_classes=3, ignore_index=255)  # no class: fine
    module(tmp_path, num_classes=3, ignore_index=-100)


def test_mean_and_std_on_the_0_255_scale_stop_with_the_divided_values(tmp_path):
    with pytest.raises(ValueError) as info:
        module(tmp_path, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    message = str(info.value)
    assert "0-255 pixel scale" in message and "divide both by 255" in message
    # 123.675 / 255 = 0.485, 58.395 / 255 = 0.229 (the ImageNet statistics)
    assert "data.mean=[0.485, 0.456, 0.406]" in message
    assert "data.std=[0.229, 0.224, 0.225]" in message
    with pytest.raises(ValueError, match="data.std=.* must be > 0"):
        module(tmp_path, std=(0.2, 0.0, 0.2))


def test_statistics_give_one_value_per_input_channel(tmp_path):
    with pytest.raises(ValueError, match="data.mean has 3 values but data.in_channels is 1"):
        module(tmp_path, in_channels=1)  # greyscale with the RGB statistics
    with pytest.raises(ValueError, match=r"data.in_channels=2: .*give 3 or 1"):
        module(tmp_path, in_channels=2, mean=(0.5, 0.5), std=(0.2, 0.2))
    assert module(tmp_path, in_channels=1, mean=(0.5,), std=(0.25,)).in_channels == 1


@pytest.mark.parametrize("root", [[], ["data.dataset.root=null"]])
def test_folder_without_a_root_names_data_dataset_root(root):
    cfg = compose(["data=folder", "data.num_classes=2", "data.class_names=[a,b]", *root])
    with pytest.raises(
        Exception, match=r"data\.dataset\.root is not set: give data\.dataset\.root="
    ):
        hydra.utils.instantiate(cfg.data).setup("fit")


# --- splits -----------------------------------------------------------------------------------


def test_missing_split_list_names_the_split_key(tmp_path):
    root = write(tmp_path / "d", random_masks(4))  # no splits/*.txt at all
    with pytest.raises(DataError) as info:
        module(root).setup("fit")
    message = str(info.value)
    assert message.startswith("data.train_split='train': split list")
    assert "python -m segkit.cli.convert split" in message


def test_validation_on_the_training_split_stops_unless_named_on_purpose(tmp_path):
    masks = random_masks(4)
    root = write(tmp_path / "d", masks, {"train": list(masks)})
    with pytest.raises(DataError, match="data.val_split and data.train_split are both None"):
        module(root, train_split=None, val_split=None, test_split=None).setup("fit")
    # the same list named for both (a fitting check): loud, not refused
    with pytest.warns(DataWarning, match="both 'train'.*fitting check"):
        module(root, train_split="train", val_split="train", test_split=None).setup("fit")


def test_shared_images_and_test_equal_to_val_warn(tmp_path):
    splits = {"train": ["m0", "m1", "m2"], "val": ["m2", "m3"]}
    root = write(tmp_path / "d", random_masks(4), splits)
    dm = module(root, test_split="val")
    with pytest.warns(DataWarning, match=r"1 of the 2 images of data.val_split='val' are also in"):
        dm.setup("fit")
    with pytest.warns(DataWarning, match=r"data.test_split equals data.val_split \('val'\)"):
        dm.setup("test")


# --- labels of the training split --------------------------------------------------------------


def defect_masks() -> dict[str, np.ndarray]:
    """Binary 0/255 masks with a small foreground (under 10% of every mask) or none."""
    masks = {f"d{i}": np.zeros((16, 16), np.uint8) for i in range(10)}
    masks["d3"][5:8, 5:8] = 255  # 9 of 256 pixels: 3.5%
    masks["d7"][0:2, 0:4] = 255
    return masks


def test_binary_0_255_masks_with_small_foreground_stop_at_startup(tmp_path):
    masks = defect_masks()
    splits = {"train": list(masks)[:8], "val": list(masks)[8:]}
    root = write(tmp_path / "d", masks, splits)
    with pytest.raises(DataError) as info:
        module(root).setup("fit")
    message = str(info.value)
    assert "binary 0/255 masks" in message and "data.dataset.label_map={255:1}" in message
    assert "d3.png" in message  # the first training mask holding 255

    # with the fix, class 1 is trained on: the defect pixels of d3 are class 1
    dataset = partial(FolderDataset, root=root, num_classes=2, label_map={255: 1})
    dm = SegmentationDataModule(dataset, 2, ["ok", "defect"], num_workers=0, batch_size=2)
    dm.setup("fit")
    mask = dm.datasets["train"][3]["mask"].numpy()
    assert mask.sum() == 9 and (mask[5:8, 5:8] == 1).all()


def test_masks_without_a_labelled_pixel_stop_at_startup(tmp_path, capsys):
    masks = {f"v{i}": np.full((8, 8), 255, np.uint8) for i in range(4)}
    root = write(tmp_path / "d", masks, {"train": ["v0", "v1"], "val": ["v2", "v3"]})
    with pytest.raises(DataError, match=r"none of its 2 masks \(e.g. .*v0.png\) holds a labelled"):
        module(root).setup("fit")
    code = check_data_main(
        ["data=folder", f"data.dataset.root={root}", "data.num_classes=2", "data.class_names=[a,b]"]
    )
    out = capsys.readouterr().out
    assert code == 1 and "data.train_split='train': none of its 2 masks" in out


def test_a_single_class_stops_and_missing_classes_warn(tmp_path):
    zeros = {f"z{i}": np.zeros((8, 8), np.uint8) for i in range(4)}
    root = write(tmp_path / "z", zeros, {"train": ["z0", "z1"], "val": ["z2", "z3"]})
    with pytest.raises(DataError, match=r"hold only class 0 \('c0'\); a model cannot learn"):
        module(root).setup("fit")
    root = write(tmp_path / "w", random_masks(4), {"train": ["m0", "m1"], "val": ["m2", "m3"]})
    with pytest.warns(DataWarning, match=r"classes \['c2'\] have no pixel"):
        module(root, num_classes=3).setup("fit")


def test_label_counts_are_cached_and_every_file_is_checked(tmp_path):
    masks = random_masks(12)
    # one bad value, in a file the start-up sample check does not read: of the 10 training
    # masks it reads indices round(linspace(0, 9, 8)) = 0, 1, 3, 4, 5, 6, 8, 9: not 7 (m9)
    masks["m9"][0, 0] = 7
    train = [f"m{i}" for i in range(12) if i not in (2, 3)]
    root = write(tmp_path / "d", masks, {"train": train, "val": ["m2", "m3"]})
    dataset = FolderDataset(root, num_classes=2, split="train")  # the sample check passes
    assert len(dataset) == 10
    with pytest.raises(DataError, match=r"m9.png has values \[7\]"):
        module(root, cache_dir=tmp_path / "cache").setup("fit")
    masks["m9"][0, 0] = 1
    Image.fromarray(masks["m9"].astype(np.uint8)).save(root / "masks" / "m9.png")
    module(root, cache_dir=tmp_path / "cache").setup("fit")
    # one cache file per split the run uses (train and val), none left from the failed count
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2


# --- sizes ---------------------------------------------------------------------------------


def test_a_crop_many_times_larger_than_the_images_warns(tmp_path):
    root = write(tmp_path / "d", random_masks(4, size=(16, 24)), {"train": ["m0", "m1"]})
    crop = A.Compose([A.HorizontalFlip(), A.RandomCrop(height=128, width=128, pad_if_needed=True)])
    dm = module(root, train_transform=crop, val_split="train_again")
    (root / "splits" / "train_again.txt").write_text("m2\nm3\n")
    with pytest.warns(DataWarning) as record:
        dm.setup("fit")
    message = next(str(w.message) for w in record if "RandomCrop" in str(w.message))
    # 128 * 128 / (24 * 16) = 42.7
    assert "data.train_transform.transforms.1 (RandomCrop) makes 128x128 samples" in message
    assert "about 24x16: each sample is 43x the image" in message
    assert "data.crop_size=[16,24]" in message
    assert "data.train_transform.transforms.1.height=16" in message


def test_eval_batches_of_mixed_sizes_stop_before_training(tmp_path):
    masks = {
        "a": np.zeros((8, 8)),
        "b": np.ones((8, 8)),
        "c": np.zeros((8, 12)),
        "d": np.ones((6, 8)),
    }
    root = write(tmp_path / "d", masks, {"train": ["a", "b"], "val": ["c", "d"]})
    with pytest.raises(DataError, match=r"data.eval_batch_size=2 but the images of data.val_split"):
        module(root, eval_batch_size=2).setup("fit")
    module(root, eval_batch_size=1).setup("fit")


# --- instance data: the same loaders ----------------------------------------------------------


def instance_folder(root: Path, count: int = 5) -> Path:
    for sub in ("images", "masks", "instances", "splits"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        semantic, ids = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
        semantic[1:4, 1:4], ids[1:4, 1:4] = 1, 1
        semantic[5:8, 4:8], ids[5:8, 4:8] = 2, 2
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"i{i}.png")
        Image.fromarray(semantic).save(root / "masks" / f"i{i}.png")
        Image.fromarray(ids).save(root / "instances" / f"i{i}.png")
    stems = [f"i{i}" for i in range(count)]
    for name in ("train", "val"):
        (root / "splits" / f"{name}.txt").write_text("\n".join(stems) + "\n")
    return root


def instance_module(root: Path, **options) -> InstanceDataModule:
    dataset = partial(InstanceFolderDataset, root=root, num_classes=3)
    options = {"num_workers": 0, "pin_memory": False, **options}
    return InstanceDataModule(dataset, 3, ["bg", "a", "b"], check_labels=False, **options)


def test_instance_eval_loader_scores_each_image_once_under_ddp(tmp_path):
    root = instance_folder(tmp_path / "d", count=5)
    seen = []
    for rank in range(2):  # the loaders two DDP processes (gloo, CPU) would build
        dm = instance_module(root, eval_batch_size=2)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)  # set by Lightning
        loader = dm.val_dataloader()
        assert isinstance(loader.sampler, UnpaddedDistributedSampler)
        seen += [name for batch in loader for name in batch["name"]]
    assert sorted(seen) == [f"i{i}" for i in range(5)]  # 3 + 2, none twice


def test_seeded_instance_runs_draw_the_same_augmentation(tmp_path):
    root = instance_folder(tmp_path / "d", count=4)
    jitter = A.Compose([A.RandomBrightnessContrast(p=1.0)])

    def images(seed: int) -> list[torch.Tensor]:
        dm = instance_module(root, train_transform=jitter, batch_size=1)
        torch.manual_seed(seed)
        return [image for batch in dm.train_dataloader() for image in batch["image"]]

    first, again, other = images(0), images(0), images(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
