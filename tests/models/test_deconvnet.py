"""DeconvNet: paper parameter count, mirrored decoder, clear batch-of-one error, offline weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segkit.models.deconvnet import DeconvNet
from segkit.models.weights import WeightsError


def test_deconvnet_has_the_papers_parameter_count():
    # Noh, Hong & Han, ICCV 2015 (and the SegNet paper's comparison): about 252M parameters
    with torch.device("meta"):
        model = DeconvNet(num_classes=21)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(252e6, rel=0.02)


def test_decoder_mirrors_the_encoder_with_transposed_convs_and_batch_norm():
    with torch.device("meta"):
        model = DeconvNet(num_classes=21)
    encoder = [m for m in model.encoder.features if isinstance(m, nn.Conv2d)]
    decoder = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(encoder) == len(decoder) == 13
    # deconv i undoes conv i: channels reversed (deconv1_1 outputs 64, as conv1_2 inputs)
    assert [(d.in_channels, d.out_channels) for d in decoder][:-1] == [
        (c.out_channels, c.in_channels) for c in reversed(encoder)
    ][:-1]
    fc6, fc7 = model.encoder.fc6[0], model.encoder.fc7[0]  # part of the ImageNet backbone
    assert fc6.kernel_size == (7, 7) and fc6.out_channels == 4096
    assert fc7.kernel_size == (1, 1) and fc7.out_channels == 4096
    assert model.deconv_fc6[0].kernel_size == (7, 7)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 13 + 2 + 1 + 13  # after every conv and transposed conv


def test_one_tiny_training_image_gets_a_clear_error():
    with torch.device("meta"):
        model = DeconvNet(num_classes=3).train()
        with pytest.raises(ValueError, match="batch of at least 2"):
            model(torch.zeros(1, 3, 32, 32))


def test_group_norm_trains_on_one_tiny_image():
    with torch.device("meta"):
        model = DeconvNet(num_classes=3, norm="group").train()
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.decoder.modules())
    assert isinstance(model.encoder.fc6[1], nn.GroupNorm)


def test_imagenet_weights_are_read_from_the_hub_cache_only(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # an empty torch hub cache
    with pytest.raises(WeightsError, match=r"needs vgg16_bn-.*\.pth.*encoder_weights=null"):
        DeconvNet(num_classes=21, encoder_weights="IMAGENET1K_V1")
