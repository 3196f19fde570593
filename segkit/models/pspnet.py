"""PSPNet: Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017 (arXiv:1612.01105).

A dilated ResNet (output stride 8: the last two stages use dilation 2 and 4 instead of
striding) feeds the pyramid pooling module: the final map is average-pooled to 1x1, 2x2,
3x3 and 6x6 bins, each reduced by a 1x1 convolution to 1/4 of its channels, upsampled
bilinearly and concatenated with the map; a 3x3 convolution (512 channels), dropout 0.1 and a
1x1 classifier give logits at 1/8 resolution, upsampled bilinearly to the input size. An
auxiliary FCN head on stage 3 (``layer3``) adds deep supervision during training, weighted
by the task's ``aux_weight`` (0.4 in the paper).

Deviations: the encoder is any smp encoder (default ResNet-50 without the paper's deep
stem); random initialisation unless ``encoder_weights`` (:mod:`segkit.models.encoder`) or
``weights_path`` is given. The auxiliary head is torchvision's ``FCNHead`` (inner width
``in_channels // 4``: the paper's 256 on ResNet-50, 64 on ResNet-18). ``norm`` sets the
norm of the pyramid pooling, the 3x3 conv and the auxiliary head (the encoder keeps its own).

Input size: any (zero-padded to a multiple of the output stride, logits cropped back).
Output: logits ``[B, C, H, W]`` in eval mode; ``{"out": [B,C,H,W], "aux": [B,C,H,W]}`` in
train mode with ``aux_head=True``. With ``norm="batch"`` training needs batches of at least
2 samples (batch norm after the 1x1 pooling bin); ``norm="group"`` trains with batch 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.base import SegmentationModel
from segkit.models.blocks import (
    NormLayer,
    auxiliary_head,
    check_batch_for_pooled_batch_norm,
    conv_norm_act,
    norm_layer,
)
from segkit.models.encoder import build_encoder


class PyramidPooling(nn.Module):
    """Pyramid pooling module: ``[B, C, h, w]`` -> ``[B, 2C, h, w]`` (C + len(bins) * C/len(bins)).

    Args:
        in_channels: ``C``.
        bins: pooled output sizes (paper: 1, 2, 3, 6).
        norm: norm factory after each bin's 1x1 conv.
    """

    def __init__(
        self,
        in_channels: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        norm: NormLayer | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_norm_act(in_channels, reduced, 1, norm))
            for b in bins
        )
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(SegmentationModel):
    """PSPNet on a dilated smp encoder.

    Args:
        num_classes: output channels ``C``.
        encoder_name: smp encoder (paper: ResNet-50/101, dilated).
        encoder_weights: encoder initialisation (:mod:`segkit.models.encoder`); ``None``:
            random.
        in_channels: input channels.
        output_stride: 8 (paper) or 16.
        bins: pyramid pooling bin sizes.
        channels: channels of the 3x3 convolution after pooling (paper: 512).
        aux_head: add the auxiliary head on stage 3 (returned in train mode only).
        norm: norm of the head's layers, see :func:`segkit.models.blocks.norm_layer`.
        norm_groups: GroupNorm's group count for ``norm="group"``.
    """

    def __init__(
        self,
        num_classes: int,
        encoder_name: str = "resnet50",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        output_stride: int = 8,
        bins: Sequence[int] = (1, 2, 3, 6),
        channels: int = 512,
        aux_head: bool = True,
        norm: str | None = "batch",
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        layer = norm_layer(norm, norm_groups)
        self.norm = norm
        self.output_stride = output_stride
        self.encoder = build_encoder(encoder_name, encoder_weights, in_channels, output_stride)
        encoder_channels = self.encoder.out_channels
        pooling = PyramidPooling(encoder_channels[-1], tuple(bins), layer)
        self.head = nn.Sequential(
            pooling,
            conv_norm_act(pooling.out_channels, channels, 3, layer),
            nn.Dropout2d(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )
        self.aux = auxiliary_head(encoder_channels[-2], num_classes, layer) if aux_head else None

    def predict(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Padded images -> logits ``[B, C, H/8, W/8]`` (+ ``"aux"`` in training)."""
        if self.norm == "batch":
            check_batch_for_pooled_batch_norm(x, self.training, "PSPNet's pyramid pooling")
        features = self.encoder(x)  # strides 1, 2, 4, 8, then 8 (dilated) for OS 8
        logits = self.head(features[-1])  # [B,C,H/OS,W/OS]
        if self.training and self.aux is not None:
            return {"out": logits, "aux": self.aux(features[-2])}
        return logits
