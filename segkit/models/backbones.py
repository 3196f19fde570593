"""VGG16 / VGG16-BN convolutions as a five-stage feature extractor, and their ImageNet weights.

The layers come from torchvision's ``vgg16``/``vgg16_bn`` constructors (``weights=None``,
initialised as torchvision does), so ``features.*`` keys are torchvision's and its ImageNet
state dicts load unchanged. Max-pools
return their indices for the encoder-decoder models (SegNet, DeconvNet).

Pretrained weights are never downloaded: ``pretrained=True`` needs ``weights_path``, a local
torchvision state dict (``vgg16-397923af.pth`` for VGG16, ``vgg16_bn-6c64b313.pth`` for
VGG16-BN). Its ``classifier.0``/``classifier.3`` (fc6/fc7) are reshaped into the
convolutionalised fc6 (7x7) and fc7 (1x1) layers when the model has them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from segkit.models.weights import WeightsError, read_state_dict


def check_pretrained(pretrained: bool, weights_path: str | Path | None, model: str) -> None:
    """Fail at once when ``pretrained`` and ``weights_path`` disagree.

    Raises:
        WeightsError: ``pretrained=True`` without a local file (this machine is offline).
        ValueError: a ``weights_path`` that would be ignored because ``pretrained=False``.
    """
    if pretrained and weights_path is None:
        raise WeightsError(
            f"{model}: model.pretrained=true needs local ImageNet weights and segkit never "
            "downloads. Set model.weights_path=/path/to/<torchvision state dict>.pth, or "
            "model.pretrained=false to train from scratch."
        )
    if not pretrained and weights_path is not None:
        raise ValueError(
            f"{model}: model.weights_path={weights_path} is only read with "
            "model.pretrained=true; set model.pretrained=true to load it, or "
            "model.weights_path=null."
        )


class VGG16(nn.Module):
    """The 13 convolutions of VGG16 (Simonyan & Zisserman, 2015) in five pooling stages.

    Args:
        batch_norm: VGG16-BN (batch norm after every conv) instead of VGG16.
        in_channels: input channels (3 for RGB; other values replace ``features.0``).

    Attributes:
        features: torchvision's ``features`` ``nn.Sequential`` (max-pools return indices).
        out_channels: channels after each stage, ``(64, 128, 256, 512, 512)``.
    """

    out_channels = (64, 128, 256, 512, 512)

    def __init__(self, batch_norm: bool = False, in_channels: int = 3) -> None:
        super().__init__()
        build = torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16
        # Built on "meta" and then allocated: torchvision's constructor also initialises the
        # 123M-parameter ImageNet classifier, which would be thrown away (seconds on a CPU).
        with torch.device("meta"):
            features = build(weights=None).features
        self.features = features.to_empty(device=torch.get_default_device())
        for layer in self.features:  # torchvision's VGG initialisation
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
            elif isinstance(layer, nn.BatchNorm2d):
                layer.reset_parameters()
        if in_channels != 3:
            self.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
        for i, layer in enumerate(self.features):
            if isinstance(layer, nn.MaxPool2d):
                self.features[i] = nn.MaxPool2d(2, stride=2, return_indices=True)

    def forward_with_indices(
        self, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the five stages and keep every max-pool's switches.

        Args:
            x: ``[B, in_channels, H, W]`` with ``H`` and ``W`` divisible by 32.

        Returns:
            ``(pooled, indices)``: ``pooled[k]`` is ``[B, out_channels[k], H/2^(k+1),
            W/2^(k+1)]`` (pool1..pool5), ``indices[k]`` the int64 argmax positions of the same
            shape, as :func:`torch.nn.functional.max_unpool2d` takes them.
        """
        pooled, indices = [], []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                x, index = layer(x)
                pooled.append(x)
                indices.append(index)
            else:
                x = layer(x)
        return pooled, indices

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pool1..pool5 outputs ``[B, out_channels[k], H/2^(k+1), W/2^(k+1)]``, k = 0..4."""
        return self.forward_with_indices(x)[0]


def load_vgg16_weights(
    path: str | Path,
    backbone: VGG16,
    fc6: nn.Conv2d | None = None,
    fc7: nn.Conv2d | None = None,
) -> None:
    """Fill ``backbone`` (and convolutionalised ``fc6``/``fc7``) from a torchvision state dict.

    ``classifier.0`` (``Linear(512*7*7, 4096)``) becomes the 7x7 conv ``fc6`` and
    ``classifier.3`` (``Linear(4096, 4096)``) the 1x1 conv ``fc7``: a Linear on the flattened
    ``[512, 7, 7]`` map is exactly a 7x7 convolution. ``classifier.6`` (the 1000 ImageNet
    classes) is not used.

    Raises:
        WeightsError: the file is missing, or a needed key is absent or has the wrong shape.
    """
    state = read_state_dict(path)
    targets = {f"features.{k}": t for k, t in backbone.features.state_dict(keep_vars=True).items()}
    for name, conv in (("classifier.0", fc6), ("classifier.3", fc7)):
        if conv is not None:
            targets[f"{name}.weight"] = conv.weight
            targets[f"{name}.bias"] = conv.bias
    missing = [k for k in targets if k not in state]
    # fc weights are reshaped (Linear -> conv), so only their sizes must agree
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(t.shape)}"
        for k, t in targets.items()
        if k in state
        and (
            state[k].numel() != t.numel()
            if k.startswith("classifier")
            else state[k].shape != t.shape
        )
    ]
    if missing or wrong:
        kind = (
            "VGG16-BN" if any(isinstance(m, nn.BatchNorm2d) for m in backbone.features) else "VGG16"
        )
        raise WeightsError(
            f"{path} is not a torchvision {kind} state dict "
            f"for this model: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(wrong)} shape mismatches (e.g. {wrong[:3]})."
        )
    with torch.no_grad():
        for key, tensor in targets.items():
            tensor.copy_(state[key].reshape(tensor.shape))
