"""The embedded shapes dataset: deterministic, pixel-exact masks, reused when present."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkit.data.folder import FolderDataset
from segkit.data.shapes import CLASS_NAMES, generate_shapes, render_sample


def test_render_is_deterministic_and_consistent():
    a = render_sample(7)
    b = render_sample(7)
    for x, y in zip(a, b, strict=False):
        np.testing.assert_array_equal(x, y)
    image, mask, instances = a
    assert image.shape == (96, 96, 3) and mask.shape == instances.shape == (96, 96)
    # every instance pixel carries one class, background has no instance
    assert np.all((instances == 0) == (mask == 0))
    for k in np.unique(instances[instances > 0]):
        assert len(np.unique(mask[instances == k])) == 1


def test_mask_is_pixel_exact_for_a_flat_shape():
    # For the top (unoccluded) shape with a flat colour, the mask covers exactly the pixels
    # of that colour: all inside have it, none in the one-pixel ring outside has it.
    for seed in range(50):
        image, _, instances = render_sample(seed)
        region = instances == instances.max()
        colours = np.unique(image[region].reshape(-1, 3), axis=0)
        if len(colours) != 1:
            continue
        dilated = region.copy()
        for shift, axis in ((1, 0), (-1, 0), (1, 1), (-1, 1)):
            dilated |= np.roll(region, shift, axis=axis)
        ring = dilated & ~region
        assert ring.sum() > 0
        assert not np.any(np.all(image[ring] == colours[0], axis=-1))
        return
    pytest.fail("no flat-textured shape in 50 samples")


def test_generate_writes_folder_layout_and_is_reused(tmp_path):
    root = generate_shapes(tmp_path / "shapes", num_train=6, num_val=2, num_test=2, size=32)
    assert len(list((root / "images").glob("*.png"))) == 10
    assert json.loads((root / "meta.json").read_text())["class_names"] == list(CLASS_NAMES)
    ds = FolderDataset(root, num_classes=len(CLASS_NAMES), split="train")
    assert len(ds) == 6 and ds[0]["image"].shape == (3, 32, 32)
    stamp = (root / "images" / "train_00000.png").stat().st_mtime_ns
    generate_shapes(root, num_train=6, num_val=2, num_test=2, size=32)
    assert (root / "images" / "train_00000.png").stat().st_mtime_ns == stamp
    mask = np.asarray(Image.open(root / "masks" / "val_00006.png"))
    np.testing.assert_array_equal(mask, render_sample(6, size=32)[1])


def test_shapes_do_not_overlap():
    # shapes are kept apart: a one-pixel dilation of any instance touches no other instance
    for seed in range(30):
        _, _, instances = render_sample(seed)
        ids = np.unique(instances[instances > 0])
        assert list(ids) == list(range(1, len(ids) + 1))
        for k in ids:
            region = instances == k
            grown = region.copy()
            for shift, axis in ((1, 0), (-1, 0), (1, 1), (-1, 1)):
                grown |= np.roll(region, shift, axis=axis)
            assert set(np.unique(instances[grown])) <= {0, k}, f"seed {seed}: {k} touches another"


def test_rare_small_class_is_rare():
    counts = np.zeros(len(CLASS_NAMES))
    for seed in range(60):
        counts += np.bincount(render_sample(seed)[1].ravel(), minlength=len(CLASS_NAMES))
    share = counts / counts.sum()
    assert 0 < share[4] < 0.01 and share[1:4].min() > 3 * share[4]


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="refusing"):
        generate_shapes(tmp_path / "mine", num_train=1, num_val=1, num_test=1, size=16)


def test_concurrent_generation_gives_one_complete_dataset(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    root = tmp_path / "shapes"
    with ProcessPoolExecutor(3) as pool:
        roots = list(pool.map(generate_shapes, [root] * 3, [12] * 3, [4] * 3, [4] * 3, [32] * 3))
    assert all(r == root for r in roots)
    assert len(list((root / "images").glob("*.png"))) == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shapes-")]  # no staging left


TINY = ["data.prepare.num_train=4", "data.prepare.num_val=2", "data.prepare.num_test=2"]


def test_each_kind_and_set_of_arguments_has_its_own_folder(tmp_path):
    from hydra.utils import instantiate

    from segkit.config import compose

    def prepare(*overrides):
        cfg = compose([*overrides, *TINY, f"paths.data_dir={tmp_path}"])
        assert cfg.data.dataset.root == cfg.data.prepare.root  # the dataset reads that folder
        return Path(cfg.data.prepare.root), instantiate(cfg.data.prepare)

    runs = {
        "default": prepare("data=shapes", "data.prepare.size=16"),
        "other size": prepare("data=shapes", "data.prepare.size=24"),
        "instances": prepare("data=shapes_instances", "data.prepare.size=16"),
    }
    assert len({root for root, _ in runs.values()}) == 3
    first, generate = runs["default"]
    generate()
    files = sorted(p.name for p in (first / "images").iterdir())
    stamp = (first / "images" / files[0]).stat().st_mtime_ns
    for root, make in list(runs.values())[1:]:  # a concurrent run with other arguments
        make()
        assert (root / "meta.json").is_file()
    assert sorted(p.name for p in (first / "images").iterdir()) == files
    assert (first / "images" / files[0]).stat().st_mtime_ns == stamp


def test_generation_never_deletes_a_folder_with_other_arguments(tmp_path):
    root = generate_shapes(tmp_path / "shapes", num_train=2, num_val=1, num_test=1, size=16)
    before = sorted(p.name for p in (root / "images").iterdir())
    with pytest.raises(FileExistsError, match=r"other arguments.*'size': \(16, 24\)"):
        generate_shapes(root, num_train=2, num_val=1, num_test=1, size=24)
    assert sorted(p.name for p in (root / "images").iterdir()) == before
    assert json.loads((root / "meta.json").read_text())["size"] == 16
