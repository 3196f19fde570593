"""ISBI 2012: the split from val_stems, 255 -> cell and greyscale inputs on a fake tree; a
missing root names data.dataset.root; any model config takes the one channel;
data=isbi2012 experiment=isbi2012_unet builds 20/4 one-channel slices of 2 classes from the
shared copy; a fast_dev_run writes the challenge's errors into metrics.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from segkit.data.io import DataError
from segkit.data.isbi2012 import CLASS_NAMES, ISBI2012Dataset
from segkit.engine.runner import resolve_loss_weights
from segkit.engine.train import train
from segkit.tasks import build_task

from ..helpers import SHARED_DATA, compose

ISBI = SHARED_DATA / "isbi2012"
needs_isbi = pytest.mark.skipif(
    not (ISBI / "images" / "00.png").is_file(),
    reason=f"shared ISBI 2012 data not found at {ISBI} (see ../shared/data/isbi2012/README.md)",
)


def write_tree(root: Path, count: int = 5, size: int = 64) -> Path:
    """``count`` random grey slices ``00..`` with 0/255 labels, the shared copy's layout."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for index in range(count):
        image = rng.integers(0, 256, (size, size), dtype=np.uint8)
        label = np.where(rng.random((size, size)) < 0.25, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{index:02d}.png")  # mode L
        Image.fromarray(label).save(root / "labels" / f"{index:02d}.png")
    return root


def test_split_labels_and_greyscale_on_a_fake_tree(tmp_path):
    root = write_tree(tmp_path)
    val = ISBI2012Dataset(root, split="val", val_stems=["03", "04"], mean=[0.5], std=[0.25])
    train = ISBI2012Dataset(root, split="train", val_stems=["03", "04"])
    assert [s[0] for s in val.samples] == ["03", "04"]
    assert [s[0] for s in train.samples] == ["00", "01", "02"]
    assert len(ISBI2012Dataset(root, split=None, val_stems=["03"])) == 5
    sample = val[0]
    grey = np.asarray(Image.open(root / "images" / "03.png"), np.float32)
    label = np.asarray(Image.open(root / "labels" / "03.png"))
    assert sample["image"].shape == (1, 64, 64)  # the stored grey values, normalised
    np.testing.assert_allclose(sample["image"][0].numpy(), (grey / 255 - 0.5) / 0.25, atol=1e-5)
    np.testing.assert_array_equal(sample["mask"].numpy(), (label == 255).astype(np.int64))
    assert CLASS_NAMES == ("membrane", "cell")


def test_val_stems_must_name_slices(tmp_path):
    root = write_tree(tmp_path)
    with pytest.raises(DataError, match=r"val_stems names slices \['7'\]"):
        ISBI2012Dataset(root, split="val", val_stems=[7])


def test_missing_root_names_data_dataset_root(tmp_path):
    missing = tmp_path / "nowhere"
    cfg = compose(tmp_path, ["data=isbi2012", f"data.dataset.root={missing}"])
    datamodule = hydra.utils.instantiate(cfg.data)
    with pytest.raises(DataError, match="data.dataset.root") as error:
        datamodule.setup("fit")
    message = str(error.value)
    assert str(missing / "images") in message and "../shared/data/isbi2012" in message


def test_any_model_takes_one_channel_and_scores_the_errors(tmp_path):
    """docs/data.md's data=isbi2012 model=unet_r18 task.membrane_class=0."""
    cfg = compose(tmp_path, ["data=isbi2012", "model=unet_r18", "task.membrane_class=0"])
    task = build_task(cfg).eval()
    assert cfg.model.in_channels == 1 and task.membrane_errors is not None
    with torch.no_grad():
        assert task(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.shared_data
@needs_isbi
def test_experiment_builds_20_train_and_4_val_greyscale_slices(tmp_path):
    cfg = compose(
        tmp_path,
        [
            "data=isbi2012",
            "experiment=isbi2012_unet",
            f"data.dataset.root={ISBI}",
            "data.num_workers=0",
            "data.persistent_workers=false",
        ],
    )
    assert cfg.model.in_channels == cfg.data.in_channels == 1
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    train, val = datamodule.datasets["train"], datamodule.datasets["val"]
    assert (len(train), len(val)) == (20, 4)
    assert [s[0] for s in val.samples] == ["20", "21", "22", "23"]
    assert datamodule.num_classes == 2 and datamodule.class_names == ["membrane", "cell"]
    crop = train[0]
    assert crop["image"].shape == (1, 256, 256) and crop["mask"].shape == (256, 256)
    assert set(crop["mask"].unique().tolist()) == {0, 1}  # rotation borders are mirrored
    assert val[0]["image"].shape == (1, 512, 512)  # validated on whole slices
    resolve_loss_weights(cfg, datamodule)  # median-frequency weights from the 20 labels
    task = build_task(cfg)
    weights = list(cfg.loss.class_weights)
    assert weights[0] == pytest.approx(2.2, abs=0.1) and weights[1] == pytest.approx(0.65, abs=0.03)
    assert task.membrane_errors is not None
    with torch.no_grad():
        assert task(crop["image"][None]).shape == (1, 2, 256, 256)


@pytest.mark.slow
def test_fast_dev_run_writes_pixel_and_rand_error(tmp_path):
    """The recipe end to end on a fake tree (64x64 slices, 32x32 crops): metrics.json holds
    the challenge's errors beside the confusion-matrix scores."""
    root = write_tree(tmp_path / "isbi")
    cfg = compose(
        tmp_path,
        [
            "experiment=isbi2012_unet",
            f"data.dataset.root={root}",
            "data.dataset.val_stems=['03','04']",
            "data.crop_size=[32,32]",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "debug=fast_dev_run",
            "trainer.accelerator=cpu",
            "logger=csv",
        ],
    )
    with open_dict(cfg):  # a job's config has no hydra node (HydraConfig holds it)
        del cfg["hydra"]
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("pixel_error", "rand_error"):
        assert 0 <= metrics[key] <= 1 and math.isfinite(metrics[key])
    assert metrics["class_names"] == ["membrane", "cell"] and "IoU" in metrics
