"""Pad inputs to a multiple of a model's output stride and crop the logits back."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadToMultiple(nn.Module):
    """Run ``model`` on an input zero-padded (bottom/right) to a multiple of ``multiple``.

    Architectures with skip connections need every side divisible by their output stride;
    this wrapper lets users feed any size. Zero is the dataset mean after normalisation.
    Outputs (a tensor, or a dict of tensors) are cropped back to the input size; auxiliary
    outputs at lower resolution are cropped proportionally.

    Args:
        model: module mapping ``[B, C_in, H', W']`` to logits (or ``{"out", "aux"}``).
        multiple: required divisor of ``H'`` and ``W'``.
    """

    def __init__(self, model: nn.Module, multiple: int) -> None:
        super().__init__()
        self.model = model
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        pad_h = -height % self.multiple
        pad_w = -width % self.multiple
        if pad_h == 0 and pad_w == 0:
            return self.model(x)
        output = self.model(F.pad(x, (0, pad_w, 0, pad_h)))

        def crop(t: torch.Tensor) -> torch.Tensor:
            scale_h = t.shape[-2] / (height + pad_h)
            scale_w = t.shape[-1] / (width + pad_w)
            return t[..., : round(height * scale_h), : round(width * scale_w)]

        if isinstance(output, dict):
            return {key: crop(value) for key, value in output.items()}
        return crop(output)
