"""One shared test for every conf/model/*.yaml (found by glob, so new configs are covered).

Each model, built from its config with a few classes: logits ``[B, C, H, W]`` at an input
size that is not a multiple of 2 (models pad inside), in eval mode for a batch of 2 and in
train mode for a batch of 1, and a backward pass that reaches every parameter.
"""

from __future__ import annotations

import hydra
import pytest
import torch

from segkit.tasks.semantic import split_outputs

from ..conftest import PROJECT_ROOT

CONF = PROJECT_ROOT / "conf"
# Instance models follow torchvision's detection contract, not [B, C, H, W] logits; they are
# tested in tests/test_maskrcnn.py (model contract and an end-to-end train.py run).
INSTANCE_MODELS = {"maskrcnn"}
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem not in INSTANCE_MODELS)
NUM_CLASSES = 3
HEIGHT, WIDTH = 97, 131  # odd sides: no architecture here accepts them unpadded


def build(name: str) -> torch.nn.Module:
    """Instantiate conf/model/<name>.yaml as train.py would, with NUM_CLASSES classes."""
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra.compose("train", overrides=[f"model={name}", f"data.num_classes={NUM_CLASSES}"])
    return hydra.utils.instantiate(cfg.model)


@pytest.mark.parametrize("name", MODELS)
def test_model_contract(name):
    torch.manual_seed(0)
    model = build(name)
    images = torch.randn(2, 3, HEIGHT, WIDTH)

    model.eval()
    with torch.no_grad():
        logits, _ = split_outputs(model(images))
    assert logits.shape == (2, NUM_CLASSES, HEIGHT, WIDTH)
    assert torch.isfinite(logits).all()

    model.train()
    try:
        batch = images[:1]
        output = model(batch)
    except ValueError as error:  # allowed only as a clear message about the batch size
        assert "batch" in str(error), f"unclear error for a batch of 1: {error}"
        batch = images
        output = model(batch)
    logits, aux = split_outputs(output)
    assert logits.shape == (len(batch), NUM_CLASSES, HEIGHT, WIDTH)
    loss = logits.square().mean() + (0 if aux is None else aux.square().mean())
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters unused in forward: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
