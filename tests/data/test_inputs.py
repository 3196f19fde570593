"""Every kind of image and mask file a user may have is read one way everywhere (training,
check_data, predict.py's ``read_image``), or stops with the fix.

Each test writes a tiny folder dataset by hand and checks the result against numpy arrays
built in the test (the displayed picture, the expected bytes), never against segkit's own
reading.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segkit.cli.check_data import main as check_data_main
from segkit.data.folder import FolderDataset
from segkit.data.io import DataError, read_image, read_mask
from segkit.data.splits import write_splits
from segkit.outputs import OutputExistsError

ORIENTATION = 274  # EXIF tag
RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # sample images: pixels / 255


def layout(root: Path) -> Path:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def with_orientation(image: Image.Image, path: Path, orientation: int, **save: object) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif, **save)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --- EXIF orientation ----------------------------------------------------------------------

# The displayed picture: a white 16x32 block in the top-left corner of a black 64x64 square
# (block edges on JPEG's 8-pixel grid, so thresholding at 128 recovers it exactly).
DISPLAYED = np.zeros((64, 64), np.uint8)
DISPLAYED[:16, :32] = 255
OBJECT = DISPLAYED > 127


def phone_photo_dataset(root: Path) -> Path:
    """A JPEG stored rotated with Orientation 6 (rotate 90 degrees clockwise to display),
    and its mask drawn on the displayed picture, as an annotation tool shows it."""
    layout(root)
    stored = np.rot90(DISPLAYED, k=1)  # counter-clockwise: displaying turns it back
    rgb = np.repeat(stored[..., None], 3, axis=-1)
    with_orientation(Image.fromarray(rgb), root / "images" / "photo.jpg", 6, quality=95)
    Image.fromarray(OBJECT.astype(np.uint8)).save(root / "masks" / "photo.png")
    return root


def test_exif_orientation_is_applied_so_image_and_mask_align(tmp_path):
    root = phone_photo_dataset(tmp_path / "d")
    sample = FolderDataset(root, num_classes=2, **RAW)[0]
    image = sample["image"].numpy()  # [3, H, W] on the 0-1 scale
    found = image.mean(axis=0) > 0.5
    assert iou(found, OBJECT) == 1.0  # the displayed orientation, not the stored one
    assert iou(found, sample["mask"].numpy() == 1) == 1.0
    # predict.py reads its inputs with the same function
    assert iou(read_image(root / "images" / "photo.jpg").mean(axis=-1) > 127, OBJECT) == 1.0


def test_check_data_reports_the_orientation_tag(tmp_path, capsys):
    root = phone_photo_dataset(tmp_path / "d")
    code = check_data_main(
        [
            "data=folder",
            f"data.dataset.root={root}",
            "data.num_classes=2",
            "data.class_names=[bg,obj]",
            "data.train_split=null",
            "data.val_split=null",  # one image: the split checks are not the point here
        ]
    )
    out = capsys.readouterr().out
    assert "photo.jpg carries EXIF Orientation 6: read as displayed" in out
    assert code == 1 and "data.val_split and data.train_split are both None" in out


def test_mask_with_an_orientation_tag_is_read_as_displayed(tmp_path):
    root = layout(tmp_path / "d")
    rgb = np.repeat(DISPLAYED[..., None], 3, axis=-1)
    Image.fromarray(rgb).save(root / "images" / "a.png")
    stored_mask = np.rot90(OBJECT.astype(np.uint8), k=1)
    with_orientation(Image.fromarray(stored_mask), root / "masks" / "a.png", 6)
    mask = FolderDataset(root, num_classes=2, **RAW)[0]["mask"].numpy()
    np.testing.assert_array_equal(mask, OBJECT.astype(np.int64))


def test_non_square_rotated_photo_trains_and_a_stored_size_mask_is_explained(tmp_path):
    root = layout(tmp_path / "d")
    displayed = np.zeros((64, 32), np.uint8)  # portrait, as shown
    displayed[:8, :16] = 255
    stored = np.rot90(displayed, k=1)  # 32x64 landscape in the file
    rgb = np.repeat(stored[..., None], 3, axis=-1)
    with_orientation(Image.fromarray(rgb), root / "images" / "p.jpg", 6, quality=95)
    Image.fromarray((displayed > 127).astype(np.uint8)).save(root / "masks" / "p.png")
    sample = FolderDataset(root, num_classes=2, **RAW)[0]
    assert sample["image"].shape == (3, 64, 32) and sample["mask"].shape == (64, 32)

    # a mask drawn on the stored picture: the error says why the sizes differ
    Image.fromarray((stored > 127).astype(np.uint8)).save(root / "masks" / "p.png")
    with pytest.raises(DataError, match=r"is 32x64 but its mask .* is 64x32.*EXIF Orientation 6"):
        FolderDataset(root, num_classes=2)


# --- image kinds ---------------------------------------------------------------------------


def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    values = np.array([[0, 255, 256, 1000], [4096, 30000, 65280, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")  # mode I;16
    expected = (values >> 8).astype(np.uint8)  # the top byte
    got = read_image(tmp_path / "grey16.png")
    np.testing.assert_array_equal(got, np.repeat(expected[..., None], 3, axis=-1))
    # a 16-bit RGB PNG (cv2 writes BGR) reads the same way
    rgb = np.stack([values, values // 2, values // 4], axis=-1)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.png"), (rgb >> 8).astype(np.uint8))


def test_float_images_stop_with_the_fix(tmp_path):
    Image.fromarray(np.random.rand(4, 4).astype(np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f\.tif holds floating-point pixels.*8-bit"):
        read_image(tmp_path / "f.tif")


@pytest.mark.parametrize("suffix", [".bmp", ".tif", ".tiff", ".webp", ".JPG", ".PNG"])
def test_every_image_format_and_upper_case_extension_is_found(tmp_path, suffix):
    root = layout(tmp_path / "d")
    pixels = np.full((8, 8, 3), (10, 120, 240), np.uint8)
    options = {"lossless": True} if suffix == ".webp" else {}
    Image.fromarray(pixels).save(root / "images" / f"a{suffix}", **options)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "a.png")
    sample = FolderDataset(root, num_classes=1, **RAW)[0]
    tolerance = 3 if suffix == ".JPG" else 0  # JPEG is lossy
    got = sample["image"].permute(1, 2, 0).numpy() * 255
    np.testing.assert_allclose(got, pixels, atol=tolerance + 1e-3)


@pytest.mark.parametrize(
    ("mode", "pixels", "expected"),
    [
        ("LA", [[[50, 0]]], [50, 50, 50]),  # alpha dropped, stored colour kept
        ("RGBA", [[[10, 20, 30, 0]]], [10, 20, 30]),
        ("CMYK", [[[0, 255, 255, 0]]], [255, 0, 0]),  # no black, full magenta + yellow: red
        ("1", [[True]], [255, 255, 255]),
    ],
)
def test_other_image_modes_become_rgb(tmp_path, mode, pixels, expected):
    path = tmp_path / ("a.jpg" if mode == "CMYK" else "a.png")
    if mode == "1":
        image = Image.fromarray(np.asarray(pixels, bool))  # bool arrays become mode "1"
    else:
        image = Image.fromarray(np.asarray(pixels, np.uint8), mode=mode)
    assert image.mode == mode
    image.save(path)
    np.testing.assert_array_equal(read_image(path)[0, 0], expected)


def test_palette_image_uses_its_colours(tmp_path):
    image = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), [[[0, 0, 0], [200, 100, 50]]])


# --- mask kinds ----------------------------------------------------------------------------


def test_one_bit_masks_are_classes_0_and_1(tmp_path):
    root = layout(tmp_path / "d")
    bits = np.zeros((4, 6), bool)
    bits[1:3, 2:5] = True
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(bits).save(root / "masks" / "a.png")  # mode "1"
    mask = FolderDataset(root, num_classes=2)[0]["mask"].numpy()
    np.testing.assert_array_equal(mask, bits.astype(np.int64))


def test_sixteen_bit_masks_keep_their_class_indices(tmp_path):
    root = layout(tmp_path / "d")
    classes = np.array([[0, 255, 256, 299]], np.uint16)  # 300 classes: more than uint8 holds
    Image.fromarray(np.zeros((1, 4, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(classes).save(root / "masks" / "a.png")  # mode I;16
    mask = FolderDataset(root, num_classes=300, ignore_index=-1)[0]["mask"].numpy()
    np.testing.assert_array_equal(mask, classes.astype(np.int64))


def test_palette_masks_give_indices_not_colours(tmp_path):
    root = layout(tmp_path / "d")
    indices = np.array([[0, 1, 2]], np.uint8)
    mask = Image.fromarray(indices, mode="P")
    mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)  # VOC colours
    Image.fromarray(np.zeros((1, 3, 3), np.uint8)).save(root / "images" / "a.png")
    mask.save(root / "masks" / "a.png")
    np.testing.assert_array_equal(FolderDataset(root, num_classes=3)[0]["mask"].numpy(), indices)


@pytest.mark.parametrize("suffix", [".tif", ".bmp", ".PNG", ".webp"])
def test_lossless_mask_formats_and_upper_case_are_found(tmp_path, suffix):
    root = layout(tmp_path / "d")
    classes = np.array([[0, 1], [2, 1]], np.uint8)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "images" / "a.png")
    options = {"lossless": True} if suffix == ".webp" else {}
    image = Image.fromarray(classes)
    (image.convert("RGB") if suffix == ".webp" else image).save(
        root / "masks" / f"a{suffix}", **options
    )
    # WebP has no single-channel mode: the grey mask is stored as RGB and read as its channel
    np.testing.assert_array_equal(FolderDataset(root, num_classes=3)[0]["mask"].numpy(), classes)


def test_jpeg_masks_are_refused_as_lossy(tmp_path):
    root = layout(tmp_path / "d")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "a.jpg")
    with pytest.raises(DataError, match=r"mask\(s\) are JPEG files.*a\.jpg.*lossless PNG"):
        FolderDataset(root, num_classes=2)


def test_lossy_webp_and_jpeg_compressed_tiff_masks_are_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "m.webp", quality=80)
    with pytest.raises(DataError, match=r"m\.webp is stored lossy"):
        read_mask(tmp_path / "m.webp")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.tif", compression="jpeg")
    with pytest.raises(DataError, match=r"m\.tif is stored lossy"):
        read_mask(tmp_path / "m.tif")


def test_duplicate_mask_stems_are_an_error(tmp_path):
    root = layout(tmp_path / "d")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(root / "masks" / "a.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(root / "masks" / "a.tif")
    with pytest.raises(
        DataError, match=r"masks holds 1 files with the same stem.*a\.png and a\.tif"
    ):
        FolderDataset(root, num_classes=2)


# --- folder layout -------------------------------------------------------------------------


def test_hidden_files_are_skipped(tmp_path):
    root = layout(tmp_path / "d")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(root / "masks" / "a.png")
    (root / "images" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # from macOS
    (root / "images" / ".DS_Store").write_bytes(b"\x00")
    assert [s[0] for s in FolderDataset(root, num_classes=1).samples] == ["a"]


def test_split_lists_may_name_files_with_their_extension(tmp_path, folder_dataset):
    (folder_dataset / "splits" / "train.txt").write_text("img0.png\r\nimages/img1.png\n")
    names = [s[0] for s in FolderDataset(folder_dataset, num_classes=3, split="train").samples]
    assert names == ["img0", "img1"]


def test_missing_folder_names_the_config_key(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"masks does not exist\. Set data\.dataset\.root="):
        FolderDataset(tmp_path, num_classes=2)
    # a root that is the images folder itself
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    with pytest.raises(DataError, match=r"images itself holds images: give its parent folder"):
        FolderDataset(tmp_path / "images", num_classes=2)


def test_missing_split_list_gives_the_command_that_writes_it(folder_dataset):
    (folder_dataset / "splits" / "train.txt").unlink()
    with pytest.raises(DataError) as info:
        FolderDataset(folder_dataset, num_classes=3, split="train")
    message = str(info.value)
    assert "data.train_split" in message and "python -m segkit.cli.convert split" in message
    # the command's function writes disjoint lists covering every image
    (folder_dataset / "splits" / "val.txt").unlink()
    written = write_splits(folder_dataset, val=0.25)
    assert sorted(written["train"] + written["val"]) == ["img0", "img1", "img2", "img3"]
    assert len(written["val"]) == 1
    train = FolderDataset(folder_dataset, num_classes=3, split="train")
    val = FolderDataset(folder_dataset, num_classes=3, split="val")
    assert {s[0] for s in train.samples}.isdisjoint(s[0] for s in val.samples)
    with pytest.raises(OutputExistsError, match="exists already.*--overwrite"):
        write_splits(folder_dataset)
