"""LR-ASPP: the Lite R-ASPP head of Howard et al., "Searching for MobileNetV3", ICCV 2019.

Backbone: torchvision's MobileNetV3-Large with its last stage dilated (output stride 16,
960 channels). Head (paper Fig. 10): a 1x1 convolution (128 channels, BN, ReLU) gated by a
squeeze branch (global average pooling, 1x1 convolution, sigmoid) - the "lite" replacement
of ASPP; its classifier output is upsampled to the stride-8 features (40 channels, the end
of the stride-8 stage), which get their own 1x1 classifier and are added; the sum is
upsampled bilinearly to the input size.

Deviation from torchvision's ``lraspp_mobilenet_v3_large``: the low-level branch taps the
last block of the stride-8 stage (torchvision taps its first block); parameters are the
same (3.2M for 21 classes).

Input size: any. Output: logits ``[B, C, H, W]``. Batch 1 trains (no batch norm after the
pooling).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large

from segkit.models.weights import WeightsError, load_weights


def imagenet_backbone_state(weights: MobileNet_V3_Large_Weights) -> dict[str, torch.Tensor]:
    """torchvision ImageNet weights from the local torch hub cache; never downloads."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise WeightsError(
            f"pretrained=true needs torchvision's ImageNet MobileNetV3-Large weights at "
            f"{cached}, which is absent (segkit never downloads). Put the file there, set "
            "model.weights_path=/path/to/state_dict.pth, or set model.pretrained=false."
        )
    return torch.load(cached, map_location="cpu", weights_only=True)


class LiteRASPPHead(nn.Module):
    """``high [B,C_high,h,w]``, ``low [B,C_low,2h,2w]`` -> logits ``[B,C,2h,2w]``.

    Args:
        low_channels: channels of the stride-8 features (40 for MobileNetV3-Large).
        high_channels: channels of the stride-16 features (960).
        num_classes: ``C``.
        inter_channels: channels of the gated 1x1 branch (paper: 128).
    """

    def __init__(
        self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128
    ) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        gated = self.cbr(high) * self.scale(high)  # [B,128,h,w]
        gated = F.interpolate(gated, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(gated)


class LRASPP(nn.Module):
    """MobileNetV3-Large + Lite R-ASPP.

    Args:
        num_classes: output channels ``C``.
        pretrained: ImageNet backbone from torchvision's local cache (fails if absent).
        inter_channels: channels of the head's gated branch (paper: 128).
        weights_path: local state dict of the whole model, loaded last.
        bn_momentum: momentum of the backbone's BatchNorm layers (torchvision uses 0.01).
    """

    def __init__(
        self,
        num_classes: int,
        pretrained: bool = False,
        inter_channels: int = 128,
        weights_path: str | None = None,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        backbone = mobilenet_v3_large(weights=None, dilated=True)
        # torchvision builds these BatchNorms with TensorFlow's momentum (0.01 in PyTorch
        # terms): over a short from-scratch run the running statistics barely leave their
        # initial values and eval-mode output collapses to one class. Training practice, not
        # architecture, so it is a switch.
        for module in backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = bn_momentum
        if pretrained:
            backbone.load_state_dict(
                imagenet_backbone_state(MobileNet_V3_Large_Weights.IMAGENET1K_V1)
            )
        blocks = backbone.features
        # Blocks flagged _is_cn start the stages of stride 4, 8, 16 and 32 (dilated here);
        # the stride-8 stage ends just before the third of them.
        strided = [i for i, block in enumerate(blocks) if getattr(block, "_is_cn", False)]
        low_end = strided[2]  # first block of the stride-16 stage
        self.low = blocks[:low_end]  # [B,40,H/8,W/8]
        self.high = blocks[low_end:]  # [B,960,H/16,W/16], last stage dilated
        low_channels = blocks[low_end - 1].out_channels
        high_channels = blocks[-1].out_channels
        self.head = LiteRASPPHead(low_channels, high_channels, num_classes, inter_channels)
        self.output_stride = 16
        if weights_path is not None:
            load_weights(self, weights_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> logits ``[B, C, H, W]``."""
        low = self.low(x)
        logits = self.head(low, self.high(low))  # [B,C,H/8,W/8]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
