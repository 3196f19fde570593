"""The input contract on generated input (hypothesis): small ``data=folder`` trees, as other
tools write them, with and without defects, and config values at and past their edges.

For every drawn example, train.py's start-up (:func:`segkit.engine.train.start_run`) either

* passes, and then every validation label the loader yields equals the label file on disk
  (read here with PIL, no segkit code), one training batch gives a finite loss and
  gradients, and no drawn defect was present; or
* stops with a message that names the defective file (its stem) or the offending key.

In both cases nothing outside the run folder changed. ``make test`` draws a bounded number
of examples (the ``ci`` profile, about a minute); ``SEGKIT_HYPOTHESIS=long`` selects the
``long`` profile for a local search (tests/conftest.py registers both).
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from segkit.config import ConfigError
from segkit.data.io import DataError
from segkit.engine.train import start_run

from ..helpers import SMALL_MODEL, compose

# How an image file is written: (Pillow mode, extension). All must read as the same picture.
IMAGE_KINDS = [
    ("RGB", ".png"),
    ("L", ".png"),
    ("RGBA", ".png"),
    ("P", ".png"),
    ("I;16", ".png"),
    ("RGB", ".jpg"),
    ("RGB", ".bmp"),
    ("RGB", ".tif"),
]
# How a class-index mask is written: all store the indices exactly.
MASK_KINDS = ["L.png", "P.png", "I;16.png", "L.bmp", "L.tif", "P.PNG"]
# Defects that must stop the run, naming the sample's file.
DEFECTS = [
    "value_outside_classes",
    "mask_size_differs",
    "mask_missing",
    "colour_mask",
    "image_truncated",
    "text_as_image",
    "listed_stem_without_files",
]
# How the split lists are written; all name the same stems.
SPLIT_STYLES = ["plain", "bom", "crlf", "blank_lines", "trailing_space"]
# Config values at and past their edges: (override, whether it is valid).
CONFIG_VALUES = {
    "data.batch_size": [("2", True), ("1", True), ("0", False), ("-1", False)],
    "optimizer.lr": [("0.001", True), ("0", False), ("-0.001", False)],
    "data.ignore_index": [("255", True), ("0", False)],
    "data.crop_size": [("[8,8]", True), ("[0,8]", False)],
}


@dataclass
class Example:
    root: Path
    num_classes: int
    masks: dict[str, np.ndarray]  # stem -> the labels on disk (what the loader must yield)
    splits: dict[str, list[str]]
    defective: set[str] = field(default_factory=set)  # stems whose files must stop the run
    bad_keys: list[str] = field(default_factory=list)  # config keys past their edge
    overrides: list[str] = field(default_factory=list)


def save_image(pixels: np.ndarray, kind: tuple[str, str], path: Path) -> None:
    mode, suffix = kind
    image = Image.fromarray(pixels)  # uint8 RGB
    if mode == "I;16":
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path.with_suffix(suffix))


def save_mask(labels: np.ndarray, kind: str, path: Path) -> None:
    mode, suffix = kind.split(".")
    if mode == "I;16":
        image = Image.fromarray(labels.astype(np.uint16))
    elif mode == "P":
        image = Image.fromarray(labels.astype(np.uint8), mode="L").convert("L")
        image = Image.frombytes("P", image.size, image.tobytes())
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    else:
        image = Image.fromarray(labels.astype(np.uint8))
    image.save(path.with_suffix(f".{suffix}"))


def write_split(path: Path, stems: list[str], style: str) -> None:
    if style == "bom":
        path.write_bytes(("\n".join(stems) + "\n").encode("utf-8-sig"))
    elif style == "crlf":
        path.write_bytes(("\r\n".join(stems) + "\r\n").encode())
    elif style == "blank_lines":
        path.write_text("\n" + "\n\n".join(stems) + "\n\n")
    elif style == "trailing_space":
        path.write_text("".join(f"{stem} \t\n" for stem in stems))
    else:
        path.write_text("\n".join(stems) + "\n")


@st.composite
def examples(draw: st.DrawFn, root: Path) -> Example:
    num_classes = draw(st.integers(2, 4))
    stems = [f"s{i}" for i in range(draw(st.integers(4, 6)))]
    splits = {"train": stems[:-2], "val": stems[-2:]}
    example = Example(root, num_classes, {}, splits)
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    for stem in stems:
        height, width = draw(st.integers(6, 12)), draw(st.integers(6, 12))
        labels = rng.integers(0, num_classes, (height, width))
        labels[0, 0], labels[-1, -1] = 0, 1  # every mask holds two classes
        if draw(st.booleans()):
            labels[1, :] = 255  # ignored pixels
        example.masks[stem] = labels
        grey = rng.integers(0, 256, (height, width), dtype=np.uint8)
        save_image(
            np.repeat(grey[..., None], 3, axis=-1),
            draw(st.sampled_from(IMAGE_KINDS)),
            root / "images" / stem,
        )
        save_mask(labels, draw(st.sampled_from(MASK_KINDS)), root / "masks" / stem)
    if draw(st.booleans()):  # files segkit must pass over: not listed, not an image
        (root / "images" / "notes.txt").write_text("taken with camera 2\n")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "unlisted.png")
    for defect in draw(st.lists(st.sampled_from(DEFECTS), max_size=2, unique=True)):
        stem = draw(st.sampled_from([s for s in stems if s not in example.defective]))
        apply_defect(example, defect, stem, rng)
    style = draw(st.sampled_from(SPLIT_STYLES))
    for name, listed in splits.items():
        write_split(root / "splits" / f"{name}.txt", listed, style)
    # at most one key past its edge, so most examples reach the data checks and a step
    off_edge = draw(st.sampled_from([None, *CONFIG_VALUES]))
    for key, choices in CONFIG_VALUES.items():
        value, valid = draw(st.sampled_from([c for c in choices if c[1] != (key == off_edge)]))
        example.overrides.append(f"{key}={value}")
        if not valid:
            example.bad_keys.append(key)
    return example


def apply_defect(example: Example, defect: str, stem: str, rng: np.random.Generator) -> None:
    images, masks = example.root / "images", example.root / "masks"
    mask_file = next(masks.glob(f"{stem}.*"), None)
    image_file = next(images.glob(f"{stem}.*"), None)
    labels = example.masks[stem]
    if defect == "listed_stem_without_files":
        stem = "ghost"
        example.splits["train"].append(stem)
    elif defect == "value_outside_classes":
        labels = labels.copy()
        labels[-1, 0] = example.num_classes + 7
        mask_file.unlink()
        save_mask(labels, "L.png", masks / stem)
    elif defect == "mask_size_differs":
        mask_file.unlink()
        save_mask(np.pad(labels, ((0, 0), (0, 1))), "L.png", masks / stem)
    elif defect == "mask_missing":
        mask_file.unlink()
    elif defect == "colour_mask":
        colours = np.stack([labels * 40, 255 - labels * 40, labels * 10], -1).astype(np.uint8)
        mask_file.unlink()
        Image.fromarray(colours).save(masks / f"{stem}.png")
    elif defect == "image_truncated":
        image_file.write_bytes(image_file.read_bytes()[:40])
    elif defect == "text_as_image":
        image_file.write_text("not an image\n")
    example.defective.add(stem)


def snapshot(root: Path, run: Path) -> dict[str, str]:
    """sha1 of every file under ``root`` outside ``run``."""
    return {
        str(p): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and run not in p.parents
    }


def read_labels(path: Path) -> np.ndarray:
    """A label file as stored: the indices of a palette PNG, the values of any other."""
    with Image.open(path) as image:
        return np.asarray(image).astype(np.int64)


def check_passed_run(example: Example, datamodule, task) -> None:
    assert not example.defective and not example.bad_keys, (
        f"start-up passed with defects {sorted(example.defective)} / keys {example.bad_keys}"
    )
    masks = example.root / "masks"
    seen = []
    for batch in datamodule.val_dataloader():
        for name, label in zip(batch["name"], batch["mask"], strict=True):
            on_disk = read_labels(next(masks.glob(f"{name}.*")))
            np.testing.assert_array_equal(label.numpy(), on_disk, err_msg=name)
            seen.append(name)
    assert sorted(seen) == sorted(example.splits["val"])
    batch = next(iter(datamodule.train_dataloader()))
    task.train()
    if len(batch["image"]) == 1 and max(batch["image"].shape[-2:]) <= 32:
        # one image whose deepest features are 1x1: batch norm cannot train; the model
        # names the settings at the first step (a combination, not one key's range)
        with pytest.raises(ValueError, match=r"data\.batch_size>=2.*data\.crop_size"):
            task.training_loss(batch["image"], batch["mask"])
        return
    loss, _ = task.training_loss(batch["image"], batch["mask"])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)


def check_stopped_run(example: Example, error: Exception) -> None:
    message = str(error) + str(getattr(error, "__cause__", "") or "")
    named = [s for s in example.defective if s in message] + [
        k for k in example.bad_keys if k in message
    ]
    assert named, (
        f"the run stopped without naming the defective files {sorted(example.defective)} or "
        f"keys {example.bad_keys}:\n{message}"
    )


@pytest.mark.filterwarnings("ignore")
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_generated_datasets_and_values_train_correctly_or_stop_naming_the_cause(data):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        example = data.draw(examples(root / "data"))
        run = root / "run"
        before = snapshot(root, run)
        cfg = compose(
            root,
            [
                "data=folder",
                f"data.dataset.root={example.root}",
                f"data.num_classes={example.num_classes}",
                f"data.class_names=[{','.join(f'c{i}' for i in range(example.num_classes))}]",
                "data.num_workers=0",
                "data.persistent_workers=false",
                "data.pin_memory=false",
                f"data.cache_dir={run / 'cache'}",
                "trainer.accelerator=cpu",
                *SMALL_MODEL,
                *example.overrides,
            ],
            run_dir=run,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                datamodule, task = start_run(cfg)
            except (DataError, ConfigError, ValueError, InstantiationException) as error:
                check_stopped_run(example, error)
            else:
                check_passed_run(example, datamodule, task)
        assert snapshot(root, run) == before
