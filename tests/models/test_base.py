"""The model contract written once: pad, predict, upsample, crop, aux only in training,
the padding error, and the backbone/head split (on toy subclasses with known outputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.base import SegmentationModel
from segkit.models.blocks import norm_layer


class Double(SegmentationModel):
    """Logits = twice the first channel, at the padded size; remembers what it was given."""

    output_stride = 8

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return 2 * x[:, :1]


class Pooled(SegmentationModel):
    """Logits at 1/4 of the padded size, aux at 1/8 in training; an ``encoder`` backbone."""

    output_stride = 8

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def predict(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        out = self.head(F.avg_pool2d(self.encoder(x), 4))
        if self.training:
            return {"out": out, "aux": F.avg_pool2d(out, 2)}
        return out


def test_input_is_zero_padded_to_the_stride_and_logits_cropped_back():
    model = Double()
    x = torch.randn(2, 3, 13, 18)
    out = model(x)
    assert model.seen.shape == (2, 3, 16, 24)  # bottom/right to multiples of 8
    assert torch.equal(model.seen[..., :13, :18], x)
    assert (model.seen[..., 13:, :] == 0).all() and (model.seen[..., 18:] == 0).all()
    assert torch.equal(out, 2 * x[:, :1])  # same-size logits: no interpolation


def test_low_resolution_outputs_are_upsampled_bilinearly_before_the_crop():
    torch.manual_seed(0)
    model = Pooled().eval()
    x = torch.randn(1, 3, 13, 18)
    with torch.no_grad():
        out = model(x)
        # the order of operations spelled out: pad to 16x24, 1/4 logits, bilinear x4, crop
        padded = torch.zeros(1, 3, 16, 24)
        padded[..., :13, :18] = x
        coarse = model.head(F.avg_pool2d(model.encoder(padded), 4))  # [1,2,4,6]
        expected = F.interpolate(coarse, size=(16, 24), mode="bilinear", align_corners=False)
    assert out.shape == (1, 2, 13, 18)
    torch.testing.assert_close(out, expected[..., :13, :18])


def test_aux_is_returned_at_input_size_in_training_only():
    model = Pooled()
    x = torch.randn(2, 3, 13, 18)
    output = model.train()(x)
    assert set(output) == {"out", "aux"}
    assert output["out"].shape == output["aux"].shape == (2, 2, 13, 18)
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)


def test_an_output_that_is_not_the_padded_size_over_an_integer_says_how_to_pad():
    class Wrong(Double):
        def predict(self, x: torch.Tensor) -> torch.Tensor:
            return x[..., :5, :5]  # 16x24 padded input -> 5x5

    with pytest.raises(ValueError, match=r"5x5 .* padded to 16x24 .*output_stride=8"):
        Wrong()(torch.randn(1, 3, 13, 18))


def test_backbone_is_the_encoder_and_head_is_the_rest():
    model = Pooled()
    assert model.backbone is model.encoder
    assert [id(p) for p in model.backbone_parameters()] == [
        id(model.encoder.weight),
        id(model.encoder.bias),
    ]
    assert [id(p) for p in model.head_parameters()] == [id(model.head.weight), id(model.head.bias)]
    assert Double().backbone is None and Double().backbone_parameters() == []


def test_norm_names_and_group_counts_are_checked():
    with pytest.raises(ValueError, match=r"model.norm='layer' is not one of batch, group, "):
        norm_layer("layer")
    group = norm_layer("group", 32)
    assert isinstance(group(64), nn.GroupNorm) and group(64).num_groups == 32
    with pytest.raises(ValueError, match=r"48 channels .*model.norm_groups=32.*norm_groups=16"):
        group(48)


class Normed(SegmentationModel):
    """A batch-normed 1x1 convolution on features pooled to 1/8 of the padded size."""

    output_stride = 8

    def __init__(self, norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.norm = nn.BatchNorm2d(2) if norm else nn.Identity()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(F.avg_pool2d(x, 8)))


def test_one_image_whose_deepest_map_is_1x1_names_the_settings_in_training():
    model = Normed().train()
    # 5x7 pads to 8x8: 1x1 at 1/8, one value per channel for batch norm
    with pytest.raises(ValueError, match=r"batch of 1 8x8 \(padded\).*data\.batch_size>=2"):
        model(torch.randn(1, 3, 5, 7))
    model(torch.randn(2, 3, 5, 7))  # two images: two values per channel
    model(torch.randn(1, 3, 9, 7))  # pads to 16x8: a 2x1 map
    model.eval()(torch.randn(1, 3, 5, 7))  # running statistics
    Normed(norm=False).train()(torch.randn(1, 3, 5, 7))  # no batch norm
