"""FCN: paper parameter count, bilinear initialisation, skip topology, VGG16 weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from segkit.models.backbones import VGG16, load_vgg16_weights
from segkit.models.fcn import FCN
from segkit.models.weights import WeightsError


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_fcn8s_vgg16_has_the_papers_parameter_count():
    # Long, Shelhamer & Darrell, CVPR 2015, Table 1: FCN-VGG16 has 134M parameters (21 classes)
    with torch.device("meta"):
        model = FCN(num_classes=21, skip="8s")
    assert count(model) == pytest.approx(134e6, rel=0.02)


@pytest.mark.parametrize(
    ("skip", "factor", "skips"),
    [("32s", 32, set()), ("16s", 16, {"score_pool4"}), ("8s", 8, {"score_pool4", "score_pool3"})],
)
def test_skip_variants_fuse_the_papers_layers(skip, factor, skips):
    with torch.device("meta"):
        model = FCN(num_classes=21, skip=skip)
    names = {n for n, _ in model.named_children()}
    assert {n for n in names if n.startswith("score_pool")} == skips
    # final upsampling: kernel 2f, stride f (e.g. 64x64 stride 32 for FCN-32s)
    assert model.upscore.kernel_size == (2 * factor, 2 * factor)
    assert model.upscore.stride == (factor, factor)


def test_upsampling_is_initialised_to_bilinear():
    torch.manual_seed(0)
    model = FCN(num_classes=4, skip="8s", encoder_name="resnet18")  # same head, light encoder
    scores = torch.randn(2, 4, 5, 7)
    for layer, factor in ((model.upscore2, 2), (model.upscore_pool4, 2), (model.upscore, 8)):
        got = layer(scores)
        # a transposed conv sees zeros outside the map; F.interpolate repeats the border, so
        # compare with interpolation of the map zero-extended by one pixel, cropped back
        padded = F.pad(scores, (1, 1, 1, 1))
        expected = F.interpolate(padded, scale_factor=factor, mode="bilinear", align_corners=False)
        expected = expected[..., factor:-factor, factor:-factor]
        assert got.shape == (2, 4, 5 * factor, 7 * factor)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        # and equal to plain bilinear interpolation away from the border
        plain = F.interpolate(scores, scale_factor=factor, mode="bilinear", align_corners=False)
        inner = slice(factor, -factor)
        torch.testing.assert_close(got[..., inner, inner], plain[..., inner, inner])


def test_skip_scores_start_at_zero_so_fcn8s_starts_as_upsampled_fcn32s():
    torch.manual_seed(0)
    model = FCN(num_classes=3, skip="8s", encoder_name="resnet18").eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        pool5 = model.encoder(images)[-1]
        coarse = model.score_fr(pool5)  # [1,3,2,3]; smp encoders have no fc6/fc7
        expected = model.upscore(model.upscore_pool4(model.upscore2(coarse)))
        torch.testing.assert_close(model(images), expected)
        model.score_pool3.weight.fill_(0.1)  # once trained, pool3 changes the output
        assert not torch.allclose(model(images), expected)


def test_missing_imagenet_file_fails_at_once_with_the_fix(tmp_path):
    missing = tmp_path / "vgg16-397923af.pth"
    with pytest.raises(WeightsError, match=rf"{missing} does not exist.*encoder_weights=null"):
        FCN(num_classes=21, encoder_weights=str(missing))


def test_vgg16_imagenet_weights_load_and_fc6_becomes_a_7x7_conv(tmp_path):
    torch.manual_seed(0)
    # a torchvision-layout VGG16 state dict with a small classifier (the layout, not the sizes,
    # is what is tested; the real fc6 is Linear(25088, 4096))
    features = torchvision.models.vgg16(weights=None).features.state_dict()
    state = {f"features.{k}": v for k, v in features.items()}
    state["classifier.0.weight"] = torch.randn(8, 512 * 7 * 7)
    state["classifier.0.bias"] = torch.randn(8)
    state["classifier.3.weight"] = torch.randn(6, 8)
    state["classifier.3.bias"] = torch.randn(6)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)

    fc6, fc7 = nn.Conv2d(512, 8, 7, padding=3), nn.Conv2d(8, 6, 1)
    backbone = VGG16(fc6=nn.Sequential(fc6, nn.ReLU()), fc7=nn.Sequential(fc7, nn.ReLU()))
    load_vgg16_weights(path, backbone)
    torch.testing.assert_close(backbone.features[28].weight, state["features.28.weight"])
    pool5 = torch.randn(1, 512, 7, 7)
    # at the centre of a 7x7 map the padded 7x7 conv sees exactly the Linear's input
    linear = state["classifier.0.weight"] @ pool5.flatten() + state["classifier.0.bias"]
    torch.testing.assert_close(fc6(pool5)[0, :, 3, 3], linear, atol=1e-4, rtol=1e-4)
    hidden = torch.randn(1, 8, 1, 1)
    expected = state["classifier.3.weight"] @ hidden.flatten() + state["classifier.3.bias"]
    torch.testing.assert_close(fc7(hidden).flatten(), expected)

    del state["features.0.bias"]
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"vgg16.pth is not a torchvision VGG16 .*features.0"):
        load_vgg16_weights(path, backbone)


def test_encoder_weights_fill_the_backbone_of_the_model_and_adapt_one_channel(tmp_path):
    # FCN-32s with a torchvision-layout VGG16 file: backbone = features + fc6 + fc7; the
    # grey-scale model's first kernel is the RGB kernel summed over its colours (timm's rule)
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = torchvision.models.vgg16(weights=None).state_dict()
    state = {k: torch.randn(v.shape) for k, v in shapes.items() if not k.startswith("classifier.6")}
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = FCN(num_classes=2, skip="32s", in_channels=1, encoder_weights=str(path), dropout=0)
    assert torch.equal(model.encoder.features[0].weight, state["features.0.weight"].sum(1, True))
    assert torch.equal(model.encoder.features[28].weight, state["features.28.weight"])
    assert torch.equal(model.encoder.fc6[0].weight.flatten(1), state["classifier.0.weight"])
    assert torch.equal(model.encoder.fc7[0].weight.flatten(1), state["classifier.3.weight"])
    assert model.backbone is model.encoder
