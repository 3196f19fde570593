"""Shared fixtures: tiny datasets written to tmp folders, paths to shared data, the one
Optuna sweep of the session (helpers in ``helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def write_folder_dataset(
    root: Path, num_images: int = 4, size: tuple[int, int] = (24, 32), num_classes: int = 3
) -> Path:
    """images/, masks/, splits/{train,val}.txt with random content; returns root."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    stems = [f"img{i}" for i in range(num_images)]
    for stem in stems:
        image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        mask = rng.integers(0, num_classes, size=size, dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    half = num_images // 2
    (root / "splits" / "train.txt").write_text("\n".join(stems[:half]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(stems[half:]) + "\n")
    return root


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return write_folder_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def optuna_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep dir of :func:`helpers.tiny_optuna_sweep`, run once per session."""
    from .helpers import tiny_optuna_sweep

    return tiny_optuna_sweep(tmp_path_factory)
