"""SegNet: paper parameter count, and the decoder really unpools at the encoder's indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segkit.models.segnet import SegNet, SegNetBasic
from segkit.models.weights import WeightsError


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_segnet_has_the_papers_parameter_count():
    # Badrinarayanan et al., TPAMI 2017, model-size comparison: SegNet (VGG16-BN encoder,
    # 11 CamVid classes) about 29.4M trainable parameters
    with torch.device("meta"):
        model = SegNet(num_classes=11)
    assert count(model) == pytest.approx(29.4e6, rel=0.02)


def test_segnet_basic_is_four_7x7_64_channel_encoders_and_decoders():
    # paper Sec. 4: 64 features per layer, 7x7 kernels, BN, no biases; 1x1 classifier
    with torch.device("meta"):
        model = SegNetBasic(num_classes=11)
    expected = 49 * 3 * 64 + 7 * 49 * 64 * 64 + 8 * 2 * 64 + 64 * 11 + 11
    assert count(model) == expected


def unpool_reference(before_pool: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """Independent unpooling: each pooled value back at its window's argmax, zeros elsewhere."""
    out = np.zeros_like(before_pool)
    b, c, h, w = pooled.shape
    for n in range(b):
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    window = before_pool[n, k, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
                    di, dj = np.unravel_index(window.argmax(), (2, 2))
                    out[n, k, 2 * i + di, 2 * j + dj] = pooled[n, k, i, j]
    return out


@pytest.mark.parametrize(("model_class", "deepest_width"), [(SegNet, 4), (SegNetBasic, 8)])
def test_decoder_unpools_at_the_encoders_pooling_indices(model_class, deepest_width):
    # on a 64x64 input the deepest pool sees 4x4 (SegNet, 5 pools) or 8x8 (SegNet-Basic, 4)
    torch.manual_seed(0)
    model = model_class(num_classes=3).eval()
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    seen = {}

    def feed_distinct_values(module, args):
        if args[0].shape[-1] != deepest_width:
            return None  # SegNet-Basic reuses one pool module at every depth
        # one distinct maximum per window: a random permutation of 0..n-1
        seen["before"] = torch.randperm(args[0].numel()).reshape(args[0].shape).float()
        return (seen["before"],)

    pools[-1].register_forward_pre_hook(feed_distinct_values)
    decoder = model.decoder if model_class is SegNet else model.up
    decoder[0].register_forward_pre_hook(lambda m, args: seen.update(unpooled=args[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    before = seen["before"].numpy()
    pooled = before.reshape(*before.shape[:2], before.shape[2] // 2, 2, -1, 2).max(axis=(3, 5))
    expected = unpool_reference(before, pooled)
    np.testing.assert_array_equal(seen["unpooled"].numpy(), expected)
    assert (expected != 0).mean() == pytest.approx(0.25, abs=0.01)  # one value per window


def test_imagenet_weights_need_a_local_file(tmp_path):
    with pytest.raises(WeightsError, match=r"vgg16_bn.pth does not exist"):
        SegNet(num_classes=11, encoder_weights=str(tmp_path / "vgg16_bn.pth"))
