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

``norm`` (batch norm by default, as the paper) follows fc6, fc7 and every transposed conv;
the VGG16-BN encoder keeps its batch norm. With ``encoder_weights`` the encoder, fc6 and fc7
load from torchvision's VGG16-BN ImageNet state dict (a local ``vgg16_bn-6c64b313.pth``, or
``IMAGENET1K_V1`` from the torch hub cache); the paper started from VGG16 without batch
norm. ``weights_path`` is a state dict of this model. Nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit.models.backbones import VGG16
from segkit.models.base import SegmentationModel
from segkit.models.blocks import MaxUnpool, conv_norm_act, norm_layer

# Deconvolution stages, deepest first: output channels of each 3x3 transposed conv.
DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64))


class DeconvNet(SegmentationModel):
    """DeconvNet of Noh et al.

    Args:
        num_classes: output channels ``C`` (21 for PASCAL VOC in the paper).
        in_channels: input channels.
        norm: norm after fc6, fc7 and every transposed conv (paper: ``"batch"``), see
            :func:`segkit.models.blocks.norm_layer`.
        norm_groups: GroupNorm's group count for ``norm="group"``.
        encoder_weights: torchvision's VGG16-BN ImageNet state dict (file or cached name) for
            the encoder with fc6 and fc7; ``None``: random. Never downloaded.
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
        self.norm = norm
        self.output_stride = 32
        # fc6/fc7 keep their biases: they come from the ImageNet classifier.
        self.encoder = VGG16(
            batch_norm=True,
            in_channels=in_channels,
            fc6=conv_norm_act(512, 4096, 7, layer, bias=True),
            fc7=conv_norm_act(4096, 4096, 1, layer, bias=True),
        )
        self.deconv_fc6 = conv_norm_act(4096, 512, 7, layer, transposed=True)
        self.unpool = MaxUnpool()
        self.decoder = nn.ModuleList()
        channels = 512
        for widths in DECODER:
            layers = []
            for width in widths:
                layers.append(conv_norm_act(channels, width, 3, layer, transposed=True))
                channels = width
            self.decoder.append(nn.Sequential(*layers))
        self.score = nn.Conv2d(channels, num_classes, kernel_size=1)
        if encoder_weights is not None:
            self.encoder.load_imagenet(encoder_weights)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Padded images ``[B, in_channels, H, W]`` -> logits ``[B, C, H, W]``.

        Raises:
            ValueError: with ``norm="batch"``, in training with one image no larger than
                32x32, where the batch norm after fc6 would see a single value per channel.
        """
        height, width = x.shape[-2:]
        pooled, indices = self.encoder.forward_with_indices(x)
        x = pooled[-1]  # [B,512,H/32,W/32]
        if self.training and self.norm == "batch" and x[:, 0].numel() == 1:
            raise ValueError(
                f"DeconvNet: a training batch of one {height}x{width} image leaves one value "
                "per channel after fc6 and batch norm cannot train on it. Use a batch of "
                "at least 2 (data.batch_size), images larger than 32 pixels on a side, or "
                "model.norm=group."
            )
        x = self.deconv_fc6(self.encoder.fc(x))  # [B,512,H/32,W/32]
        for stage, index in zip(self.decoder, reversed(indices), strict=True):
            x = stage(self.unpool(x, index))
        return self.score(x)
