"""CamVid: void -> ignore on a fake tree; the shared copy loads 367/101 samples; a short
low-resolution run learns clearly more than predicting the majority class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from segkit.data.camvid import CLASS_NAMES, PALETTE, CamVidDataset
from segkit.data.io import DataError

from ..helpers import PROJECT_ROOT, SHARED_DATA, run_train

CAMVID = SHARED_DATA / "camvid"
needs_camvid = pytest.mark.skipif(
    not (CAMVID / "train.txt").is_file(),
    reason=f"shared CamVid data not found at {CAMVID} (see ../shared/data/camvid/README.md)",
)
# SegNet's CamVid classes, index order of the label files (../shared/data/camvid/README.md)
OFFICIAL_NAMES = (
    "Sky Building Pole Road Pavement Tree SignSymbol Fence Car Pedestrian Bicyclist".split()
)


def write_tree(root: Path) -> np.ndarray:
    label = np.tile(np.arange(12, dtype=np.uint8), (3, 1))  # every class and void (11)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        Image.fromarray(np.zeros((3, 12, 3), np.uint8)).save(root / split / "0001TP_1.png")
        Image.fromarray(label).save(root / f"{split}annot" / "0001TP_1.png")
        (root / f"{split}.txt").write_text(f"/{split}/0001TP_1.png /{split}annot/0001TP_1.png\n")
    return label


def test_void_goes_to_ignore_and_classes_stay(tmp_path):
    write_tree(tmp_path)
    mask = CamVidDataset(tmp_path, split="train")[0]["mask"].numpy()
    np.testing.assert_array_equal(mask[0], [*range(11), 255])


def test_missing_split_names_the_list_and_the_fix(tmp_path):
    write_tree(tmp_path)
    with pytest.raises(DataError, match=r"test.txt does not exist .*'train', 'val'.*test_split"):
        CamVidDataset(tmp_path, split="test")


def test_class_names_and_palette():
    assert list(CLASS_NAMES) == OFFICIAL_NAMES and len(PALETTE) == 11
    conf = OmegaConf.load(PROJECT_ROOT / "conf" / "data" / "camvid.yaml")
    assert list(conf.class_names) == OFFICIAL_NAMES and conf.num_classes == 11
    assert [tuple(c) for c in conf.palette] == [tuple(c) for c in PALETTE]


@pytest.mark.shared_data
@needs_camvid
def test_shared_camvid_has_367_train_and_101_val_samples():
    train = CamVidDataset(CAMVID, split="train")
    val = CamVidDataset(CAMVID, split="val")
    assert (len(train), len(val)) == (367, 101)
    seen = set()
    for index in range(0, 367, 37):
        sample = train[index]
        assert sample["image"].shape == (3, 360, 480)
        seen.update(sample["mask"].unique().tolist())
        raw = np.asarray(Image.open(train.samples[index][2]))
        np.testing.assert_array_equal(sample["mask"].numpy() == 255, raw == 11)
    assert seen <= {*range(11), 255} and 255 in seen and len(seen - {255}) >= 8


@pytest.mark.slow
@pytest.mark.shared_data
@needs_camvid
def test_short_low_resolution_run_beats_the_majority_class(tmp_path):
    run_dir = run_train(
        tmp_path,
        "experiment=camvid_unet",
        f"data.dataset.root={CAMVID}",
        # a 0.4 M-parameter model at quarter resolution (90x120): seconds per step on a CPU
        "model=smp",
        "model.arch=Linknet",
        "model.encoder_name=tu-lcnet_050",
        "data.train_transform.transforms.0.height=90",
        "data.train_transform.transforms.0.width=120",
        "data.train_transform.transforms.2.height=80",
        "data.train_transform.transforms.2.width=112",
        "task.inference.scales=[0.25]",  # scored on the full 360x480 labels
        "loss.class_weights=null",
        "optimizer.lr=3e-3",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=30",
        "+trainer.limit_val_batches=2",  # 16 val images
        "trainer.accelerator=cpu",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "logger=csv",
        "test=false",
        timeout=1800,  # about a minute on an idle 2-core CPU; headroom for a busy machine
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    matrix = np.load(run_dir / "confusion_matrix.npy")
    # scored on full-resolution labels, void left out (a few percent of the pixels)
    assert 0.8 * 16 * 360 * 480 < matrix.sum() < 16 * 360 * 480
    # Predicting the majority class c everywhere: IoU_c = n_c / N, 0 for the other classes
    # present; classes absent from the labels are NaN and left out of the mean.
    gt = matrix.sum(1)
    baseline = gt.max() / gt.sum() / (gt > 0).sum()
    assert metrics["mIoU"] > 2 * baseline, (metrics["mIoU"], baseline)
