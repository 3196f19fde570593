"""Weights that were asked for and cannot be had fail at once, before any download attempt."""

from __future__ import annotations

import time

import pytest

from segkit.models import weights
from segkit.models.deeplab import DeepLabV3
from segkit.models.smp import smp_model
from segkit.models.weights import WeightsError


@pytest.mark.parametrize(
    "build",
    [
        lambda: smp_model("Unet", num_classes=3, encoder_weights="imagenet"),
        lambda: DeepLabV3(num_classes=3, encoder_name="resnet18", encoder_weights="imagenet"),
    ],
    ids=["smp_model", "smp_encoder"],
)
def test_hub_weights_offline_fail_at_once_with_the_fix(offline, build):
    start = time.perf_counter()
    with pytest.raises(WeightsError, match="encoder_weights=null") as error:
        build()
    # huggingface_hub's own retries take ~25 s; the probe answers without any of them
    assert time.perf_counter() - start < 5
    assert offline == [("huggingface.co", 443)]
    assert "HF_HUB_OFFLINE=1" in str(error.value)


def test_no_probe_without_weights_or_with_a_proxy(offline, monkeypatch):
    smp_model("Unet", num_classes=3, encoder_weights=None)
    assert offline == []
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert weights.hub_unreachable() is None
    assert offline == []
