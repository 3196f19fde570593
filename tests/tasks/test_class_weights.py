"""loss.class_weights=median_frequency|sqrt_median_frequency|inverse_frequency: hand-computed
and numpy references, the cache, bad input, and check_data printing every vector."""

from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from segkit.cli.check_data import main as check_data_main
from segkit.data import stats
from segkit.data.camvid import CLASS_NAMES, CamVidDataset
from segkit.data.datamodule import SegmentationDataModule
from segkit.data.folder import FolderDataset
from segkit.data.stats import label_counts
from segkit.data.stats import scan_split as scan
from segkit.tasks.class_weights import resolve_class_weights, sqrt_median_frequency_weights
from segkit.tasks.losses import CrossEntropyLoss

from ..helpers import SHARED_DATA

CAMVID = SHARED_DATA / "camvid"
IGNORE = 255
V = IGNORE

# Three 2x4 training masks (classes 0..2, 255 ignored) and one validation mask.
#   img0: class 0 x4, class 1 x2, ignored x2 -> 6 labelled pixels
#   img1: class 0 x2, class 2 x6             -> 8 labelled pixels
#   img2: class 1 x3, class 2 x1, ignored x4 -> 4 labelled pixels
# pixels       = [6, 5, 7], 18 labelled in all
# image_pixels = [6 + 8, 6 + 4, 8 + 4] = [14, 10, 12]   (images holding each class)
# freq         = [6/14, 5/10, 7/12] = [3/7, 1/2, 7/12], median 1/2
# median_frequency  = (1/2) / freq   = [7/6, 1, 6/7]
# sqrt_median_frequency = [sqrt(7/6), 1, sqrt(6/7)]
# inverse_frequency = 18 / (3 * pixels) = [1, 6/5, 6/7]
TRAIN_MASKS = {
    "img0": [[0, 0, 0, 0], [1, 1, V, V]],
    "img1": [[0, 0, 2, 2], [2, 2, 2, 2]],
    "img2": [[1, 1, 1, V], [2, V, V, V]],
}
VAL_MASKS = {"img3": [[2, 2, 2, 2], [2, 2, 2, 2]]}  # the val split must not count
MEDIAN_FREQUENCY = [7 / 6, 1.0, 6 / 7]
SQRT_MEDIAN_FREQUENCY = [math.sqrt(7 / 6), 1.0, math.sqrt(6 / 7)]
INVERSE_FREQUENCY = [1.0, 6 / 5, 6 / 7]


def write_dataset(root: Path) -> Path:
    for folder in ("images", "masks", "splits"):
        (root / folder).mkdir(parents=True)
    for stem, mask in {**TRAIN_MASKS, **VAL_MASKS}.items():
        Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(np.asarray(mask, np.uint8)).save(root / "masks" / f"{stem}.png")
    (root / "splits" / "train.txt").write_text("\n".join(TRAIN_MASKS) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(VAL_MASKS) + "\n")
    return root


def datamodule(root: Path, num_classes: int = 3, cache_dir: Path | None = None):
    dataset = partial(FolderDataset, root=root, num_classes=num_classes, ignore_index=IGNORE)
    names = [f"c{i}" for i in range(num_classes)]
    return SegmentationDataModule(
        dataset, num_classes, names, ignore_index=IGNORE, cache_dir=cache_dir
    )


