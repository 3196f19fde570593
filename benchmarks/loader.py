"""Data-loader throughput (images/s) of the shipped data configs, for 0, 1 and 2 workers.

python -m benchmarks.loader [--quick]

Each data config (``conf/data/<name>.yaml``) is composed as train.py composes it, with its
default training transforms and batch size; only ``num_workers`` changes. The shapes data
is generated into a temporary folder; CamVid is read from ../shared/data/camvid when the
config and the data exist, once decoding the PNG files and once from its decoded cache
(``data.dataset.decoded_cache``, built first into the temporary data folder; the build time is
reported below the table); ``data=cityscapes`` reads a synthetic tree of 1024x2048 frames in
the official layout, written into a temporary folder (smooth regions plus noise, so the PNGs
compress roughly like real frames). For comparison, the training throughput of the default model
(``conf/model/unet_r18.yaml``) on batches of the same size tells whether the loader or the
model is the bottleneck.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from benchmarks.common import run_alone, table
from segkit.models.weights import build_model
from segkit.tasks.losses import CrossEntropyLoss

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TITLE = "Data-loader throughput (CPU)"


def compose(name: str, data_dir: str, overrides: Sequence[str]) -> DictConfig:
    """The composed train config with ``data=<name>``."""
    with hydra.initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return hydra.compose(
            "train",
            overrides=[
                f"data={name}",
                f"paths.root_dir={PROJECT_ROOT}",
                f"paths.data_dir={data_dir}",
                *overrides,
            ],
        )


def write_cityscapes_like(root: Path, count: int, size: tuple[int, int]) -> None:
    """``count`` train frames (and one val frame) ``size`` (h, w) with labelIds masks under
    ``root``, in the official layout."""
    rng = np.random.default_rng(0)
    height, width = size
    evaluated_ids = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28])
    for index in range(count + 1):
        split = "train" if index < count else "val"
        images = root / "leftImg8bit" / split / "synthcity"
        labels = root / "gtFine" / split / "synthcity"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        # a coarse grid of label regions (like road/building/sky areas), upsampled
        coarse = rng.choice(evaluated_ids, size=(8, 16)).astype(np.uint8)
        label_ids = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_NEAREST)
        colours = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)[label_ids]
        noise = rng.normal(0, 6, size=(height, width, 1))
        image = np.clip(colours + noise, 0, 255).astype(np.uint8)
        stem = f"synthcity_000000_{index:06d}"
        cv2.imwrite(str(images / f"{stem}_leftImg8bit.png"), image)
        cv2.imwrite(str(labels / f"{stem}_gtFine_labelIds.png"), label_ids)


def images_per_second(cfg: DictConfig, num_workers: int, batches: int) -> float:
    """Images/s over ``batches`` training batches after the first (worker start-up)."""
    datamodule = hydra.utils.instantiate(
        cfg.data, num_workers=num_workers, persistent_workers=False, pin_memory=False
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    iterator = iter(datamodule.train_dataloader())
    next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        images += len(next(iterator)["image"])
    return images / (time.perf_counter() - start)


def cache_build_seconds(cfg: DictConfig) -> tuple[float, int]:
    """Seconds to build the decoded caches of the training and validation splits, and their
    size in bytes (``cfg`` must have ``data.dataset.decoded_cache=true``)."""
    datamodule = hydra.utils.instantiate(cfg.data)
    datasets = [datamodule.build_dataset(stage) for stage in ("train", "val")]
    start = time.perf_counter()
    folders = [dataset.open_decoded_cache().folder for dataset in datasets]
    seconds = time.perf_counter() - start
    return seconds, sum(f.stat().st_size for folder in folders for f in folder.iterdir())


def model_images_per_second(cfg: DictConfig, steps: int) -> float:
    """Training images/s of ``cfg.model`` on random batches shaped like the loader's."""
    datamodule = hydra.utils.instantiate(cfg.data, num_workers=0)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    model = build_model(cfg.model).train()
    loss_fn = CrossEntropyLoss(ignore_index=cfg.data.ignore_index)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = loss_fn(model(batch["image"]), batch["mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(batch["image"]) / (time.perf_counter() - start)


def run(quick: bool = False) -> str:
    """Measure every available data config; return the Markdown section."""
    shapes = ["data.prepare.num_train=16", "data.prepare.size=64", "data.batch_size=4"]
    # (config, row label, overrides)
    cases: list[tuple[str, str, list[str]]] = [("shapes", "shapes", shapes if quick else [])]
    camvid_root = PROJECT_ROOT.parent / "shared" / "data" / "camvid"
    notes = []
    if (PROJECT_ROOT / "conf" / "data" / "camvid.yaml").is_file() and camvid_root.is_dir():
        camvid = ["data.batch_size=2"] if quick else []
        cases.append(("camvid", "camvid, PNG files", [*camvid, "data.dataset.decoded_cache=false"]))
        cases.append(
            ("camvid", "camvid, decoded cache", [*camvid, "data.dataset.decoded_cache=true"])
        )
    else:
        notes.append(f"CamVid skipped: conf/data/camvid.yaml or {camvid_root} is missing.")
    batches = 2 if quick else 8
    workers = (0, 1, 2)
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        city_size = (64, 128) if quick else (1024, 2048)
        city_batch = 2 if quick else 8  # conf/data/cityscapes.yaml
        write_cityscapes_like(Path(data_dir) / "cityscapes", city_batch * (batches + 1), city_size)
        city = [f"data.batch_size={city_batch}"]
        if quick:  # crops that fit the small frames
            city += [
                "data.train_transform.transforms.0.scale_limit=[0.0,0.0]",
                "data.train_transform.transforms.1.height=32",
                "data.train_transform.transforms.1.width=64",
            ]
        cases.append(("cityscapes", "cityscapes", city))
        model_rates: dict[str, float] = {}  # one per config: the cache leaves batches alike
        for name, label, overrides in cases:
            cfg = compose(name, data_dir, overrides)
            if cfg.data.dataset.get("decoded_cache"):
                seconds, size = cache_build_seconds(cfg)
                notes.append(
                    f"{label}: built once in {seconds:.1f} s (train and val splits, "
                    f"{size / 1e6:.0f} MB on disk); the rows time reading it."
                )
            rates = [images_per_second(cfg, n, batches) for n in workers]
            if name not in model_rates:
                # a unet_r18 step on 8x3x512x1024 takes most of a minute on a small CPU
                steps = 1 if quick or name == "cityscapes" else 3
                model_rates[name] = model_images_per_second(cfg, steps)
            model_rate = model_rates[name]
            bottleneck = "loader" if max(rates) < model_rate else "model"
            rows.append(
                [f"{label} (batch {cfg.data.batch_size})"]
                + [f"{r:.1f}" for r in rates]
                + [f"{model_rate:.1f}", bottleneck]
            )
    header = ["data config", *(f"{n} workers img/s" for n in workers), "model img/s", "bottleneck"]
    return "\n\n".join(
        [
            f"## {TITLE}",
            "What is timed: images/s delivered by `datamodule.train_dataloader()` of each data "
            "config with its default training transforms and batch size, over "
            f"{batches} batches after the first (which pays the worker start-up), for "
            "`num_workers` 0/1/2. 'model img/s' is the training throughput (forward, "
            "backward, AdamW step) of the default model `unet_r18` on a batch of the same "
            "shape (1 step for cityscapes, 3 otherwise); the slower of the two is the "
            "bottleneck. 'camvid, PNG files' decodes every frame and label per sample; "
            "'camvid, decoded cache' reads the same arrays from the split's memory-mapped "
            "decoded cache (`data.dataset.decoded_cache=true`, the camvid default), before the "
            "same transforms. cityscapes is a synthetic tree of "
            f"{city_size[0]}x{city_size[1]} PNG frames with "
            + (
                "fixed-scale 32x64 crops (--quick)."
                if quick
                else "its default transforms (scale 0.5-2.0, 512x1024 crop, flip)."
            )
            + " The machine's cores are shared "
            f"with the training process, so with {os.cpu_count()} cores more workers compete "
            "with the model for the same CPUs.",
            table(header, rows),
            *notes,
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    run_alone(run, __doc__, argv)


if __name__ == "__main__":
    main()
