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

ASPP and DeepLabV3's head are torchvision's (``torchvision.models.segmentation.deeplabv3``
``ASPP``/``ASPPPooling``/``DeepLabHead``), the auxiliary head its ``FCNHead``. Deviations
from torchvision and the papers: any smp encoder (:mod:`segkit.models.encoder`; default
ResNet-50, the papers use ResNet-101/Xception with multi-grid), plain (not separable)
convolutions in ASPP and decoder, dropout 0.1 after the ASPP projection (as the TensorFlow
reference code; torchvision has 0.5). ``norm`` replaces the batch norms of ASPP, head,
decoder and auxiliary head (the encoder keeps its own).

Input size: any (zero-padded to a multiple of the output stride, logits cropped back).
Output: logits ``[B, C, H, W]``, or in train mode with ``aux_head=True``
``{"out": [B,C,H,W], "aux": [B,C,H,W]}``. With ``norm="batch"`` training needs batches of at
least 2 samples (batch norm after the image-level pooling); ``norm="group"`` trains with 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead

from segkit.models.base import SegmentationModel
from segkit.models.blocks import (
    NormLayer,
    auxiliary_head,
    check_batch_for_pooled_batch_norm,
    conv_norm_act,
    norm_layer,
    replace_batch_norm,
)
from segkit.models.encoder import build_encoder

# Paper pairing (DeepLabV3 Sec. 4.1/4.3): rates double when the output stride halves.
ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
ASPP_DROPOUT = 0.1  # TensorFlow reference code; torchvision's ASPP uses 0.5


def aspp(in_channels: int, rates: Sequence[int], norm: NormLayer | None) -> ASPP:
    """torchvision's ASPP (256 channels per branch) with segkit's dropout and norm.

    ``[B, in_channels, h, w]`` -> ``[B, 256, h, w]``.
    """
    module = ASPP(in_channels, list(rates), out_channels=256)
    module.project[-1].p = ASPP_DROPOUT
    return replace_batch_norm(module, norm)


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


def deeplab_v3_head(
    in_channels: int, rates: Sequence[int], num_classes: int, norm: NormLayer | None
) -> nn.Module:
    """torchvision's ``DeepLabHead`` (ASPP, 3x3 conv, classifier) with the paper's dropout
    and ``norm`` in place of its BatchNorm."""
    head = DeepLabHead(in_channels, num_classes, list(rates))
    head[0].project[-1].p = ASPP_DROPOUT
    return replace_batch_norm(head, norm)


class DeepLabV3(SegmentationModel):
    """DeepLabV3: atrous encoder, ASPP, 3x3 conv, classifier, bilinear upsampling.

    Args:
        num_classes: output channels ``C``.
        encoder_name: smp encoder (dilated to ``output_stride``).
        encoder_weights: encoder initialisation (:mod:`segkit.models.encoder`); ``None``:
            random.
        in_channels: input channels.
        output_stride: 8 or 16.
        atrous_rates: output stride -> ASPP rates (default: the paper's pairing).
        aux_head: auxiliary FCN head on stage 3 (returned in train mode only).
        norm: norm of ASPP, head and auxiliary head, see
            :func:`segkit.models.blocks.norm_layer`.
        norm_groups: GroupNorm's group count for ``norm="group"``.

    The head is chosen by the class attribute :attr:`decoder_kind` (a constant, so the
    constructor runs no subclass code): ``"v3"`` here (ASPP, 3x3 conv, classifier at 1/OS),
    ``"v3plus"`` in :class:`DeepLabV3Plus` (ASPP and the stride-4 :class:`DecoderV3Plus`).
    """

    decoder_kind = "v3"

    def __init__(
        self,
        num_classes: int,
        encoder_name: str = "resnet50",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        output_stride: int = 16,
        atrous_rates: Mapping[int, Sequence[int]] = ATROUS_RATES,
        aux_head: bool = False,
        norm: str | None = "batch",
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        layer = norm_layer(norm, norm_groups)
        self.norm = norm
        self.output_stride = output_stride
        rates = rates_for(atrous_rates, output_stride)
        self.encoder = build_encoder(encoder_name, encoder_weights, in_channels, output_stride)
        encoder_channels = self.encoder.out_channels
        if self.decoder_kind == "v3":
            self.head = deeplab_v3_head(encoder_channels[-1], rates, num_classes, layer)
        else:
            high, low = encoder_channels[-1], encoder_channels[2]
            self.head = DecoderV3Plus(high, low, rates, num_classes, layer)
        self.aux = auxiliary_head(encoder_channels[-2], num_classes, layer) if aux_head else None

    def _logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.decoder_kind == "v3plus":
            return self.head(features[-1], features[2])  # [B,C,H/4,W/4]
        return self.head(features[-1])  # [B,C,H/OS,W/OS]

    def predict(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Padded images -> logits at 1/OS (V3) or 1/4 (V3+) (+ ``"aux"`` in training)."""
        if self.norm == "batch":
            check_batch_for_pooled_batch_norm(x, self.training, "ASPP's image-level pooling")
        features = self.encoder(x)
        logits = self._logits(features)
        if self.training and self.aux is not None:
            return {"out": logits, "aux": self.aux(features[-2])}
        return logits


class DecoderV3Plus(nn.Module):
    """DeepLabV3+ decoder: ASPP output ``[B,256,h,w]`` + low-level ``[B,C_low,4h',4w']``.

    Returns logits ``[B, num_classes, H/4, W/4]`` at the low-level resolution.
    """

    def __init__(
        self,
        high_channels: int,
        low_channels: int,
        rates: Sequence[int],
        num_classes: int,
        norm: NormLayer | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.aspp = aspp(high_channels, rates, norm)
        self.low = conv_norm_act(low_channels, 48, 1, norm)  # paper Table 1: 48 channels
        self.refine = nn.Sequential(
            conv_norm_act(256 + 48, 256, 3, norm),
            conv_norm_act(256, 256, 3, norm),
            nn.Conv2d(256, num_classes, 1),
        )

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.low(low)
        high = F.interpolate(
            self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.refine(torch.cat([high, low], dim=1))


class DeepLabV3Plus(DeepLabV3):
    """DeepLabV3+: DeepLabV3's encoder and ASPP plus a decoder over stride-4 features.

    Takes the same arguments as :class:`DeepLabV3` (paper default: output stride 16).
    """

    decoder_kind = "v3plus"
