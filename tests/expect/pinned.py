"""Pinned expected logits of every semantic model config, as torchvision's model tests pin
theirs: a numerical refactor (padding side, ``align_corners``, initialisation order, a
changed block) changes them and fails ``tests/models/test_expected_logits.py``.

Each config is built as train.py builds it (``data.num_classes=3``, the small encoder
where the config has one), under ``torch.manual_seed(0)``, in eval mode, and run on one
fixed input of odd size (every model has to pad); every third row and column of the logits
is kept in ``tests/expect/<config>.npz``.

Regenerate only on purpose, after a change meant to alter the numbers, and say why in the
commit::

    python -m tests.expect.pinned            # writes tests/expect/<config>.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from segkit.config import compose
from segkit.models.weights import build_model

from ..helpers import MODELS, SMALL

EXPECT_DIR = Path(__file__).resolve().parent
INPUT_SHAPE = (1, 3, 45, 61)
NUM_CLASSES = 3
STEP = 3  # keep logits[..., ::STEP, ::STEP]
CONFIGS = MODELS


def model_input() -> torch.Tensor:
    """The fixed input ``[1, 3, 45, 61]``, standard-normal from seed 1."""
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(1))


def logits_of(name: str) -> np.ndarray:
    """``logits[..., ::STEP, ::STEP]`` (float32) of config ``name`` built from seed 0."""
    cfg = compose([f"model={name}", f"data.num_classes={NUM_CLASSES}", *SMALL.get(name, [])])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        logits = model(model_input())
    return logits[..., ::STEP, ::STEP].numpy().astype(np.float32)


def main(argv: list[str]) -> None:
    for name in argv or CONFIGS:
        logits = logits_of(name)
        np.savez_compressed(EXPECT_DIR / f"{name}.npz", logits=logits)
        print(f"{name}: {tuple(logits.shape)} written")


if __name__ == "__main__":
    main(sys.argv[1:])
