"""SegNet and SegNet-Basic: "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
Image Segmentation", Badrinarayanan, Kendall & Cipolla, TPAMI 2017
(https://arxiv.org/abs/1511.00561).

SegNet: the 13 convolutions of VGG16-BN as encoder; every 2x2 max-pool keeps its argmax
indices; the decoder mirrors the encoder, unpooling at those indices (sparse maps,
:class:`~segkit.models.blocks.MaxUnpool`) followed by trainable 3x3 conv + BN + ReLU
layers. No feature maps cross from encoder to decoder, only the indices. The last decoder
conv maps 64 channels to the classes (the soft-max is in the loss).

SegNet-Basic (the paper's smaller variant for the analysis on CamVid): four encoders of a 7x7
conv with 64 channels + BN + ReLU + max-pool, four decoders of unpooling + 7x7 conv + BN (no
ReLU in the decoder, no conv biases, as in the paper), and a 1x1 classifier.

The input is zero-padded to a multiple of 32 (SegNet) or 16 (SegNet-Basic) so every pooling
window is complete, and the logits ``[B, C, H, W]`` are cropped back: any size works. The
paper's median-frequency class balancing belongs to the loss (class weights), not here.

``norm`` sets the decoder's norm (SegNet) or every norm (SegNet-Basic), batch norm as in the
paper by default; the VGG16-BN encoder keeps its batch norm. SegNet's ``encoder_weights`` is
torchvision's VGG16-BN ImageNet state dict (a local ``vgg16_bn-6c64b313.pth``, or
``IMAGENET1K_V1`` from the torch hub cache); SegNet-Basic has no pretrained part.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit.models.backbones import VGG16
from segkit.models.base import SegmentationModel
from segkit.models.blocks import MaxUnpool, conv_norm_act, norm_layer
from segkit.models.weights import no_pretrained_backbone

# Decoder stages, deepest first: output channels of each 3x3 conv (mirror of VGG16's stages).
DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))


class SegNet(SegmentationModel):
    """SegNet with a VGG16-BN encoder and an index-unpooling decoder.

    Args:
        num_classes: output channels ``C``.
        in_channels: input channels.
        norm: the decoder's norm (paper: ``"batch"``), see
            :func:`segkit.models.blocks.norm_layer`.
        norm_groups: GroupNorm's group count for ``norm="group"``.
        encoder_weights: torchvision's VGG16-BN ImageNet state dict (file or cached name) for
            the encoder; ``None``: random. Never downloaded.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        norm: str | None = "batch",
        norm_groups: int = 32,
        encoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        layer = norm_layer(norm, norm_groups)
        self.output_stride = 32
        self.encoder = VGG16(batch_norm=True, in_channels=in_channels)
        self.unpool = MaxUnpool()
        self.decoder = nn.ModuleList()
        channels = VGG16.out_channels[-1]
        for widths in DECODER:
            layers = []
            for width in widths:
                layers.append(conv_norm_act(channels, width, 3, layer))
                channels = width
            self.decoder.append(nn.Sequential(*layers))
        self.decoder[-1].append(nn.Conv2d(channels, num_classes, 3, padding=1))  # conv1_1_D
        if encoder_weights is not None:
            self.encoder.load_imagenet(encoder_weights)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Padded images ``[B, in_channels, H, W]`` -> logits ``[B, C, H, W]``."""
        pooled, indices = self.encoder.forward_with_indices(x)
        x = pooled[-1]  # [B,512,H/32,W/32]
        for stage, index in zip(self.decoder, reversed(indices), strict=True):
            x = stage(self.unpool(x, index))
        return x


class SegNetBasic(SegmentationModel):
    """SegNet-Basic: 4 encoders and 4 decoders of 7x7 convolutions with 64 channels.

    Args:
        num_classes: output channels ``C``.
        in_channels: input channels.
        norm: norm after every 7x7 conv (paper: ``"batch"``).
        norm_groups: GroupNorm's group count for ``norm="group"``.
        encoder_weights: must be ``None`` (no pretrained part).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        norm: str | None = "batch",
        norm_groups: int = 32,
        encoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        no_pretrained_backbone("SegNetBasic", encoder_weights)
        layer = norm_layer(norm, norm_groups)
        self.output_stride = 16  # four poolings
        # "down"/"up", not "encoder": the base class calls a module named encoder pretrained
        self.down = nn.ModuleList(
            conv_norm_act(in_channels if i == 0 else 64, 64, 7, layer) for i in range(4)
        )
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = MaxUnpool()
        self.up = nn.ModuleList(conv_norm_act(64, 64, 7, layer, activation=False) for _ in range(4))
        self.classifier = nn.Conv2d(64, num_classes, kernel_size=1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Padded images ``[B, in_channels, H, W]`` -> logits ``[B, C, H, W]``."""
        indices = []
        for block in self.down:
            x, index = self.pool(block(x))
            indices.append(index)
        for block, index in zip(self.up, reversed(indices), strict=True):
            x = block(self.unpool(x, index))  # [B,64,2h,2w]
        return self.classifier(x)
