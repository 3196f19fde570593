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
the input is zero-padded to a multiple of 32 (:class:`~segkit.models.base.SegmentationModel`)
and fc6 has padding 3, so every upsampling is exact and no crop offsets are needed (same
parameters). Any input size works; logits are ``[B, num_classes, H, W]`` at input size.

Weights (:mod:`segkit.models.weights`): ``encoder_weights`` initialises the backbone (VGG16
features with fc6/fc7, or the smp encoder): for ``vgg16`` torchvision's ImageNet VGG16 state
dict (a local file, or ``IMAGENET1K_V1`` from the torch hub cache; see
:func:`segkit.models.backbones.load_vgg16_weights`), for smp encoders the choices of
:mod:`segkit.models.encoder`. ``weights_path`` is a state dict of this model, loaded after the
build (:func:`segkit.models.weights.build_model`). Nothing is ever downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit.models.backbones import VGG16
from segkit.models.base import SegmentationModel
from segkit.models.encoder import build_encoder

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


class FCN(SegmentationModel):
    """Fully convolutional network with ``skip`` 32s, 16s or 8s.

    Args:
        num_classes: output channels ``C``.
        skip: ``"32s"`` (no skip), ``"16s"`` (pool4) or ``"8s"`` (pool4 and pool3).
        encoder_name: ``"vgg16"`` (the paper's, with fc6/fc7) or another smp encoder name.
        in_channels: input channels.
        encoder_weights: backbone initialisation (see the module docstring); ``None``: random.
        dropout: dropout probability after fc6 and fc7 (VGG16 only).
    """

    def __init__(
        self,
        num_classes: int,
        skip: str = "8s",
        encoder_name: str = "vgg16",
        in_channels: int = 3,
        encoder_weights: str | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if skip not in SKIPS:
            raise ValueError(f"model.skip must be one of {', '.join(SKIPS)}, got {skip!r}")
        self.skip = skip
        if encoder_name == "vgg16":
            self.encoder = VGG16(
                batch_norm=False,
                in_channels=in_channels,
                fc6=nn.Sequential(
                    nn.Conv2d(VGG16.out_channels[-1], 4096, kernel_size=7, padding=3),
                    nn.ReLU(inplace=True),
                    nn.Dropout(dropout),
                ),
                fc7=nn.Sequential(
                    nn.Conv2d(4096, 4096, kernel_size=1), nn.ReLU(inplace=True), nn.Dropout(dropout)
                ),
            )
            pool3, pool4 = VGG16.out_channels[2:4]
            head_channels = 4096
            if encoder_weights is not None:
                self.encoder.load_imagenet(encoder_weights)
        else:
            self.encoder = build_encoder(encoder_name, encoder_weights, in_channels)
            pool3, pool4, head_channels = self.encoder.out_channels[-3:]
        self.output_stride = getattr(self.encoder, "output_stride", 32)
        self.score_fr = nn.Conv2d(head_channels, num_classes, kernel_size=1)
        if skip in ("16s", "8s"):
            self.upscore2 = upsampling(num_classes, 2)
            self.score_pool4 = zero_score(pool4, num_classes)
        if skip == "8s":
            self.upscore_pool4 = upsampling(num_classes, 2)
            self.score_pool3 = zero_score(pool3, num_classes)
        self.upscore = upsampling(num_classes, int(skip[:-1]))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Padded images ``[B, in_channels, H, W]`` -> logits ``[B, C, H, W]``."""
        pool3, pool4, pool5 = self.encoder(x)[-3:]
        if isinstance(self.encoder, VGG16):
            pool5 = self.encoder.fc(pool5)  # [B,4096,H/32,W/32]
        score = self.score_fr(pool5)  # [B,C,H/32,W/32]
        if self.skip in ("16s", "8s"):
            score = self.upscore2(score) + self.score_pool4(pool4)  # [B,C,H/16,W/16]
        if self.skip == "8s":
            score = self.upscore_pool4(score) + self.score_pool3(pool3)  # [B,C,H/8,W/8]
        return self.upscore(score)
