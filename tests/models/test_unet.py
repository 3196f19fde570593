"""Classic U-Net: parameter count from the paper's Fig. 1 and skip concatenation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segkit.models.unet import UNet


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out + c_out  # weights + bias


def test_parameter_count_matches_the_paper_architecture():
    # Ronneberger et al. 2015, Fig. 1: double 3x3 convs 64-128-256-512-1024, 2x2 up-convs
    # halving the channels, concatenation, 1x1 classifier; 2 classes. Commonly cited: 31.0M.
    widths = [64, 128, 256, 512, 1024]
    expected = 0
    c_in = 1  # the paper's grey-scale input
    for w in widths:
        expected += conv(3, c_in, w) + conv(3, w, w)
        c_in = w
    for w in reversed(widths[:-1]):
        expected += conv(2, 2 * w, w) + conv(3, 2 * w, w) + conv(3, w, w)
    expected += conv(1, 64, 2)
    with torch.device("meta"):
        model = UNet(num_classes=2, in_channels=1)
    assert count(model) == expected
    assert count(model) == pytest.approx(31.0e6, rel=0.02)


def test_batch_norm_option_adds_bn_after_every_3x3_conv():
    with torch.device("meta"):
        model = UNet(num_classes=2, norm="batch")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 18
    assert all(c.bias is None for c in convs)


def test_decoder_sees_the_encoder_features_concatenated():
    torch.manual_seed(0)
    model = UNet(num_classes=2).eval()
    seen = {}
    model.up_conv[-1].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    model.down[0].register_forward_hook(lambda m, args, out: seen.update(first=out))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 37, 45))
    assert out.shape == (1, 2, 37, 45)
    # the last decoder block gets [first-level features (64), upsampled (64)], padded to 48x48
    assert seen["x"].shape == (1, 128, 48, 48)
    torch.testing.assert_close(seen["x"][:, :64], seen["first"])


def test_weights_start_as_the_paper_says():
    """Sec. 3: Gaussian weights with standard deviation sqrt(2/N), N = inputs of one unit
    (a 3x3 conv over 64 channels: N = 9 * 64); biases zero."""
    torch.manual_seed(0)
    model = UNet(num_classes=2, in_channels=1)
    cases = [
        (model.down[0][0][0], 9 * 1),  # first 3x3 conv on the grey input
        (model.down[4][1][0], 9 * 1024),  # the deepest 3x3 conv
        (model.up[0], 1024),  # 2x2 up-convolution, stride 2: one kernel position per output
        (model.head, 64),  # the 1x1 classifier
    ]
    for conv, inputs in cases:
        assert conv.weight.std().item() == pytest.approx((2 / inputs) ** 0.5, rel=0.05)
        assert conv.weight.mean().item() == pytest.approx(0, abs=0.05 * (2 / inputs) ** 0.5)
        assert torch.count_nonzero(conv.bias) == 0
