"""The auxiliary head's loss enters the training loss as ``loss(out) + aux_weight * loss(aux)``
(PSPNet paper Sec. 3.4, weight 0.4), checked against hand-computed cross-entropies."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.pspnet import PSPNet
from segkit.tasks.losses import CrossEntropyLoss
from segkit.tasks.semantic import SemanticSegmentationTask


class FixedOutputs(nn.Module):
    """Train-mode outputs fixed by hand: main logits ``[0, ln 3]`` at every pixel (p(class 0)
    = 1/4, cross-entropy ln 4 for target 0) and auxiliary logits ``[0, 0]`` (ln 2) at half
    resolution, which the task upsamples to the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, _, height, width = x.shape
        out = torch.zeros(batch, 2, height, width)
        out[:, 1] = math.log(3.0)
        aux = torch.zeros(batch, 2, height // 2, width // 2)
        return {"out": out * self.scale, "aux": aux * self.scale}


def task(model: nn.Module, aux_weight: float) -> SemanticSegmentationTask:
    return SemanticSegmentationTask(
        model=model,
        loss=CrossEntropyLoss(),
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=None,
        num_classes=2,
        class_names=["a", "b"],
        aux_weight=aux_weight,
    )


@pytest.mark.parametrize("aux_weight", [0.4, 1.0])
def test_training_loss_adds_weighted_aux_loss(aux_weight):
    images, masks = torch.zeros(2, 3, 4, 6), torch.zeros(2, 4, 6, dtype=torch.long)
    loss, aux_loss = task(FixedOutputs(), aux_weight).training_loss(images, masks)
    assert aux_loss.item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert loss.item() == pytest.approx(math.log(4.0) + aux_weight * math.log(2.0), rel=1e-6)


def test_zero_aux_weight_trains_the_main_head_only():
    images, masks = torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    loss, aux_loss = task(FixedOutputs(), 0.0).training_loss(images, masks)
    assert aux_loss is None
    assert loss.item() == pytest.approx(math.log(4.0), rel=1e-6)


def test_pspnet_aux_head_is_trained_with_its_weight():
    """PSPNet's training loss equals torch's cross-entropy of its two outputs, combined by
    hand with weight 0.4, and the auxiliary head receives a gradient."""
    torch.manual_seed(0)
    model = PSPNet(num_classes=3, encoder_name="resnet18", channels=32)
    images = torch.randn(2, 3, 40, 48)
    masks = torch.randint(0, 3, (2, 40, 48))
    model.train()
    torch.manual_seed(1)  # dropout in the heads: the same draws in both forward passes
    outputs = model(images)
    expected = F.cross_entropy(outputs["out"], masks) + 0.4 * F.cross_entropy(outputs["aux"], masks)
    torch.manual_seed(1)
    loss, _ = task(model, 0.4).training_loss(images, masks)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    aux_grads = [p.grad for n, p in model.named_parameters() if n.startswith("aux")]
    assert aux_grads and all(g is not None and g.abs().sum() > 0 for g in aux_grads)
