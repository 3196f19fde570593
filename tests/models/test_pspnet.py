"""PSPNet: shapes, output stride 8, pyramid bins, auxiliary head, batch-1 error, weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segkit.models.pspnet import PSPNet
from segkit.models.weights import WeightsError, build_model


@pytest.fixture(scope="module")
def model() -> PSPNet:
    torch.manual_seed(0)
    return PSPNet(num_classes=4, encoder_name="resnet18", channels=64)  # small 3x3 conv: fast


def test_train_mode_returns_out_and_aux_at_any_size(model):
    model.train()
    x = torch.randn(2, 3, 33, 47)  # not a multiple of 8 or 32
    output = model(x)
    assert set(output) == {"out", "aux"}
    assert output["out"].shape == (2, 4, 33, 47)
    assert output["aux"].shape == (2, 4, 33, 47)  # upsampled from stride 8 like the logits
    (output["out"].mean() + output["aux"].mean()).backward()
    assert model.encoder.conv1.weight.grad is not None
    model.zero_grad()


def test_eval_mode_returns_logits_and_takes_one_image(model):
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 41)).shape == (1, 4, 33, 41)


def test_output_stride_is_8_with_dilated_last_stages(model):
    model.eval()
    with torch.no_grad():
        features = model.encoder(torch.randn(1, 3, 32, 48))
    assert [f.shape[-2:] for f in features[3:]] == [(4, 6)] * 3  # 32/8, 48/8
    # paper: stage 4 dilation 2, stage 5 dilation 4 instead of striding
    assert model.encoder.layer3[1].conv1.dilation == (2, 2)
    assert model.encoder.layer4[1].conv1.dilation == (4, 4)
    assert model.output_stride == 8


def test_pyramid_pools_to_bins_1_2_3_6(model):
    sizes = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
        for m in model.modules()
        if isinstance(m, nn.AdaptiveAvgPool2d)
    ]
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 48, 48))
    for hook in hooks:
        hook.remove()
    assert sizes == [(1, 1), (2, 2), (3, 3), (6, 6)]
    # each bin reduces 512 channels to 512/4; the 3x3 conv sees 512 + 4 * 128 = 1024
    assert model.head[1][0].in_channels == 1024


def test_batch_of_one_in_train_mode_raises_clear_error(model):
    model.train()
    with pytest.raises(ValueError, match="batch_size>=2"):
        model(torch.randn(1, 3, 16, 16))


def test_weights_path_round_trip_and_mismatch(model, tmp_path):
    path = tmp_path / "psp.pth"
    torch.save(model.state_dict(), path)
    psp = {"_target_": "segkit.models.pspnet.PSPNet", "encoder_name": "resnet18", "channels": 64}
    loaded = build_model({**psp, "num_classes": 4, "weights_path": str(path)})
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(WeightsError, match="shape mismatches"):
        build_model({**psp, "num_classes": 3, "weights_path": str(path)})
