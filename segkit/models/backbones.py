"""VGG16 / VGG16-BN convolutions as a five-stage feature extractor, and their ImageNet weights.

The layers come from torchvision's ``vgg16``/``vgg16_bn`` constructors (``weights=None``,
initialised as torchvision does), so ``features.*`` keys are torchvision's and its ImageNet
state dicts load unchanged. Max-pools return their indices for the encoder-decoder models
(SegNet, DeconvNet). FCN and DeconvNet add the convolutionalised classifier (``fc6``,
``fc7``) to the same module: it comes from the same ImageNet file, so the whole pretrained
part is one ``encoder``.

ImageNet weights are never downloaded: ``encoder_weights`` is a local torchvision state dict
(``vgg16-397923af.pth`` for VGG16, ``vgg16_bn-6c64b313.pth`` for VGG16-BN) or a torchvision
weights name (``IMAGENET1K_V1``) whose file is already in the torch hub cache. Its
``classifier.0``/``classifier.3`` (fc6/fc7) are reshaped into the 7x7 and 1x1 convolutions
when the model has them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from segkit.models.weights import WeightsError, read_state_dict, torchvision_weights_file


class VGG16(nn.Module):
    """The 13 convolutions of VGG16 (Simonyan & Zisserman, 2015) in five pooling stages.

    Args:
        batch_norm: VGG16-BN (batch norm after every conv) instead of VGG16.
        in_channels: input channels (3 for RGB; other values replace ``features.0``).
        fc6: the convolutionalised ``classifier.0`` (a module whose first layer is a
            ``Conv2d(512, 4096, 7)``), or ``None``.
        fc7: the convolutionalised ``classifier.3`` (first layer ``Conv2d(4096, 4096, 1)``),
            or ``None``.

    Attributes:
        features: torchvision's ``features`` ``nn.Sequential`` (max-pools return indices).
        out_channels: channels after each stage, ``(64, 128, 256, 512, 512)``.
    """

    out_channels = (64, 128, 256, 512, 512)

    def __init__(
        self,
        batch_norm: bool = False,
        in_channels: int = 3,
        fc6: nn.Module | None = None,
        fc7: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.builder = "vgg16_bn" if batch_norm else "vgg16"
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
        self.fc6 = fc6
        self.fc7 = fc7

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

    def fc(self, pool5: torch.Tensor) -> torch.Tensor:
        """fc6 then fc7 on ``pool5 [B, 512, h, w]`` -> ``[B, 4096, h, w]``."""
        return self.fc7(self.fc6(pool5))

    def load_imagenet(self, encoder_weights: str | Path) -> None:
        """Load ``encoder_weights`` (a file or a cached torchvision name, see the module
        docstring) into the features and fc6/fc7 (:func:`load_vgg16_weights`)."""
        load_vgg16_weights(torchvision_weights_file(str(encoder_weights), self.builder), self)


def _first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def load_vgg16_weights(path: str | Path, backbone: VGG16) -> None:
    """Fill ``backbone`` (features, and fc6/fc7 when it has them) from a torchvision state dict.

    ``classifier.0`` (``Linear(512*7*7, 4096)``) becomes the 7x7 conv of ``fc6`` and
    ``classifier.3`` (``Linear(4096, 4096)``) the 1x1 conv of ``fc7``: a Linear on the
    flattened ``[512, 7, 7]`` map is exactly a 7x7 convolution. ``classifier.6`` (the 1000
    ImageNet classes) is not used. With ``in_channels != 3`` the RGB kernel of ``features.0``
    is adapted by timm's ``adapt_input_conv`` (summed for 1 channel, repeated and rescaled
    otherwise).

    Raises:
        WeightsError: the file is missing, or a needed key is absent or has the wrong shape.
    """
    from timm.models import adapt_input_conv

    state = read_state_dict(path, key="model.encoder_weights")
    targets = {f"features.{k}": t for k, t in backbone.features.state_dict(keep_vars=True).items()}
    for name, block in (("classifier.0", backbone.fc6), ("classifier.3", backbone.fc7)):
        if block is not None:
            conv = _first_conv(block)
            targets[f"{name}.weight"] = conv.weight
            targets[f"{name}.bias"] = conv.bias
    first = backbone.features[0].weight
    if "features.0.weight" in state and first.shape[1] != 3:
        state["features.0.weight"] = adapt_input_conv(first.shape[1], state["features.0.weight"])
    missing = [k for k, t in targets.items() if t is not None and k not in state]
    # fc weights are reshaped (Linear -> conv), so only their sizes must agree
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(t.shape)}"
        for k, t in targets.items()
        if t is not None
        and k in state
        and (
            state[k].numel() != t.numel()
            if k.startswith("classifier")
            else state[k].shape != t.shape
        )
    ]
    if missing or wrong:
        kind = "VGG16-BN" if backbone.builder == "vgg16_bn" else "VGG16"
        raise WeightsError(
            f"model.encoder_weights={path} is not a torchvision {kind} state dict "
            f"for this model: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(wrong)} shape mismatches (e.g. {wrong[:3]}). Give torchvision's "
            f"{backbone.builder} ImageNet state dict, or set model.encoder_weights=null."
        )
    with torch.no_grad():
        for key, tensor in targets.items():
            if tensor is not None:
                tensor.copy_(state[key].reshape(tensor.shape))
