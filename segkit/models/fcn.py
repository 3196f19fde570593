"""FCN-32s / FCN-16s / FCN-8s: "Fully Convolutional Networks for Semantic Segmentation".

Long, Shelhamer & Darrell, CVPR 2015 (https://arxiv.org/abs/1411.4038). The VGG16 classifier
is convolutionalised (fc6 -> 7x7 conv with 4096 channels, fc7 -> 1x1 conv, ReLU + dropout
after each), a 1x1 ``score_fr`` predicts classes at stride 32, and learnable transposed
convolutions initialised to bilinear interpolation upsample it: directly x32 (32s), or x2 and
fused with a 1x1 score of pool4 (16s), then x2 again and fused with pool3 (8s) before x8.
The skip score layers start at zero, as in the paper, so training starts from the coarser net.

``encoder_name`` is ``"vgg16"`` (the paper) or any segmentation-models-pytorch encoder name
(``resnet18``, ``tu-<timm name>``, ...). Such encoders classify with a global pool and a
linear layer, whose convolutionalised form is the 1x1 score layer itself, so they have no
fc6/fc7; pool3/pool4/pool5 are their stride-8/16/32 stages.

Deviations: the paper pads conv1_1 by 100 pixels and crops each fusion by Caffe offsets; here
the input is zero-padded to a multiple of 32 and fc6 has padding 3, so every upsampling is
exact and no crop offsets are needed (same parameters). Any input size works; logits are
``[B, num_classes, H, W]`` at input size.

Weights: ``pretrained=True`` loads ImageNet weights from ``weights_path``: torchvision's
VGG16 state dict for ``vgg16`` (see :func:`segkit.models.backbones.load_vgg16_weights`), an
smp encoder state dict otherwise. Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from segkit.models.backbones import VGG16, check_pretrained, load_vgg16_weights
from segkit.models.blocks import pad_to_multiple
from segkit.models.weights import load_weights

SKIPS = ("32s", "16s", "8s")


def bilinear_kernel(channels: int, factor: int) -> torch.Tensor:
    """Weights ``[channels, channels, 2f, 2f]`` making a transposed conv bilinear upsampling.

    With ``stride=f, padding=f//2`` the layer equals bilinear interpolation
    (``align_corners=False``) of the input zero-extended by one pixel on each side. Channel
    ``c`` maps only to channel ``c``.
    """
    size = 2 * factor
    centre = factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - centre).abs() / factor  # [2f]
    kernel = torch.zeros(channels, channels, size, size)
    kernel[range(channels), range(channels)] = ramp[:, None] * ramp[None, :]
    return kernel


def upsampling(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Learnable x``factor`` upsampling, initialised to bilinear (no bias, as in the paper)."""
    layer = nn.ConvTranspose2d(
        channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False
    )
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, factor))
    return layer


def zero_score(in_channels: int, num_classes: int) -> nn.Conv2d:
    """1x1 score layer for a skip, initialised to zero (the paper's choice)."""
    layer = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class FCN(nn.Module):
    """Fully convolutional network with ``skip`` 32s, 16s or 8s.

    Args:
        num_classes: output channels ``C``.
        skip: ``"32s"`` (no skip), ``"16s"`` (pool4) or ``"8s"`` (pool4 and pool3).
        encoder_name: ``"vgg16"`` (the paper's, with fc6/fc7) or another smp encoder name.
        in_channels: input channels.
        pretrained: start the encoder (and fc6/fc7) from ImageNet weights in
            ``weights_path``.
        weights_path: local state dict read when ``pretrained``.
        dropout: dropout probability after fc6 and fc7 (VGG16 only).
    """

    def __init__(
        self,
        num_classes: int,
        skip: str = "8s",
        encoder_name: str = "vgg16",
        in_channels: int = 3,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if skip not in SKIPS:
            raise ValueError(f"model.skip must be one of {', '.join(SKIPS)}, got {skip!r}")
        check_pretrained(pretrained, weights_path, f"FCN on {encoder_name}")
        self.skip = skip
        if encoder_name == "vgg16":
            self.encoder = VGG16(batch_norm=False, in_channels=in_channels)
            pool3, pool4, pool5 = VGG16.out_channels[2:]
            self.fc = nn.Sequential(
                nn.Conv2d(pool5, 4096, kernel_size=7, padding=3),  # fc6
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Conv2d(4096, 4096, kernel_size=1),  # fc7
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            )
            head_channels = 4096
            self.multiple = 32
        else:
            self.encoder = smp.encoders.get_encoder(
                encoder_name, in_channels=in_channels, depth=5, weights=None
            )
            pool3, pool4, pool5 = self.encoder.out_channels[-3:]
            self.fc = nn.Identity()
            head_channels = pool5
            self.multiple = self.encoder.output_stride
        self.score_fr = nn.Conv2d(head_channels, num_classes, kernel_size=1)
        if skip in ("16s", "8s"):
            self.upscore2 = upsampling(num_classes, 2)
            self.score_pool4 = zero_score(pool4, num_classes)
        if skip == "8s":
            self.upscore_pool4 = upsampling(num_classes, 2)
            self.score_pool3 = zero_score(pool3, num_classes)
        self.upscore = upsampling(num_classes, int(skip[:-1]))
        if pretrained and encoder_name == "vgg16":
            load_vgg16_weights(weights_path, self.encoder, fc6=self.fc[0], fc7=self.fc[3])
        elif pretrained:
            load_weights(self.encoder, weights_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``[B, in_channels, H, W]`` to logits ``[B, C, H, W]``."""
        height, width = x.shape[-2:]
        pool3, pool4, pool5 = self.encoder(pad_to_multiple(x, self.multiple))[-3:]
        score = self.score_fr(self.fc(pool5))  # [B,C,H/32,W/32]
        if self.skip in ("16s", "8s"):
            score = self.upscore2(score) + self.score_pool4(pool4)  # [B,C,H/16,W/16]
        if self.skip == "8s":
            score = self.upscore_pool4(score) + self.score_pool3(pool3)  # [B,C,H/8,W/8]
        return self.upscore(score)[..., :height, :width]
