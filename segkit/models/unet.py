"""Classic U-Net: "U-Net: Convolutional Networks for Biomedical Image Segmentation".

Ronneberger, Fischer & Brox, MICCAI 2015 (https://arxiv.org/abs/1505.04597). A contracting
path of double 3x3 convolutions (64-128-256-512-1024 channels) with 2x2 max-pools, an
expanding path of 2x2 transposed convolutions that halve the channels, concatenation with
the contracting path's features, double 3x3 convolutions, and a 1x1 classifier.

Deviations: convolutions are padded (the paper's are unpadded, 572 -> 388 pixels), so the
skips need no cropping and the output has the input size; the input is zero-padded to a
multiple of 16 (four poolings) and the logits cropped back, so any size works. A norm
after every 3x3 convolution is optional (``norm``: ``batch``, ``group`` or ``frozen_batch``;
``None`` as in the paper, which predates batch norm). The paper's dropout at the end of the
contracting path (data augmentation) is left out. Weights are initialised as the paper's
Sec. 3 says (:func:`paper_init`: Gaussian with standard deviation sqrt(2/N), N the inputs
of one output unit), not with PyTorch's default, under which this 23-layer network without
norm layers barely trained in 300 steps on ISBI 2012. Nothing is pretrained
(``encoder_weights`` must be ``None``); ``weights_path`` loads a state dict of this model.

Encoder-based U-Nets live under their own configs (``model=unet_r18``, segmentation-models-
pytorch).
"""

from __future__ import annotations

import torch
from torch import nn

from segkit.models.base import SegmentationModel
from segkit.models.blocks import NormLayer, conv_norm_act, norm_layer
from segkit.models.weights import no_pretrained_backbone

WIDTHS = (64, 128, 256, 512, 1024)


def double_conv(in_channels: int, out_channels: int, norm: NormLayer | None) -> nn.Sequential:
    """Two padded 3x3 conv + [norm] + ReLU layers: ``[B, in, H, W] -> [B, out, H, W]``."""
    return nn.Sequential(
        conv_norm_act(in_channels, out_channels, 3, norm),
        conv_norm_act(out_channels, out_channels, 3, norm),
    )


def paper_init(module: nn.Module) -> None:
    """Every convolution of ``module``: weights ~ N(0, 2/N), biases 0 (paper, Sec. 3).

    N counts the inputs of one output unit: ``in_channels / groups x kh x kw`` for a
    convolution; ``in_channels`` for a transposed convolution whose stride equals its
    kernel (each output pixel sees one kernel position), as the up-convolutions here.
    """
    for layer in module.modules():
        if isinstance(layer, nn.ConvTranspose2d):
            kh, kw = layer.kernel_size
            overlap = max(1, (kh // layer.stride[0]) * (kw // layer.stride[1]))
            fan_in = layer.in_channels // layer.groups * overlap
        elif isinstance(layer, nn.Conv2d):
            fan_in = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            continue
        nn.init.normal_(layer.weight, std=(2.0 / fan_in) ** 0.5)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


class UNet(SegmentationModel):
    """The U-Net of Ronneberger et al. with padded convolutions.

    Args:
        num_classes: output channels ``C`` (2 in the paper).
        in_channels: input channels (1 in the paper's microscopy data).
        norm: norm after every 3x3 convolution (``None``: none, as the paper; convolutions
            have a bias only then), see :func:`segkit.models.blocks.norm_layer`.
        norm_groups: GroupNorm's group count for ``norm="group"``.
        encoder_weights: must be ``None`` (no pretrained backbone).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        norm: str | None = None,
        norm_groups: int = 32,
        encoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        no_pretrained_backbone("UNet", encoder_weights)
        layer = norm_layer(norm, norm_groups)
        self.output_stride = 2 ** (len(WIDTHS) - 1)  # four poolings
        self.down = nn.ModuleList()
        for width in WIDTHS:
            self.down.append(double_conv(in_channels, width, layer))
            in_channels = width
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for width in reversed(WIDTHS[:-1]):
            self.up.append(nn.ConvTranspose2d(2 * width, width, kernel_size=2, stride=2))
            self.up_conv.append(double_conv(2 * width, width, layer))
        self.head = nn.Conv2d(WIDTHS[0], num_classes, kernel_size=1)
        paper_init(self)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Padded images ``[B, in_channels, H, W]`` -> logits ``[B, C, H, W]``."""
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)  # [B,64*2^i,H/2^i,W/2^i]
        x = skips.pop()  # [B,1024,H/16,W/16]
        for up, conv in zip(self.up, self.up_conv, strict=True):
            x = conv(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