def ce(class_weights):
    return OmegaConf.create(
        {"_target_": "segkit.tasks.losses.CrossEntropyLoss", "class_weights": class_weights}
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


def test_hand_made_case(root, tmp_path):
    dm = datamodule(root, cache_dir=tmp_path / "cache")
    for name, expected in (
        ("median_frequency", MEDIAN_FREQUENCY),
        ("sqrt_median_frequency", SQRT_MEDIAN_FREQUENCY),
        ("inverse_frequency", INVERSE_FREQUENCY),
    ):
        cfg = ce(name)
        resolved = resolve_class_weights(cfg, dm)  # in place, and said what it replaced
        assert resolved == [("loss.class_weights", name, list(cfg.class_weights))]
        assert isinstance(cfg.class_weights[0], float)
        np.testing.assert_allclose(list(cfg.class_weights), expected, rtol=1e-12)
        loss = hydra.utils.instantiate(cfg)
        np.testing.assert_allclose(loss.class_weights.numpy(), expected, rtol=1e-6)


def test_nested_names_are_resolved_and_lists_and_null_kept(root, tmp_path):
    losses = {
        "ce": ("CrossEntropyLoss", "median_frequency"),
        "focal": ("FocalLoss", "inverse_frequency"),
        "plain": ("CrossEntropyLoss", None),
        "typed": ("CrossEntropyLoss", [1, 2, 3]),
    }
    cfg = OmegaConf.create(
        {
            "_target_": "segkit.tasks.losses.WeightedSumLoss",
            "losses": {
                key: {"_target_": f"segkit.tasks.losses.{cls}", "class_weights": weights}
                for key, (cls, weights) in losses.items()
            },
        }
    )
    resolve_class_weights(cfg, datamodule(root, cache_dir=tmp_path / "cache"))
    np.testing.assert_allclose(list(cfg.losses.ce.class_weights), MEDIAN_FREQUENCY, rtol=1e-12)
    np.testing.assert_allclose(list(cfg.losses.focal.class_weights), INVERSE_FREQUENCY, rtol=1e-12)
    assert cfg.losses.plain.class_weights is None
    assert list(cfg.losses.typed.class_weights) == [1, 2, 3]
    loss = hydra.utils.instantiate(cfg)
    value = loss(torch.randn(1, 3, 2, 4), torch.tensor([[[0, 1, 2, 255], [2, 2, 1, 0]]]))
    assert torch.isfinite(value)


def test_class_absent_from_training_split_gets_weight_zero(root, tmp_path):
    # class 3 never occurs: median and K are taken over classes 0..2, so those keep the
    # weights of the 3-class case and class 3 gets 0
    dm = datamodule(root, num_classes=4)
    for name, expected in (
        ("median_frequency", MEDIAN_FREQUENCY),
        ("sqrt_median_frequency", SQRT_MEDIAN_FREQUENCY),
        ("inverse_frequency", INVERSE_FREQUENCY),
    ):
        cfg = ce(name)
        with pytest.warns(UserWarning, match=r"classes \['c3'\] have no pixel"):
            resolve_class_weights(cfg, dm)  # no cache_dir: counted, nothing written
        np.testing.assert_allclose(list(cfg.class_weights), [*expected, 0.0], rtol=1e-12)


def test_sqrt_median_frequency_hand_computed_with_an_absent_class():
    # pixels [2, 0, 3, 8], labelled pixels of the images holding them [8, -, 4, 8]:
    # freq = [1/4, 3/4, 1] over the present classes 0, 2, 3, median 3/4;
    # median_frequency = [3, 0, 1, 3/4], its square root [sqrt 3, 0, 1, sqrt(3)/2].
    # Were class 1 counted with frequency 0, the median would be 1/2 instead.
    weights = sqrt_median_frequency_weights([2, 0, 3, 8], [8, 0, 4, 8])
    np.testing.assert_allclose(weights, [math.sqrt(3), 0.0, 1.0, math.sqrt(3) / 2], rtol=1e-12)
    assert weights[1] == 0.0 and weights.dtype == np.float64


@pytest.mark.shared_data
@pytest.mark.skipif(
    not (CAMVID / "train.txt").is_file(),
    reason=f"shared CamVid data not found at {CAMVID} (see ../shared/data/camvid/README.md)",
)
def test_camvid_train_split_matches_numpy_definition(tmp_path):
    # reference: the label PNGs read directly, void (11) left out as the CamVid README says
    pixels = np.zeros(11, np.int64)  # pixels of class c
    image_pixels = np.zeros(11, np.int64)  # labelled pixels of the images holding c
    lines = [line.split() for line in (CAMVID / "train.txt").read_text().splitlines() if line]
    assert len(lines) == 367
    for _, label in lines:
        mask = np.asarray(Image.open(CAMVID / label.lstrip("/")))
        counts = np.bincount(mask.ravel(), minlength=12)[:11]  # drop void 11
        pixels += counts
        image_pixels += np.where(counts > 0, counts.sum(), 0)
    freq = pixels / image_pixels
    median_frequency = np.median(freq) / freq
    inverse_frequency = pixels.sum() / (11 * pixels)

    dm = SegmentationDataModule(
        partial(CamVidDataset, root=CAMVID, ignore_index=IGNORE),
        11,
        CLASS_NAMES,
        IGNORE,
        cache_dir=tmp_path / "cache",
    )
    for name, expected in (
        ("median_frequency", median_frequency),
        ("sqrt_median_frequency", np.sqrt(median_frequency)),
        ("inverse_frequency", inverse_frequency),
    ):
        cfg = ce(name)
        resolve_class_weights(cfg, dm)
        np.testing.assert_allclose(list(cfg.class_weights), expected, rtol=1e-6)
    # the SegNet authors' published list is a different computation (SignSymbol 9.64)
    assert abs(median_frequency[6] - 3.85) < 0.01


def test_cache_is_read_and_recomputed_when_the_split_changes(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    dm = datamodule(root, cache_dir=cache)
    first = label_counts(dm)
    assert len(list(cache.glob("*.json"))) == 1
    assert first.pixels.tolist() == [6, 5, 7]

    def fail(self, path):
        raise AssertionError(f"mask {path} read although the counts are cached")

    original = FolderDataset.read_raw_mask
    monkeypatch.setattr(FolderDataset, "read_raw_mask", fail)
    cached = label_counts(datamodule(root, cache_dir=cache))
    assert cached.pixels.tolist() == [6, 5, 7]
    assert cached.image_pixels.tolist() == [14, 10, 12] and cached.images == 3
    cfg = ce("median_frequency")
    resolve_class_weights(cfg, datamodule(root, cache_dir=cache))  # from the cache, no read
    np.testing.assert_allclose(list(cfg.class_weights), MEDIAN_FREQUENCY, rtol=1e-12)

    # same content, new mtime: recounted
    mask = root / "masks" / "img2.png"
    status = mask.stat()
    os.utime(mask, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="read although"):
        label_counts(datamodule(root, cache_dir=cache))

    # new content (new size): recounted with the new labels
    monkeypatch.setattr(FolderDataset, "read_raw_mask", original)
    Image.fromarray(np.full((2, 4), 1, np.uint8)).save(mask)  # img2: class 1 x8
    assert label_counts(datamodule(root, cache_dir=cache)).pixels.tolist() == [6, 10, 6]

    # another split list: recounted
    monkeypatch.setattr(FolderDataset, "read_raw_mask", fail)
    (root / "splits" / "train.txt").write_text("img0\nimg1\n")
    with pytest.raises(AssertionError, match="read although"):
        label_counts(datamodule(root, cache_dir=cache))
    monkeypatch.setattr(FolderDataset, "read_raw_mask", original)
    assert label_counts(datamodule(root, cache_dir=cache)).pixels.tolist() == [6, 2, 6]


def test_a_run_counts_the_training_split_once(root, monkeypatch):
    # train(): the class-weight step, then the start-up checks of every split in setup("fit");
    # with no cache_dir the data module remembers the counts: each split is read once
    scanned = []

    def counting_scan(dataset, split_stats, *args, **kw):
        scanned.append(split_stats.name)
        return scan(dataset, split_stats, *args, **kw)

    monkeypatch.setattr(stats, "scan_split", counting_scan)
    dm = datamodule(root)
    resolve_class_weights(ce("median_frequency"), dm)
    dm.setup("fit")
    assert label_counts(dm).pixels.tolist() == [6, 5, 7]
    assert sorted(scanned) == sorted([dm.splits["train"], dm.splits["val"]])


def test_bad_input(root, tmp_path):
    dm = datamodule(root)
    with pytest.raises(ValueError, match=r"loss.class_weights='median_freq'.*median_frequency"):
        resolve_class_weights(ce("median_freq"), dm)
    with pytest.raises(ValueError, match=r"loss.class_weights has 2 values.*num_classes is 3"):
        resolve_class_weights(ce([1.0, 2.0]), dm)
    nested = OmegaConf.create({"losses": {"ce": {"class_weights": [1.0] * 4}}})
    with pytest.raises(ValueError, match=r"loss.losses.ce.class_weights has 4 values"):
        resolve_class_weights(nested, dm)
    with pytest.raises(ValueError, match="resolve_class_weights"):  # an unresolved name
        CrossEntropyLoss(class_weights="median_frequency")


def test_dataset_without_label_files_is_refused(tmp_path):
    dm = SegmentationDataModule(lambda split, transform: [], 3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="cannot count the labels of list"):
        resolve_class_weights(ce("median_frequency"), dm)


def test_check_data_prints_every_vector(root, capsys):
    code = check_data_main(
        [
            "data=folder",
            f"data.dataset.root={root}",
            "data.num_classes=3",
            "data.class_names=[c0,c1,c2]",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    # 7/6, 1, 6/7; their square roots; 1, 6/5, 6/7 to 4 decimals
    assert "median_frequency ('train'): [1.1667, 1.0000, 0.8571]" in out
    assert "sqrt_median_frequency ('train'): [1.0801, 1.0000, 0.9258]" in out
    assert "inverse_frequency ('train'): [1.0000, 1.2000, 0.8571]" in out
    table = out.split("class weights of split 'train'")[1]
    assert "c0" in table and "1.1667" in table and "1.2000" in table
