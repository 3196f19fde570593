"""Files a user may hand segkit in place of the ones it expects: split lists as other editors
and systems write them, masks and images as other tools write them, paths that are no
files. Each is read as a hand-written expectation says, or stops naming the path, what is
there and the fix (docs/data.md, "Your own data").

Every file is written here by hand (bytes, numpy arrays), never by segkit.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segkit.data.folder import FolderDataset
from segkit.data.io import DataError, read_image, read_mask

from ..helpers import write_folder_dataset

CLASSES = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)  # a 2x3 class-index mask


def stems(root: Path, split: str = "train") -> list[str]:
    dataset = FolderDataset(root, num_classes=3, split=split, startup_check=0)
    return [name for name, _, _ in dataset.samples]


# --- split lists -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("\ufeffimg0\nimg2\n".encode(), id="utf-8 with a byte-order mark"),
        pytest.param("img0\r\nimg2\r\n".encode("utf-16"), id="utf-16 (Notepad 'Unicode')"),
        pytest.param(codecs.BOM_UTF16_BE + "img0\nimg2\n".encode("utf-16-be"), id="utf-16-be"),
        pytest.param(b"# train split\n\timg0.PNG \n\n  # img1 left out\nimg2\n", id="comments"),
        pytest.param(b"C:\\data\\images\\img0.png\r\nimages\\img2.png\r\n", id="windows paths"),
    ],
)
def test_split_lists_as_other_editors_write_them_are_read(tmp_path, content):
    root = write_folder_dataset(tmp_path / "data")
    (root / "splits" / "train.txt").write_bytes(content)
    assert stems(root) == ["img0", "img2"]


def test_a_list_line_that_is_an_images_stem_is_no_comment(tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    Path(root / "images" / "img0.png").rename(root / "images" / "#0.png")
    Path(root / "masks" / "img0.png").rename(root / "masks" / "#0.png")
    (root / "splits" / "train.txt").write_text("# a comment\n#0\nimg1\n")
    assert stems(root) == ["#0", "img1"]


@pytest.mark.parametrize(
    ("content", "found"),
    [
        pytest.param(
            "img0\ncaf\u00e9\n".encode("latin-1"),
            r"is not UTF-8 text: line 2 holds the byte 0xe9 \('\u00e9' in Latin-1\)\. Save the "
            r"list as UTF-8",
            id="latin-1",
        ),
        pytest.param(
            "img0\nimg1\n".encode("utf-16-le"),
            r"holds NUL bytes: binary data, or UTF-16 text without a byte-order mark\. Give a "
            r"text file \(UTF-8\)",
            id="utf-16 without a byte-order mark",
        ),
        pytest.param(
            bytes(range(256)), r"holds NUL bytes: binary data.*one image stem per line", id="binary"
        ),
        pytest.param(
            b"img0\nimg1\nimages/img0.png\n",
            r"lists sample 'img0' twice \(lines 1 and 3\).*Remove the duplicate lines",
            id="duplicate",
        ),
        pytest.param(
            b"img0,train\nimg1\n",
            r"names 1 images not in .*images, e.g. \[\"line 1: 'img0,train'\"\]\. A line holds "
            r"one image stem only",
            id="several fields on a line",
        ),
    ],
)
def test_split_lists_that_cannot_be_right_name_the_list_the_line_and_the_fix(
    tmp_path, content, found
):
    root = write_folder_dataset(tmp_path / "data")
    (root / "splits" / "train.txt").write_bytes(content)
    with pytest.raises(DataError, match=found) as error:
        stems(root)
    assert str(root / "splits" / "train.txt") in str(error.value)


def test_a_split_list_that_is_a_folder_or_a_broken_link_says_so(tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    listed = root / "splits" / "train.txt"
    listed.unlink()
    listed.mkdir()
    with pytest.raises(DataError, match=rf"{listed} is a folder, not a text file\..*'val'"):
        stems(root)
    listed.rmdir()
    listed.symlink_to(tmp_path / "moved.txt")
    pattern = rf"{listed} is a symbolic link to {tmp_path / 'moved.txt'}, which does not exist"
    with pytest.raises(DataError, match=pattern):
        stems(root)


def test_a_split_named_with_its_file_name_gives_the_name_to_use(tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    pattern = r"holds the lists \['train', 'val'\]\. Name a split by its list's stem: 'train'"
    with pytest.raises(DataError, match=pattern):
        stems(root, split="train.txt")


# --- masks as other tools write them ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA"])
def test_a_grey_mask_stored_with_colour_or_alpha_channels_is_read_as_its_one_channel(
    tmp_path, mode
):
    channels = {"RGB": [CLASSES] * 3, "RGBA": [CLASSES] * 3, "LA": [CLASSES]}[mode]
    if "A" in mode:
        channels = [*channels, np.full_like(CLASSES, 255)]  # fully opaque
    Image.fromarray(np.stack(channels, axis=-1), mode=mode).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), CLASSES)


def test_a_colour_mask_shows_its_colours_and_the_fix(tmp_path):
    colours = np.array([[[0, 0, 0], [128, 0, 0], [0, 128, 0]]], np.uint8)
    Image.fromarray(colours).save(tmp_path / "m.png")
    pattern = (
        r"m\.png has mode 'RGB' \(3 channels\) holding 3 colours, e\.g\. \[\(0, 0, 0\), "
        r"\(0, 128, 0\), \(128, 0, 0\)\]: a colour-coded mask.*map each colour to its class index"
    )
    with pytest.raises(DataError, match=pattern):
        read_mask(tmp_path / "m.png")


def test_a_mask_with_transparent_pixels_stops(tmp_path):
    alpha = np.full_like(CLASSES, 255)
    alpha[0, 0] = 0
    Image.fromarray(np.stack([CLASSES] * 3 + [alpha], -1), mode="RGBA").save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"m\.png has mode 'RGBA' .* 1 transparent pixels"):
        read_mask(tmp_path / "m.png")


def test_a_16_bit_colour_mask_stops_instead_of_losing_its_low_byte(tmp_path):
    grey16 = np.repeat((CLASSES.astype(np.uint16) * 300)[..., None], 3, axis=-1)  # 0, 300, 600
    cv2.imwrite(str(tmp_path / "m.png"), grey16)
    with pytest.raises(DataError, match=r"m\.png is a 16-bit RGB PNG.*mode I;16"):
        read_mask(tmp_path / "m.png")


def test_float_masks_of_whole_numbers_are_read_and_fractions_stop(tmp_path):
    Image.fromarray(CLASSES.astype(np.float32)).save(tmp_path / "whole.tif")
    mask = read_mask(tmp_path / "whole.tif")
    assert mask.dtype == np.int32
    np.testing.assert_array_equal(mask, CLASSES)
    Image.fromarray(CLASSES.astype(np.float32) / 2).save(tmp_path / "resized.tif")
    pattern = r"resized\.tif holds floating-point values that are no class index, e\.g\. \[0\.5"
    with pytest.raises(DataError, match=pattern):
        read_mask(tmp_path / "resized.tif")


def test_a_mask_is_lossy_by_its_content_not_its_name(tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    png_as_jpg = root / "masks" / "img0.jpg"
    (root / "masks" / "img0.png").rename(png_as_jpg)  # PNG bytes, JPEG name
    expected = np.asarray(Image.open(png_as_jpg))
    dataset = FolderDataset(root, num_classes=3, split="train")
    np.testing.assert_array_equal(dataset[0]["mask"].numpy(), expected)
    note = f"mask {png_as_jpg} holds PNG data under a JPEG name: read as stored (lossless)"
    assert [n for n in dataset.inspect(0).notes if n.startswith(note)]
    # JPEG bytes under a PNG name
    Image.fromarray(CLASSES).save(tmp_path / "m.png", format="JPEG")
    with pytest.raises(DataError, match=r"m\.png is stored lossy \(JPEG under a \.png name\)"):
        read_mask(tmp_path / "m.png")


@pytest.mark.parametrize("read", [read_image, read_mask])
def test_a_multi_page_tiff_stops_instead_of_reading_its_first_page(tmp_path, read):
    pages = [Image.fromarray(CLASSES), Image.fromarray(CLASSES[::-1])]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(DataError, match=r"stack\.tif is a TIFF of 2 pages.*its own file"):
        read(tmp_path / "stack.tif")


# --- paths that are no image files -----------------------------------------------------------


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _folder(path: Path) -> None:
    path.mkdir()


def _broken_link(path: Path) -> None:
    path.symlink_to(path.parent / "moved.png")


def _lfs_pointer(path: Path) -> None:
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 5120\n")


def _web_page(path: Path) -> None:
    path.write_text("<!DOCTYPE html>\n<html><body>Sign in</body></html>\n")


def _truncated(path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 3, (64, 64), np.uint8)
    Image.fromarray(pixels).save(path)
    path.write_bytes(path.read_bytes()[:-300])


@pytest.mark.parametrize(
    ("make", "found"),
    [
        pytest.param(_empty, r"is empty \(0 bytes\): its copy or export was cut short", id="empty"),
        pytest.param(_folder, r"is a folder, not a file\. Move it out of the data", id="folder"),
        pytest.param(
            _broken_link, r"is a symbolic link to .*moved\.png, which does not exist", id="link"
        ),
        pytest.param(_lfs_pointer, r"is a Git LFS pointer.*Run git lfs pull", id="lfs"),
        pytest.param(_web_page, r"is an HTML page, not an image.*Download the file", id="html"),
        pytest.param(_truncated, r"truncated \(\d+ bytes; the data ends early\)", id="truncated"),
    ],
)
@pytest.mark.parametrize("read", [read_image, read_mask], ids=["image", "mask"])
def test_an_unreadable_file_names_what_is_there_and_the_fix(tmp_path, make, found, read):
    path = tmp_path / "img0.png"
    make(path)
    with pytest.raises(DataError, match=found) as error:
        read(path)
    assert str(path) in str(error.value)


def test_an_image_over_the_decompression_limit_stops_naming_the_file(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)  # 64 pixels: over twice the limit
    with pytest.raises(DataError, match=r"big\.png: it is too large to decode safely.*tiles"):
        read_image(tmp_path / "big.png")


@pytest.mark.parametrize("folder", ["images", "masks"])
@pytest.mark.parametrize("make", [_folder, _broken_link], ids=["folder", "broken link"])
def test_a_folder_or_broken_link_named_like_an_image_stops_the_listing(tmp_path, folder, make):
    root = write_folder_dataset(tmp_path / "data")
    entry = root / folder / "img0.png"
    entry.unlink()
    make(entry)
    pattern = rf"{root / folder} holds entries named like images that are no files \(1\): {entry} "
    with pytest.raises(DataError, match=pattern):
        FolderDataset(root, num_classes=3)


def test_images_in_sub_folders_are_explained(tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    (root / "images" / "train").mkdir()
    for image in (root / "images").glob("*.png"):
        image.rename(root / "images" / "train" / image.name)
    with pytest.raises(DataError, match=r"It holds the folders \['train'\]: segkit reads"):
        FolderDataset(root, num_classes=3)
