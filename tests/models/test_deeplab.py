"""DeepLabV3/V3+: ASPP rate/stride pairing from the config, shapes, aux head, parameter counts."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet50
from torchvision.models.segmentation.deeplabv3 import ASPP

from segkit.models.deeplab import DeepLabV3, DeepLabV3Plus, rates_for
from segkit.models.weights import build_model

CONF = Path(__file__).resolve().parents[2] / "conf"


def aspp_rates(model: nn.Module) -> list[int]:
    aspp = next(m for m in model.modules() if isinstance(m, ASPP))
    return [b[0].dilation[0] for b in aspp.convs[1:-1]]


@pytest.mark.parametrize("config", ["deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize(("stride", "rates"), [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_config_pairs_rates_with_output_stride(config, stride, rates):
    # DeepLabV3 paper, Sec. 4.1: rates (6, 12, 18) at output stride 16, doubled at 8.
    with hydra.initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hydra.compose("train", [f"model={config}", f"model.output_stride={stride}"])
    with torch.device("meta"):  # structure only
        model = build_model(cfg.model)
    assert model.output_stride == stride
    assert aspp_rates(model) == rates


def test_missing_pairing_names_the_config_key():
    with pytest.raises(ValueError, match="model.atrous_rates"):
        rates_for({16: [6, 12, 18]}, 8)


@pytest.mark.parametrize("aux", [False, True])
def test_parameter_count_matches_torchvision_deeplabv3_resnet50(aux):
    # torchvision's deeplabv3_resnet50 (21 classes) is the independent reference: 39.6M
    # (42.0M with its auxiliary FCN head); same ASPP, head and dilated ResNet-50.
    with torch.device("meta"):
        ours = DeepLabV3(num_classes=21, aux_head=aux)
        reference = deeplabv3_resnet50(
            num_classes=21, weights=None, weights_backbone=None, aux_loss=aux
        )
    count = sum(p.numel() for p in ours.parameters())
    expected = sum(p.numel() for p in reference.parameters())
    assert count == pytest.approx(expected, rel=0.02)
    assert count == pytest.approx(42.0e6 if aux else 39.6e6, rel=0.02)


@pytest.mark.parametrize("cls", [DeepLabV3, DeepLabV3Plus])
def test_forward_backward_any_size(cls):
    torch.manual_seed(0)
    model = cls(num_classes=3, encoder_name="resnet18", aux_head=True)
    x = torch.randn(2, 3, 25, 39)  # not a multiple of 16
    output = model.train()(x)
    assert output["out"].shape == (2, 3, 25, 39)
    assert output["aux"].shape == (2, 3, 25, 39)  # upsampled to the input size too
    (output["out"].sum() + output["aux"].sum()).backward()
    assert all(p.grad is not None for p in model.head.parameters())
    with torch.no_grad():
        assert model.eval()(x[:1]).shape == (1, 3, 25, 39)  # eval: logits only, batch 1
    with pytest.raises(ValueError, match="batch_size>=2"):
        model.train()(x[:1])


def test_v3plus_decoder_uses_stride_4_features():
    model = DeepLabV3Plus(num_classes=3, encoder_name="resnet18").eval()
    seen = {}
    model.head.low.register_forward_hook(lambda m, i, o: seen.update(low=o.shape))
    model.head.refine.register_forward_hook(lambda m, i, o: seen.update(logits=o.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    assert seen["low"] == (1, 48, 16, 24)  # 48 channels at 1/4 (paper Table 1)
    assert seen["logits"] == (1, 3, 16, 24)


def test_aspp_is_torchvisions_with_the_tf_reference_dropout():
    # same modules as torchvision's deeplabv3_resnet50 head; dropout 0.1 instead of 0.5
    with torch.device("meta"):
        ours = DeepLabV3(num_classes=21)
        reference = deeplabv3_resnet50(num_classes=21, weights=None, weights_backbone=None)
    shapes = [tuple(p.shape) for p in ours.head.parameters()]
    assert shapes == [tuple(p.shape) for p in reference.classifier.parameters()]
    dropouts = [m.p for m in ours.head.modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [0.1]


def test_group_norm_replaces_every_head_batch_norm():
    with torch.device("meta"):
        model = DeepLabV3Plus(num_classes=3, encoder_name="resnet18", aux_head=True,
                              norm="group", norm_groups=16)  # fmt: skip
    for part in (model.head, model.aux):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in part.modules())
    groups = [m for m in model.head.modules() if isinstance(m, nn.GroupNorm)]
    assert len(groups) == 5 + 1 + 1 + 2  # ASPP branches + projection, low, refine x2
    assert all(m.num_groups == 16 for m in groups)


@pytest.mark.parametrize(
    ("encoder_name", "cause"),
    [
        ("vgg11", "do not support dilated mode"),  # smp's VGG strides with max-pooling
        ("resnet_50", "Wrong encoder name"),
        ("tu-no_such_net", "Unknown model"),
    ],
)
def test_unusable_encoder_names_the_key_and_working_encoders(encoder_name, cause):
    with pytest.raises(ValueError, match=cause) as raised:
        DeepLabV3(num_classes=3, encoder_name=encoder_name)
    message = str(raised.value)
    assert f"model.encoder_name={encoder_name}" in message
    assert "tu-tf_efficientnet_lite0" in message and "resnet50" in message
    assert len(message) < 600  # not smp's list of 150 names
