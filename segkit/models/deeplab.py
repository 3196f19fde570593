"""DeepLabV3 and DeepLabV3+ (Chen et al., arXiv:1706.05587 and ECCV 2018, arXiv:1802.02611).

An atrous ResNet (the last stages dilated instead of strided, output stride 16 or 8) feeds
Atrous Spatial Pyramid Pooling: a 1x1 convolution, three 3x3 convolutions with atrous rates
(6, 12, 18) at output stride 16 and (12, 24, 36) at output stride 8 (the paper doubles the
rates when it halves the stride), and an image-level branch (global average pooling, 1x1
convolution, upsampling), each 256 channels with batch norm, concatenated and projected to
256 channels. DeepLabV3 adds a 3x3 convolution and a 1x1 classifier and upsamples the logits
bilinearly. DeepLabV3+ upsamples the ASPP output 4x, concatenates 48-channel projected
low-level features of stride 4, refines with two 3x3 convolutions (256) and classifies.

The rate/stride pairing is the config value ``atrous_rates`` (output stride -> rates), so
overriding ``model.output_stride`` picks the matching rates.

Deviations: any smp encoder (default ResNet-50, the papers use ResNet-101/Xception with
multi-grid), plain (not separable) convolutions in ASPP and decoder, dropout 0.1 after the
ASPP projection (as the TensorFlow reference code). Optional auxiliary FCN head on stage 3.

Input size: any; no padding needed. Output: logits ``[B, C, H, W]``, or in train mode with
``aux_head=True`` ``{"out": [B,C,H,W], "aux": [B,C,h,w]}``. Training needs batches of at
least 2 samples (batch norm after the image-level pooling).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.encoder import build_encoder
from segkit.models.pspnet import AuxiliaryHead, check_batch_for_pooled_batch_norm, conv_bn_relu
from segkit.models.weights import load_weights

# Paper pairing (DeepLabV3 Sec. 4.1/4.3): rates double when the output stride halves.
ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def atrous_conv(in_channels: int, out_channels: int, rate: int) -> nn.Sequential:
    """3x3 convolution with dilation ``rate`` (size kept), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Sequential):
    """Image-level ASPP branch: ``[B, C_in, h, w]`` -> ``[B, C_out, h, w]`` (constant map)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch_for_pooled_batch_norm(x, self.training, "ASPP's image-level pooling")
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="nearest")


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``[B, C_in, h, w]`` -> ``[B, channels, h, w]``.

    Args:
        in_channels: ``C_in``.
        rates: atrous rates of the 3x3 branches.
        channels: channels of each branch and of the output (paper: 256).
    """

    def __init__(self, in_channels: int, rates: Sequence[int], channels: int = 256) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [
                conv_bn_relu(in_channels, channels, 1),
                *(atrous_conv(in_channels, channels, rate) for rate in rates),
                ImagePooling(in_channels, channels),
            ]
        )
        self.project = nn.Sequential(
            conv_bn_relu(channels * len(self.branches), channels, 1), nn.Dropout(0.1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def rates_for(atrous_rates: Mapping[int, Sequence[int]], output_stride: int) -> tuple[int, ...]:
    """The ASPP rates paired with ``output_stride`` in ``atrous_rates``."""
    rates = {int(stride): tuple(r) for stride, r in atrous_rates.items()}
    if output_stride not in rates:
        raise ValueError(
            f"model.atrous_rates has rates for output strides {sorted(rates)}, not for "
            f"model.output_stride={output_stride}; add them, e.g. "
            f"model.atrous_rates={{{output_stride}:[6,12,18]}} scaled by 16/{output_stride}."
        )
    return rates[output_stride]


class DeepLabV3(nn.Module):
    """DeepLabV3: atrous encoder, ASPP, 3x3 conv, classifier, bilinear upsampling.

    Args:
        num_classes: output channels ``C``.
        encoder_name: smp encoder (dilated to ``output_stride``).
        encoder_weights: ``None``, ``"efficientnet-lite0"``/``"efficientnet-lite2"`` (offline)
            or an smp weights name (needs cache or network).
        in_channels: input channels.
        output_stride: 8 or 16.
        atrous_rates: output stride -> ASPP rates (default: the paper's pairing).
        aux_head: auxiliary FCN head on stage 3 (returned in train mode only).
        weights_path: local state dict of the whole model, loaded last.
    """

    def __init__(
        self,
        num_classes: int,
        encoder_name: str = "resnet50",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        output_stride: int = 16,
        atrous_rates: Mapping[int, Sequence[int]] = ATROUS_RATES,
        aux_head: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        self.output_stride = output_stride
        rates = rates_for(atrous_rates, output_stride)
        self.encoder = build_encoder(encoder_name, encoder_weights, in_channels, output_stride)
        encoder_channels = self.encoder.out_channels
        self.head = self._build_head(encoder_channels, rates, num_classes)
        self.aux = AuxiliaryHead(encoder_channels[-2], num_classes) if aux_head else None
        if weights_path is not None:
            load_weights(self, weights_path)

    def _build_head(
        self, encoder_channels: Sequence[int], rates: Sequence[int], num_classes: int
    ) -> nn.Module:
        return nn.Sequential(
            ASPP(encoder_channels[-1], rates),
            conv_bn_relu(256, 256, 3),
            nn.Conv2d(256, num_classes, 1),
        )

    def _logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features[-1])  # [B,C,H/OS,W/OS]

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """``[B, in_channels, H, W]`` -> logits ``[B, C, H, W]`` (+ ``"aux"`` in training)."""
        features = self.encoder(x)
        logits = self._logits(features)
        out = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.training and self.aux is not None:
            return {"out": out, "aux": self.aux(features[-2])}
        return out


class DecoderV3Plus(nn.Module):
    """DeepLabV3+ decoder: ASPP output ``[B,256,h,w]`` + low-level ``[B,C_low,4h',4w']``.

    Returns logits ``[B, num_classes, H/4, W/4]`` at the low-level resolution.
    """

    def __init__(
        self, high_channels: int, low_channels: int, rates: Sequence[int], num_classes: int
    ) -> None:
        super().__init__()
        self.aspp = ASPP(high_channels, rates)
        self.low = conv_bn_relu(low_channels, 48, 1)  # paper Table 1: 48 channels
        self.refine = nn.Sequential(
            conv_bn_relu(256 + 48, 256, 3),
            conv_bn_relu(256, 256, 3),
            nn.Conv2d(256, num_classes, 1),
        )

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.low(low)
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear")
        return self.refine(torch.cat([high, low], dim=1))


class DeepLabV3Plus(DeepLabV3):
    """DeepLabV3+: DeepLabV3's encoder and ASPP plus a decoder over stride-4 features.

    Takes the same arguments as :class:`DeepLabV3` (paper default: output stride 16).
    """

    def _build_head(
        self, encoder_channels: Sequence[int], rates: Sequence[int], num_classes: int
    ) -> nn.Module:
        return DecoderV3Plus(encoder_channels[-1], encoder_channels[2], rates, num_classes)

    def _logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features[-1], features[2])  # [B,C,H/4,W/4]
