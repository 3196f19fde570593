"""Any segmentation-models-pytorch architecture, with segkit's argument names and offline rules.

``arch`` is an smp architecture name (``Unet``, ``FPN``, ``DeepLabV3Plus``, ...);
``encoder_name`` any smp encoder (``resnet18``, ``tu-<timm name>``, ...). smp models need
input sides divisible by the encoder's output stride (32 for most); :class:`SMPModel` is a
:class:`~segkit.models.base.SegmentationModel`, so it pads any input to that multiple and
crops the logits back. Its state-dict keys are smp's under ``model.`` (``model.encoder.*``);
a state dict of the bare smp model (``encoder.*``) loads as well.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from segkit.config import ConfigError
from segkit.models.base import SegmentationModel
from segkit.models.blocks import check_batch_for_pooled_batch_norm
from segkit.models.encoder import hub_weights, init_encoder
from segkit.models.weights import encoder_weights_errors


def has_pooled_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` pools to 1x1 somewhere and has batch norm layers."""
    pools = any(
        isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))
        for m in module.modules()
    )
    return pools and any(isinstance(m, nn.BatchNorm2d) for m in module.modules())


class SMPModel(SegmentationModel):
    """An smp model under segkit's model contract (padding, ``backbone`` = its encoder).

    Args:
        model: an smp model (``encoder``, ``decoder``, ``segmentation_head``).
    """

    def __init__(self, model: smp.base.SegmentationModel) -> None:
        super().__init__()
        self.model = model
        self.output_stride = model.encoder.output_stride
        # decoders with image-level pooling before a batch norm (UPerNet's and PSPNet's
        # pyramid, DeepLab's ASPP) cannot train on a batch of one: say so clearly
        self.pooled_batch_norm = has_pooled_batch_norm(model.decoder)

    @property
    def backbone(self) -> nn.Module:
        """The smp encoder."""
        return self.model.encoder

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Padded images ``[B, in_channels, H, W]`` -> logits ``[B, C, H, W]``."""
        if self.pooled_batch_norm:
            where = f"smp {type(self.model).__name__}'s image-level pooling"
            check_batch_for_pooled_batch_norm(x, self.training, where)
        return self.model(x)


# smp.create_model arguments that are not the decoder's (segkit sets or names them itself)
NOT_DECODER = (
    "encoder_name",
    "encoder_depth",
    "encoder_weights",
    "encoder_output_stride",
    "in_channels",
    "classes",
    "activation",
    "aux_params",
    "upsampling",
    "kwargs",
)


def decoder_arguments(arch: str) -> list[str]:
    """The decoder arguments of smp's ``arch`` (its constructor's, less :data:`NOT_DECODER`)."""
    model_class = smp.MODEL_ARCHITECTURES_MAPPING[arch.lower()]
    parameters = inspect.signature(model_class.__init__).parameters
    return [name for name in parameters if name not in ("self", *NOT_DECODER)]


def check_decoder(arch: str, decoder: Mapping[str, Any]) -> None:
    """Stop on a ``model.decoder`` key that smp's ``arch`` does not take.

    Raises:
        ConfigError: naming the key and the architecture's decoder arguments.
    """
    valid = decoder_arguments(arch)
    unknown = [key for key in decoder if key not in valid]
    if unknown:
        raise ConfigError(
            f"model.decoder.{unknown[0]} is no decoder argument of smp {arch}; its decoder "
            f"arguments are {', '.join(f'model.decoder.{k}' for k in valid)}."
        )


def smp_model(
    arch: str,
    num_classes: int,
    encoder_name: str = "resnet18",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    decoder: Mapping[str, Any] | None = None,
) -> SMPModel:
    """Build an smp model.

    Args:
        arch: smp architecture name, e.g. ``"Unet"``.
        num_classes: output channels ``C``.
        encoder_name: smp encoder name.
        encoder_weights: encoder initialisation: ``None``, ``"efficientnet-lite0/1/2"``
            (offline, with ``encoder_name=tu-tf_efficientnet_lite0/1/2``), a local encoder
            state dict, or an smp Hub name (``"imagenet"``; network or cache), see
            :mod:`segkit.models.encoder`.
        in_channels: input channels.
        decoder: smp's decoder arguments of ``arch``, by smp's names (FPN:
            ``decoder_pyramid_channels``, ``decoder_segmentation_channels``; Unet:
            ``decoder_channels``; ...), e.g. the decoder widths; ``None``: smp's defaults.

    Returns:
        the smp model wrapped in :class:`SMPModel`.
    """
    decoder = dict(decoder or {})
    check_decoder(arch, decoder)
    hub = hub_weights(encoder_name, encoder_weights)
    with encoder_weights_errors(encoder_name, None if hub is None else encoder_weights):
        net = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=hub,
            in_channels=in_channels,
            classes=num_classes,
            **decoder,
        )
    init_encoder(net.encoder, encoder_name, encoder_weights)
    return SMPModel(net)
