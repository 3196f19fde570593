"""LR-ASPP: the Lite R-ASPP head of Howard et al., "Searching for MobileNetV3", ICCV 2019.

Backbone (``encoder_name``): torchvision's MobileNetV3-Large with its last stage dilated
(``"mobilenet_v3_large"``, the paper's; output stride 16, 960 channels), or any smp encoder
(e.g. ``"tu-tf_efficientnet_lite0"``, :func:`segkit.models.encoder.build_encoder`) dilated to
output stride 16, whose stride-8 and deepest features feed the two branches.

Head (paper Fig. 10, torchvision's ``LRASPPHead``): a 1x1 convolution (128 channels, BN,
ReLU) gated by a squeeze branch (global average pooling, 1x1 convolution, sigmoid) - the
"lite" replacement of ASPP; its output is upsampled to the stride-8 features (40 channels,
the end of MobileNetV3's stride-8 stage), which get their own 1x1 classifier and are added;
the sum is upsampled bilinearly to the input size.

Deviation from torchvision's ``lraspp_mobilenet_v3_large``: the low-level branch taps the
last block of the stride-8 stage (torchvision taps its first block); parameters are the
same (3.2M for 21 classes).

Weights: for MobileNetV3-Large, ``encoder_weights`` is torchvision's ImageNet state dict (a
local file, or ``IMAGENET1K_V1``/``IMAGENET1K_V2`` read from the torch hub cache, never
downloaded); with ``in_channels != 3`` the first convolution's RGB kernel is adapted by
timm's ``adapt_input_conv``. For an smp encoder it is what :mod:`segkit.models.encoder`
accepts (``efficientnet-lite0`` offline). ``weights_path`` is a state dict of this model.

Input size: any (zero-padded to a multiple of 16, logits cropped back). Output: logits
``[B, C, H, W]``. Batch 1 trains (no batch norm after the pooling).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.segmentation.lraspp import LRASPPHead

from segkit.models.base import SegmentationModel
from segkit.models.encoder import build_encoder
from segkit.models.weights import (
    load_state,
    read_state_dict,
    torchvision_weights_file,
)


def load_imagenet(backbone: nn.Module, encoder_weights: str) -> None:
    """Fill torchvision's ``mobilenet_v3_large`` (3 input channels) from ``encoder_weights``.

    Raises:
        WeightsError: the file is missing or does not fit.
    """
    key = "model.encoder_weights"
    path = torchvision_weights_file(encoder_weights, "mobilenet_v3_large")
    state = read_state_dict(path, key=key)
    load_state(backbone, state, str(path), strict=True, allow_unused=True, key=key)


class LRASPP(SegmentationModel):
    """MobileNetV3-Large (or an smp encoder) + Lite R-ASPP.

    Args:
        num_classes: output channels ``C``.
        in_channels: input channels (3: torchvision's first convolution; otherwise replaced).
        encoder_name: ``"mobilenet_v3_large"`` (torchvision's, the paper's) or an smp
            encoder name.
        inter_channels: channels of the head's gated branch (paper: 128).
        bn_momentum: momentum of MobileNetV3's BatchNorm layers (torchvision uses 0.01); smp
            encoders keep their own.
        encoder_weights: backbone initialisation (see the module docstring); ``None``: random.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        encoder_name: str = "mobilenet_v3_large",
        inter_channels: int = 128,
        bn_momentum: float = 0.1,
        encoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.output_stride = 16
        if encoder_name == "mobilenet_v3_large":
            low_channels, high_channels = self._mobilenet(in_channels, bn_momentum, encoder_weights)
        else:
            self.encoder = build_encoder(encoder_name, encoder_weights, in_channels, 16)
            self.low_end = None
            channels = self.encoder.out_channels
            low_channels, high_channels = channels[3], channels[-1]
        self.head = LRASPPHead(low_channels, high_channels, num_classes, inter_channels)

    def _mobilenet(
        self, in_channels: int, bn_momentum: float, encoder_weights: str | None
    ) -> tuple[int, int]:
        """Build torchvision's dilated MobileNetV3-Large as ``self.encoder``; return the
        channels of the low (end of the stride-8 stage) and high (last) features."""
        backbone = mobilenet_v3_large(weights=None, dilated=True)
        if encoder_weights is not None:
            load_imagenet(backbone, encoder_weights)
        # torchvision builds these BatchNorms with TensorFlow's momentum (0.01 in PyTorch
        # terms): over a short from-scratch run the running statistics barely leave their
        # initial values and eval-mode output collapses to one class. Training practice, not
        # architecture, so it is a switch.
        for module in backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = bn_momentum
        self.encoder = backbone.features  # keys as torchvision's features.*
        first = self.encoder[0][0]
        if in_channels != first.in_channels:
            from timm.models import adapt_input_conv

            conv = nn.Conv2d(
                in_channels, first.out_channels, first.kernel_size, first.stride,
                first.padding, bias=False,
            )  # fmt: skip
            with torch.no_grad():
                if encoder_weights is not None:  # keep the ImageNet kernel, adapted
                    conv.weight.copy_(adapt_input_conv(in_channels, first.weight))
                else:  # torchvision's MobileNetV3 initialisation
                    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
            self.encoder[0][0] = conv
        # Blocks flagged _is_cn start the stages of stride 4, 8, 16 and 32 (dilated here);
        # the stride-8 stage ends just before the third of them.
        strided = [i for i, block in enumerate(self.encoder) if getattr(block, "_is_cn", False)]
        self.low_end = strided[2]  # first block of the stride-16 stage
        low_channels = self.encoder[self.low_end - 1].out_channels
        high_channels = self.encoder[-1].out_channels
        return low_channels, high_channels

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, C_in, H, W]`` -> ``(low [B,C_low,H/8,W/8], high [B,C_high,H/16,W/16])``
        (MobileNetV3-Large: 40 and 960 channels)."""
        if self.low_end is None:  # smp encoder: strides 1, 2, 4, 8, 16, 16
            features = self.encoder(x)
            return features[3], features[-1]
        low = self.encoder[: self.low_end](x)
        return low, self.encoder[self.low_end :](low)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Padded images -> logits ``[B, C, H/8, W/8]``."""
        low, high = self.features(x)
        return self.head({"low": low, "high": high})
