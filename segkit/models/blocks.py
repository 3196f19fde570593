"""Small pieces shared by the paper models (FCN, U-Net, SegNet, DeconvNet)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad ``x`` ``[B, C, H, W]`` at the bottom/right so both sides divide by ``multiple``.

    The convention of :class:`segkit.models.padding.PadToMultiple` (zero is the dataset mean
    after normalisation), applied inside a model's own ``forward`` so its state-dict keys stay
    unprefixed; the caller crops the logits back with ``logits[..., :H, :W]``.

    Returns:
        ``[B, C, H', W']`` with ``H' = ceil(H / multiple) * multiple`` (same for ``W'``).
    """
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % multiple, 0, -height % multiple))
