"""The decoded cache (data.dataset.decoded_cache): the same arrays as decoding the files, for
every index and through the same transform; rebuilt when a file or the label mapping changes;
no decoding once built; safe with loader workers, concurrent builds and killed builds."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

import segkit.data.folder as folder_module
from segkit.data.camvid import CamVidDataset
from segkit.data.datamodule import SegmentationDataModule
from segkit.data.decoded_cache import DecodedCache
from segkit.data.folder import FolderDataset
from segkit.data.io import ORIENTATION, DataError

from ..helpers import PROJECT_ROOT, SHARED_DATA

CAMVID = SHARED_DATA / "camvid"
needs_camvid = pytest.mark.skipif(
    not (CAMVID / "val.txt").is_file(),
    reason=f"shared CamVid data not found at {CAMVID} (see ../shared/data/camvid/README.md)",
)


def random_mask(rng: np.random.Generator, shape: tuple[int, int], dtype=np.uint8) -> np.ndarray:
    mask = rng.integers(0, 3, size=shape).astype(dtype)
    mask[0, :3] = 255  # a few ignored pixels
    return mask


def write_varied(root: Path) -> dict[str, np.ndarray]:
    """Four samples of different sizes and kinds; returns the RGB pixels written for ``a``."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    rgb = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "images" / "a.png")
    Image.fromarray(rng.integers(0, 256, size=(17, 9), dtype=np.uint8)).save(
        root / "images" / "b.png"
    )  # grey
    Image.fromarray(rng.integers(0, 256, size=(5, 40, 4), dtype=np.uint8)).save(
        root / "images" / "c.png"
    )  # RGBA: alpha dropped
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored 20 wide x 12 high, displayed 12 wide x 20 high
    Image.fromarray(rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)).save(
        root / "images" / "d.jpg", exif=exif
    )
    for stem, shape in (("a", (24, 32)), ("b", (17, 9)), ("c", (5, 40)), ("d", (20, 12))):
        Image.fromarray(random_mask(rng, shape)).save(root / "masks" / f"{stem}.png")
    (root / "splits" / "train.txt").write_text("a\nb\nc\nd\n")
    return {"a": rgb}


def cached(root: Path, cache_dir: Path, **options) -> FolderDataset:
    options.setdefault("num_classes", 3)
    return FolderDataset(root, split="train", decoded_cache=True, cache_dir=cache_dir, **options)


def cache_folders(cache_dir: Path) -> list[str]:
    """Published caches (hidden names are temporary folders and lock files)."""
    decoded = cache_dir / "decoded"
    return sorted(p.name for p in decoded.iterdir() if not p.name.startswith("."))


def assert_same_arrays(got: tuple, expected: tuple) -> None:
    for got_array, expected_array in zip(got[:2], expected[:2], strict=True):
        assert got_array.dtype == expected_array.dtype
        assert got_array.shape == expected_array.shape
        np.testing.assert_array_equal(got_array, expected_array)
    assert got[2] == expected[2]


SETTINGS = [
    {},
    {"label_map": {2: 0}},
    {"reduce_zero_label": True, "num_classes": 2},
    {"label_map": {255: -1}, "ignore_index": -1},  # negative values: stored as int16
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["plain", "label_map", "reduce0", "neg"])
def test_every_sample_equals_the_file_path(tmp_path, settings):
    written = write_varied(tmp_path / "data")
    files = FolderDataset(tmp_path / "data", split="train", **{"num_classes": 3, **settings})
    cache = cached(tmp_path / "data", tmp_path / "cache", **settings)
    for index in range(len(files)):
        assert_same_arrays(cache.load(index), files.load(index))
    np.testing.assert_array_equal(cache.load(0)[0], written["a"])  # the pixels as written
    assert cache.load(3)[0].shape == (20, 12, 3)  # EXIF orientation applied, as decoded


def test_sixteen_bit_masks_keep_their_values_and_dtype(tmp_path):
    root = tmp_path / "data"
    write_varied(root)
    mask = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) % 300  # values 0..299
    Image.fromarray(mask).save(root / "masks" / "a.png")
    files = FolderDataset(root, num_classes=300, split="train")
    cache = cached(root, tmp_path / "cache", num_classes=300)
    for index in range(len(files)):
        assert_same_arrays(cache.load(index), files.load(index))
    assert cache.load(0)[1].dtype == np.uint16
    np.testing.assert_array_equal(cache.load(0)[1], mask)


