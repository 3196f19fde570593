"""One shared test for every conf/model/*.yaml (found by glob, so new configs are covered).

Each model, built from its config with a few classes: logits ``[B, C, H, W]`` at an input
size that is not a multiple of 2 (models pad inside), in eval mode for a batch of 2 and in
train mode for a batch of 1, and a backward pass that reaches every parameter; with 3 input
channels, and with 1 and 4 (on a smaller input: the VGG models are huge), each config with
its small encoder where it has one (DeconvNet and the VGG16 FCN-8s at full size, slow). The
backbone / head split of :class:`segkit.models.base.SegmentationModel` is checked against
independently built references (torchvision's VGG16 and MobileNetV3, smp's encoders).
"""

from __future__ import annotations

import hydra
import pytest
import segmentation_models_pytorch as smp
import torch
import torchvision
from torch import nn

from segkit.models.base import SegmentationModel
from segkit.models.weights import build_model
from segkit.tasks.semantic import split_outputs

from ..helpers import HEAVY, MODELS, PROJECT_ROOT, SMALL

CONF = PROJECT_ROOT / "conf"
NUM_CLASSES = 3
SIZES = {3: (97, 131), 1: (37, 45), 4: (37, 45)}  # odd sides: every model has to pad


def build(name: str, *overrides: str) -> nn.Module:
    """Instantiate conf/model/<name>.yaml as train.py would, with NUM_CLASSES classes."""
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra.compose(
            "train", overrides=[f"model={name}", f"data.num_classes={NUM_CLASSES}", *overrides]
        )
    return build_model(cfg.model)


# Each config with its small encoder where it has one (the backbone split below checks the
# full-size structure on the meta device); the 252M-parameter DeconvNet and the paper's
# VGG16 FCN-8s run full size in the slow tier.
CONTRACT_CASES = [
    pytest.param(name, SMALL.get(name, []), id=name, marks=[pytest.mark.slow] * (name in HEAVY))
    for name in MODELS
] + [pytest.param("fcn8s", [], id="fcn8s-vgg16", marks=pytest.mark.slow)]


@pytest.mark.parametrize("in_channels", [3, 1, 4])
@pytest.mark.parametrize(("name", "small"), CONTRACT_CASES)
def test_model_contract(name, small, in_channels):
    torch.manual_seed(0)
    model = build(name, f"model.in_channels={in_channels}", *small)
    assert isinstance(model, SegmentationModel)
    height, width = SIZES[in_channels]
    images = torch.randn(2, in_channels, height, width)

    model.eval()
    with torch.no_grad():
        output = model(images)
    assert isinstance(output, torch.Tensor)  # eval mode: logits only, no aux
    assert output.shape == (2, NUM_CLASSES, height, width)
    assert torch.isfinite(output).all()

    model.train()
    try:
        batch = images[:1]
        output = model(batch)
    except ValueError as error:  # allowed only as a clear message about the batch size
        assert "batch" in str(error), f"unclear error for a batch of 1: {error}"
        batch = images
        output = model(batch)
    logits, aux = split_outputs(output)
    assert logits.shape == (len(batch), NUM_CLASSES, height, width)
    if aux is not None:
        assert aux.shape == logits.shape  # the base class upsamples aux as well
    loss = logits.square().mean() + (0 if aux is None else aux.square().mean())
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters unused in forward: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def count(parameters) -> int:
    return sum(p.numel() for p in parameters)


def vgg16_without_classes(batch_norm: bool) -> int:
    """torchvision's VGG16(-BN) parameters minus the 1000-class layer: features + fc6/fc7."""
    build_vgg = torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16
    vgg = build_vgg(weights=None)
    return count(vgg.parameters()) - count(vgg.classifier[6].parameters())


BACKBONES = {  # independent reference: parameters of the pretrained part
    "deconvnet": lambda: vgg16_without_classes(True) + 2 * 2 * 4096,  # + BN after fc6, fc7
    "deeplabv3": lambda: count(smp.encoders.get_encoder("resnet50").parameters()),
    "deeplabv3plus": lambda: count(smp.encoders.get_encoder("resnet50").parameters()),
    "fcn16s": lambda: vgg16_without_classes(False),
    "fcn32s": lambda: vgg16_without_classes(False),
    "fcn8s": lambda: vgg16_without_classes(False),
    "lraspp": lambda: count(torchvision.models.mobilenet_v3_large().features.parameters()),
    "pspnet": lambda: count(smp.encoders.get_encoder("resnet50").parameters()),
    "segnet": lambda: count(torchvision.models.vgg16_bn().features.parameters()),
    "segnet_basic": lambda: 0,
    "smp": lambda: count(smp.encoders.get_encoder("resnet34").parameters()),
    "unet": lambda: 0,
    "unet_r18": lambda: count(smp.encoders.get_encoder("resnet18").parameters()),
}
LITE0 = "tu-tf_efficientnet_lite0"
for _name in ("deeplabv3", "deeplabv3plus", "fcn8s", "lraspp", "pspnet", "unet"):
    BACKBONES[f"{_name}_lite0"] = lambda: count(smp.encoders.get_encoder(LITE0).parameters())
for _name in ("fpn", "segformer", "upernet"):
    BACKBONES[_name] = lambda: count(smp.encoders.get_encoder(LITE0).parameters())


@pytest.mark.parametrize("name", MODELS)
def test_backbone_and_head_split_the_parameters(name):
    with torch.device("meta"):  # structure only
        model = build(name)
        expected = BACKBONES[name]()
    backbone = model.backbone_parameters()
    head = model.head_parameters()
    assert count(backbone) == expected
    assert model.backbone is None if expected == 0 else isinstance(model.backbone, nn.Module)
    ids = [id(p) for p in backbone + head]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # disjoint, complete
    # a property, not a submodule: the backbone's tensors appear once in the state dict
    assert len(model.state_dict()) == len(dict(model.named_parameters())) + len(
        dict(model.named_buffers())
    )
    assert isinstance(model.output_stride, int)
