"""DeconvNet: "Learning Deconvolution Network for Semantic Segmentation".

Noh, Hong & Han, ICCV 2015 (https://arxiv.org/abs/1505.04366). Encoder: the 13 convolutions
of VGG16 with batch norm after each, max-pools that keep their switches, and the classifier
as convolutions (fc6: 7x7 with 4096 channels, fc7: 1x1 with 4096). Decoder: the mirrored
"deconvolution network" - a 7x7 transposed conv back to 512 channels (deconv-fc6), then per
stage unpooling with the matching switches followed by 3x3 transposed convolutions with
batch norm and ReLU, and a 1x1 score layer. Batch norm follows every conv and transposed
conv, as in the paper.

Deviations: the paper works on 224x224 proposals, where fc6 (no padding) turns the 7x7 pool5
map into 1x1 and deconv-fc6 turns it back; here fc6 and deconv-fc6 have padding 3 (same
parameters), so whole images of any size go through: the input is zero-padded to a multiple
of 32 and the logits ``[B, C, H, W]`` cropped back. The paper's two-stage training and
proposal ensembling are training procedures, not part of the model.

With ``pretrained``, the encoder, fc6 and fc7 load from torchvision's VGG16-BN ImageNet state
dict (``vgg16_bn-6c64b313.pth``) in ``weights_path``; the paper started from VGG16 without
batch norm. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.backbones import VGG16, check_pretrained, load_vgg16_weights
from segkit.models.blocks import pad_to_multiple

# Deconvolution stages, deepest first: output channels of each 3x3 transposed conv.
DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64))


def conv_bn_relu(layer: nn.Conv2d | nn.ConvTranspose2d) -> nn.Sequential:
    """``layer`` followed by batch norm over its output channels and ReLU."""
    return nn.Sequential(layer, nn.BatchNorm2d(layer.out_channels), nn.ReLU(inplace=True))


def deconv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Stride-1 transposed conv (size-preserving) + BN + ReLU."""
    padding = kernel_size // 2
    return conv_bn_relu(nn.ConvTranspose2d(in_channels, out_channels, kernel_size, padding=padding))


class DeconvNet(nn.Module):
    """DeconvNet of Noh et al.

    Args:
        num_classes: output channels ``C`` (21 for PASCAL VOC in the paper).
        in_channels: input channels.
        pretrained: start encoder, fc6 and fc7 from the ImageNet weights in ``weights_path``.
        weights_path: local torchvision VGG16-BN state dict read when ``pretrained``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        check_pretrained(pretrained, weights_path, "DeconvNet")
        self.encoder = VGG16(batch_norm=True, in_channels=in_channels)
        self.fc6 = conv_bn_relu(nn.Conv2d(512, 4096, kernel_size=7, padding=3))
        self.fc7 = conv_bn_relu(nn.Conv2d(4096, 4096, kernel_size=1))
        self.deconv_fc6 = deconv(4096, 512, kernel_size=7)
        self.decoder = nn.ModuleList()
        channels = 512
        for widths in DECODER:
            layers = []
            for width in widths:
                layers.append(deconv(channels, width, kernel_size=3))
                channels = width
            self.decoder.append(nn.Sequential(*layers))
        self.score = nn.Conv2d(channels, num_classes, kernel_size=1)
        if pretrained:
            load_vgg16_weights(weights_path, self.encoder, fc6=self.fc6[0], fc7=self.fc7[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``[B, in_channels, H, W]`` to logits ``[B, C, H, W]``.

        Raises:
            ValueError: in training with one image no larger than 32x32, where the batch
                norm after fc6 would see a single value per channel.
        """
        height, width = x.shape[-2:]
        pooled, indices = self.encoder.forward_with_indices(pad_to_multiple(x, 32))
        x = pooled[-1]  # [B,512,H/32,W/32]
        if self.training and x[:, 0].numel() == 1:
            raise ValueError(
                f"DeconvNet: a training batch of one {height}x{width} image leaves one value "
                "per channel after fc6 and batch norm cannot train on it. Use a batch of "
                "at least 2 (data.batch_size) or images larger than 32 pixels on a side."
            )
        x = self.deconv_fc6(self.fc7(self.fc6(x)))  # [B,512,H/32,W/32]
        for stage, index in zip(self.decoder, reversed(indices), strict=True):
            x = stage(F.max_unpool2d(x, index, kernel_size=2, stride=2))
        return self.score(x)[..., :height, :width]