def test_transforms_run_after_the_cache_and_give_the_same_samples(tmp_path):
    write_varied(tmp_path / "data")
    transform = A.Compose(
        [
            A.RandomCrop(16, 16, pad_if_needed=True, fill_mask=255),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(p=1.0),
        ]
    )
    files = FolderDataset(tmp_path / "data", num_classes=3, split="train", transform=transform)
    cache = cached(tmp_path / "data", tmp_path / "cache", transform=transform)
    for dataset in (files, cache):
        transform.set_random_seed(0)
        dataset.outputs = [dataset[i] for i in range(len(dataset)) for _ in range(3)]
    for got, expected in zip(cache.outputs, files.outputs, strict=True):
        assert got["name"] == expected["name"]
        assert torch.equal(got["image"], expected["image"])
        assert torch.equal(got["mask"], expected["mask"])


def test_reading_from_the_cache_decodes_no_file(tmp_path, monkeypatch):
    write_varied(tmp_path / "data")
    expected = [cached(tmp_path / "data", tmp_path / "cache").load(i) for i in range(4)]

    def refuse(*args, **kwargs):
        raise AssertionError("a file was decoded")

    monkeypatch.setattr(folder_module, "read_image", refuse)
    monkeypatch.setattr(folder_module, "read_mask", refuse)
    monkeypatch.setattr(Image, "open", refuse)
    fresh = cached(tmp_path / "data", tmp_path / "cache", startup_check=0)
    for index, sample in enumerate(expected):
        assert_same_arrays(fresh.load(index), sample)


