"""``model.decoder``: smp's decoder arguments pass through by smp's names (the widths of
issue 30's decoder study), and a key the architecture does not take stops at start-up."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from segkit.config import ConfigError
from segkit.models.smp import smp_model


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("arch", "decoder"),
    [
        ("FPN", {"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32}),
        ("Unet", {"decoder_channels": [64, 32, 16, 16, 8]}),
        ("UPerNet", {"decoder_channels": 64}),
    ],
)
def test_decoder_widths_build_what_smp_builds(arch, decoder):
    torch.manual_seed(0)
    model = smp_model(arch, 5, encoder_name="resnet18", decoder=decoder)
    peer = smp.create_model(
        arch, encoder_name="resnet18", encoder_weights=None, classes=5, **decoder
    )
    default = smp.create_model(arch, encoder_name="resnet18", encoder_weights=None, classes=5)
    assert count(model.model.decoder) == count(peer.decoder) < count(default.decoder)
    logits = model.eval()(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 5, 64, 64)


def test_fpn_head_width_is_the_given_one():
    model = smp_model(
        "FPN", 3, encoder_name="resnet18", decoder={"decoder_segmentation_channels": 32}
    )
    assert model.model.segmentation_head[0].in_channels == 32


def test_a_key_the_architecture_does_not_take_stops_naming_it():
    with pytest.raises(
        ConfigError,
        match=r"model\.decoder\.psp_out_channels is no decoder argument "
        r"of smp FPN; its decoder arguments are model\.decoder\.decoder_pyramid",
    ):
        smp_model("FPN", 3, encoder_name="resnet18", decoder={"psp_out_channels": 64})
