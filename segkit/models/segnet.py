"""SegNet and SegNet-Basic: "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
Image Segmentation", Badrinarayanan, Kendall & Cipolla, TPAMI 2017
(https://arxiv.org/abs/1511.00561).

SegNet: the 13 convolutions of VGG16-BN as encoder; every 2x2 max-pool keeps its argmax
indices; the decoder mirrors the encoder, upsampling with ``max_unpool2d`` at those indices
(sparse maps) followed by trainable 3x3 conv + BN + ReLU layers. No feature maps cross from
encoder to decoder, only the indices. The last decoder conv maps 64 channels to the classes
(the soft-max is in the loss).

SegNet-Basic (the paper's smaller variant for the analysis on CamVid): four encoders of a 7x7
conv with 64 channels + BN + ReLU + max-pool, four decoders of unpooling + 7x7 conv + BN (no
ReLU in the decoder, no conv biases, as in the paper), and a 1x1 classifier.

The input is zero-padded to a multiple of 32 (SegNet) or 16 (SegNet-Basic) so every pooling
window is complete, and the logits ``[B, C, H, W]`` are cropped back: any size works. The
paper's median-frequency class balancing belongs to the loss (class weights), not here.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from segkit.models.backbones import VGG16, check_pretrained, load_vgg16_weights
from segkit.models.blocks import pad_to_multiple
from segkit.models.weights import load_weights

# Decoder stages, deepest first: output channels of each 3x3 conv (mirror of VGG16's stages).
DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv + BN + ReLU, ``[B, in, H, W] -> [B, out, H, W]``."""
    return Conv2dNormActivation(in_channels, out_channels, 3)


class SegNet(nn.Module):
    """SegNet with a VGG16-BN encoder and an index-unpooling decoder.

    Args:
        num_classes: output channels ``C``.
        in_channels: input channels.
        pretrained: start the encoder from torchvision's VGG16-BN ImageNet state dict in
            ``weights_path`` (``vgg16_bn-6c64b313.pth``); never downloaded.
        weights_path: local state dict read when ``pretrained``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        check_pretrained(pretrained, weights_path, "SegNet")
        self.encoder = VGG16(batch_norm=True, in_channels=in_channels)
        self.decoder = nn.ModuleList()
        channels = VGG16.out_channels[-1]
        for widths in DECODER:
            layers = []
            for width in widths:
                layers.append(conv_bn_relu(channels, width))
                channels = width
            self.decoder.append(nn.Sequential(*layers))
        self.decoder[-1].append(nn.Conv2d(channels, num_classes, 3, padding=1))  # conv1_1_D
        if pretrained:
            load_vgg16_weights(weights_path, self.encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``[B, in_channels, H, W]`` to logits ``[B, C, H, W]``."""
        height, width = x.shape[-2:]
        pooled, indices = self.encoder.forward_with_indices(pad_to_multiple(x, 32))
        x = pooled[-1]  # [B,512,H/32,W/32]
        for stage, index in zip(self.decoder, reversed(indices), strict=True):
            x = stage(F.max_unpool2d(x, index, kernel_size=2, stride=2))
        return x[..., :height, :width]


class SegNetBasic(nn.Module):
    """SegNet-Basic: 4 encoders and 4 decoders of 7x7 convolutions with 64 channels.

    Args:
        num_classes: output channels ``C``.
        in_channels: input channels.
        weights_path: local state dict of this model, loaded strictly after construction.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, weights_path: str | Path | None = None
    ) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(
            Conv2dNormActivation(in_channels if i == 0 else 64, 64, 7) for i in range(4)
        )
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.decoder = nn.ModuleList(
            Conv2dNormActivation(64, 64, 7, activation_layer=None) for _ in range(4)
        )
        self.classifier = nn.Conv2d(64, num_classes, kernel_size=1)
        if weights_path is not None:
            load_weights(self, weights_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``[B, in_channels, H, W]`` to logits ``[B, C, H, W]``."""
        height, width = x.shape[-2:]
        x = pad_to_multiple(x, 16)
        indices = []
        for block in self.encoder:
            x, index = self.pool(block(x))
            indices.append(index)
        for block, index in zip(self.decoder, reversed(indices), strict=True):
            x = block(F.max_unpool2d(x, index, kernel_size=2, stride=2))  # [B,64,2h,2w]
        return self.classifier(x)[..., :height, :width]