def test_a_changed_file_is_read_again(tmp_path):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    write_varied(root)
    assert cached(root, cache_dir).load(0)[1][5, 5] in (0, 1, 2)
    new_mask = np.full((24, 32), 1, np.uint8)
    Image.fromarray(new_mask).save(root / "masks" / "a.png")  # new content and size
    np.testing.assert_array_equal(cached(root, cache_dir).load(0)[1], new_mask)
    assert len(cache_folders(cache_dir)) == 2
    status = (root / "images" / "b.png").stat()
    os.utime(root / "images" / "b.png", ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    cached(root, cache_dir).open_decoded_cache()  # same bytes, new mtime: rebuilt
    assert len(cache_folders(cache_dir)) == 3
    cached(root, cache_dir).open_decoded_cache()  # nothing changed: reused
    assert len(cache_folders(cache_dir)) == 3


def test_a_changed_label_mapping_builds_its_own_cache(tmp_path):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    write_varied(root)
    raw = np.asarray(Image.open(root / "masks" / "a.png"))
    plain = cached(root, cache_dir).load(0)[1]
    mapped = cached(root, cache_dir, label_map={2: 0}).load(0)[1]
    reduced = cached(root, cache_dir, reduce_zero_label=True, num_classes=2).load(0)[1]
    np.testing.assert_array_equal(plain, raw)
    np.testing.assert_array_equal(mapped, np.where(raw == 2, 0, raw))
    np.testing.assert_array_equal(
        reduced, np.where(raw == 0, 255, np.where(raw == 255, 255, raw - 1))
    )
    assert len(cache_folders(cache_dir)) == 3


def test_a_loader_with_two_workers_gives_the_same_samples(tmp_path):
    write_varied(tmp_path / "data")
    files = FolderDataset(tmp_path / "data", num_classes=3, split="train")
    cache = cached(tmp_path / "data", tmp_path / "cache")
    cache.open_decoded_cache()  # opened in the parent: the workers inherit or reopen it
    loader = DataLoader(cache, batch_size=None, num_workers=2)
    got = list(loader)
    assert len(got) == len(files)
    for sample, index in zip(got, range(len(files)), strict=True):
        expected = files[index]
        assert sample["name"] == expected["name"]
        assert torch.equal(sample["image"], expected["image"])
        assert torch.equal(sample["mask"], expected["mask"])


def test_pickling_sends_the_index_not_the_pixels(tmp_path):
    root = tmp_path / "data"
    write_varied(root)
    Image.fromarray(np.zeros((96, 128, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.ones((96, 128), np.uint8)).save(root / "masks" / "a.png")
    dataset = cached(root, tmp_path / "cache")
    dataset.load(0)  # maps opened in this process
    payload = pickle.dumps(dataset)
    assert len(payload) < 96 * 128 * 3 // 4  # a quarter of one image: no pixels inside
    copy = pickle.loads(payload)  # a spawned worker: maps reopened on first read
    for index in range(len(dataset)):
        assert_same_arrays(copy.load(index), dataset.load(index))


def test_a_damaged_or_half_written_cache_is_rebuilt(tmp_path):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    write_varied(root)
    files = FolderDataset(root, num_classes=3, split="train")
    folder = cached(root, cache_dir).open_decoded_cache().folder
    with open(folder / "images.u8", "r+b") as handle:
        handle.truncate(100)  # damaged: shorter than its index says
    killed = folder.parent / f".{folder.name}.12345.deadbeef.tmp"  # a killed build's leftovers
    killed.mkdir()
    (killed / "images.u8").write_bytes(b"partial")
    dataset = cached(root, cache_dir)
    for index in range(len(files)):
        assert_same_arrays(dataset.load(index), files.load(index))
    assert not killed.exists()
    assert cache_folders(cache_dir) == [folder.name]


def test_a_failed_build_leaves_no_cache(tmp_path):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    write_varied(root)
    (root / "masks" / "c.png").write_bytes(b"not a png")
    dataset = cached(root, cache_dir, startup_check=0)
    with pytest.raises(DataError, match=r"c\.png"):
        dataset.open_decoded_cache()
    assert [p.name for p in (cache_dir / "decoded").iterdir() if not p.name.endswith(".lock")] == []


def _build_and_save(root: Path, cache_dir: Path, out: Path) -> None:
    dataset = cached(root, cache_dir, startup_check=0)
    np.savez(out, *[array for i in range(len(dataset)) for array in dataset.load(i)[:2]])


def test_processes_building_at_once_get_one_whole_cache(tmp_path):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    write_varied(root)
    context = multiprocessing.get_context("fork")
    outs = [tmp_path / f"rank{rank}.npz" for rank in range(2)]
    processes = [
        context.Process(target=_build_and_save, args=(root, cache_dir, out)) for out in outs
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    files = FolderDataset(root, num_classes=3, split="train")
    expected = [array for i in range(len(files)) for array in files.load(i)[:2]]
    for out in outs:
        with np.load(out) as saved:
            for index, array in enumerate(expected):
                np.testing.assert_array_equal(saved[f"arr_{index}"], array)
    assert len(cache_folders(cache_dir)) == 1
    assert not list((cache_dir / "decoded").glob("*.tmp"))


def test_the_data_module_builds_the_caches_at_setup(tmp_path):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    write_varied(root)
    (root / "splits" / "train.txt").write_text("a\nb\n")
    (root / "splits" / "val.txt").write_text("c\nd\n")
    module = SegmentationDataModule(
        dataset=lambda split, transform: FolderDataset(
            root,
            num_classes=3,
            split=split,
            transform=transform,
            decoded_cache=True,
            cache_dir=cache_dir,
        ),  # fmt: skip
        num_classes=3,
        class_names=["a", "b", "c"],
        batch_size=1,
        check_labels=False,
    )
    module.setup("fit")
    assert [name.split("-")[:2] for name in cache_folders(cache_dir)] == [
        ["FolderDataset", "train"],
        ["FolderDataset", "val"],
    ]


def test_decoded_cache_needs_a_cache_dir(tmp_path):
    write_varied(tmp_path / "data")
    with pytest.raises(ValueError, match="data.dataset.cache_dir"):
        FolderDataset(tmp_path / "data", num_classes=3, split="train", decoded_cache=True)


def test_configs_switch_it_on_for_camvid_only_and_share_data_cache_dir():
    for name, expected in (
        ("camvid", True),
        ("folder", False),
        ("cityscapes", False),
        ("voc", False),
    ):
        conf = OmegaConf.load(PROJECT_ROOT / "conf" / "data" / f"{name}.yaml")
        assert conf.dataset.decoded_cache is expected, name
        assert OmegaConf.to_container(conf.dataset)["cache_dir"] == "${data.cache_dir}", name


@pytest.mark.shared_data
@needs_camvid
def test_shared_camvid_val_matches_the_png_files(tmp_path):
    files = CamVidDataset(CAMVID, split="val", startup_check=0)
    cache = CamVidDataset(
        CAMVID, split="val", startup_check=0, decoded_cache=True, cache_dir=tmp_path
    )
    folder = cache.open_decoded_cache().folder
    assert (folder / "images.u8").stat().st_size == 101 * 360 * 480 * 3  # README: 101 frames
    assert (folder / "masks.bin").stat().st_size == 101 * 360 * 480  # class indices as uint8
    for index in (0, 37, 100):
        assert_same_arrays(cache.load(index), files.load(index))
    assert 255 in cache.load(0)[1]  # void (11) mapped to ignore_index before caching
    assert isinstance(cache._decoded, DecodedCache) and not any(CAMVID.rglob("*.u8"))
