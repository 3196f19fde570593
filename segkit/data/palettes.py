"""Class colours for pictures of label maps (predict.py overlays, published sample grids).

A palette is one RGB triple per class, from the data config's ``palette``; a config
without one gets the VOC devkit colour map, which gives every index up to 255 a distinct
colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from omegaconf import DictConfig

from segkit.data.voc import voc_colour


def palette_of(cfg: DictConfig, num_classes: int) -> list[tuple[int, int, int]]:
    """``cfg.data.palette`` as RGB tuples, or the VOC colour map when the config has none."""
    palette = cfg.data.get("palette")
    if palette is None:
        return [voc_colour(i) for i in range(num_classes)]
    return [tuple(int(v) for v in colour) for colour in palette]


def colourise(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` picture of a label map ``[H, W]``.

    Labels outside the palette (``ignore_index``, CamVid's void 11) are black.
    """
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return colours[np.clip(labels, 0, 255)]
