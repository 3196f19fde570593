"""PSPNet: Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017 (arXiv:1612.01105).

A dilated ResNet (output stride 8: the last two stages use dilation 2 and 4 instead of
striding) feeds the pyramid pooling module: the final map is average-pooled to 1x1, 2x2,
3x3 and 6x6 bins, each reduced by a 1x1 convolution to 1/4 of its channels, upsampled
bilinearly and concatenated with the map; a 3x3 convolution (512 channels), dropout 0.1 and a
1x1 classifier give logits at 1/8 resolution, upsampled bilinearly to the input size. An
auxiliary FCN head on stage 3 (``layer3``) adds deep supervision during training, weighted
by the task's ``aux_weight`` (0.4 in the paper).

Deviations: the encoder is any smp encoder (default ResNet-50 without the paper's deep
stem); random initialisation unless ``encoder_weights``/``weights_path`` is given.

Input size: any; no padding is needed (no skip concatenation, adaptive pooling).
Output: logits ``[B, C, H, W]`` in eval mode; ``{"out": [B,C,H,W], "aux": [B,C,H/8,W/8]}``
in train mode with ``aux_head=True``. Training needs batches of at least 2 samples (batch
norm after the 1x1 pooling bin).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.encoder import build_encoder
from segkit.models.weights import load_weights


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Convolution without bias (batch norm follows), batch norm, ReLU; keeps the size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def check_batch_for_pooled_batch_norm(x: torch.Tensor, training: bool, where: str) -> None:
    """Batch norm over a 1x1 pooled map has one value per channel when the batch is 1."""
    if training and x.shape[0] == 1:
        raise ValueError(
            f"{where} applies batch norm to a 1x1 pooled map, which needs at least 2 samples "
            "in train mode; use data.batch_size>=2 (the train loader drops the last partial "
            "batch), or call model.eval() for single-image inference."
        )


class AuxiliaryHead(nn.Sequential):
    """FCN head for deep supervision: 3x3 conv (256), BN, ReLU, dropout 0.1, 1x1 classifier.

    Maps ``[B, in_channels, h, w]`` to ``[B, num_classes, h, w]``.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256) -> None:
        super().__init__(
            conv_bn_relu(in_channels, channels, 3),
            nn.Dropout2d(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )


class PyramidPooling(nn.Module):
    """Pyramid pooling module: ``[B, C, h, w]`` -> ``[B, 2C, h, w]`` (C + len(bins) * C/len(bins)).

    Args:
        in_channels: ``C``.
        bins: pooled output sizes (paper: 1, 2, 3, 6).
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(in_channels, reduced, 1))
            for b in bins
        )
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch_for_pooled_batch_norm(x, self.training, "PSPNet's pyramid pooling")
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(nn.Module):
    """PSPNet on a dilated smp encoder.

    Args:
        num_classes: output channels ``C``.
        encoder_name: smp encoder (paper: ResNet-50/101, dilated).
        encoder_weights: ``None`` (random), ``"efficientnet-lite0"``/``"efficientnet-lite2"``
            (offline), or an smp weights name (needs cache or network).
        in_channels: input channels.
        output_stride: 8 (paper) or 16.
        bins: pyramid pooling bin sizes.
        channels: channels of the 3x3 convolution after pooling (paper: 512).
        aux_head: add the auxiliary head on stage 3 (returned in train mode only).
        weights_path: local state dict of the whole model, loaded last.
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
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        self.output_stride = output_stride
        self.encoder = build_encoder(encoder_name, encoder_weights, in_channels, output_stride)
        encoder_channels = self.encoder.out_channels
        pooling = PyramidPooling(encoder_channels[-1], tuple(bins))
        self.head = nn.Sequential(
            pooling,
            conv_bn_relu(pooling.out_channels, channels, 3),
            nn.Dropout2d(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )
        self.aux = AuxiliaryHead(encoder_channels[-2], num_classes) if aux_head else None
        if weights_path is not None:
            load_weights(self, weights_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """``[B, in_channels, H, W]`` -> logits ``[B, C, H, W]`` (+ ``"aux"`` in training)."""
        features = self.encoder(x)  # strides 1, 2, 4, 8, then 8 (dilated) for OS 8
        logits = self.head(features[-1])  # [B,C,H/8,W/8]
        out = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.training and self.aux is not None:
            return {"out": out, "aux": self.aux(features[-2])}
        return out
