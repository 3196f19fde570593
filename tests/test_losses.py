"""segkit.losses: ignored pixels contribute nothing; values against hand-computed ones."""

import pytest
import torch
import torch.nn.functional as F

from segkit.losses import CrossEntropyLoss, DiceLoss, FocalLoss, WeightedSumLoss

IGNORE = 255
LOSSES = {
    "ce": lambda: CrossEntropyLoss(IGNORE),
    "ce_weighted": lambda: CrossEntropyLoss(IGNORE, class_weights=[0.5, 2.0, 1.0]),
    "dice": lambda: DiceLoss(IGNORE),
    "focal": lambda: FocalLoss(IGNORE),
    "sum": lambda: WeightedSumLoss(
        {"ce": CrossEntropyLoss(IGNORE), "dice": DiceLoss(IGNORE)}, {"dice": 0.5}
    ),
}


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[:, :3] = IGNORE
    return logits, target


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_get_zero_gradient(name):
    logits, target = batch()
    LOSSES[name]()(logits, target).backward()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)
    assert logits.grad[~ignored].abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixel_values_do_not_change_the_loss(name):
    logits, target = batch()
    loss = LOSSES[name]()
    changed = logits.detach().clone()
    changed[:, :, :3] = torch.randn_like(changed[:, :, :3]) * 10
    assert loss(logits, target).item() == pytest.approx(loss(changed, target).item(), rel=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_batch_gives_zero_not_nan(name):
    logits, target = batch()
    assert LOSSES[name]()(logits, torch.full_like(target, IGNORE)).item() == 0.0


def test_cross_entropy_matches_mean_over_valid_pixels():
    logits, target = batch()
    valid = target != IGNORE
    picked = logits.permute(0, 2, 3, 1)[valid]
    expected = F.cross_entropy(picked, target[valid])
    assert CrossEntropyLoss(IGNORE)(logits, target).item() == pytest.approx(expected.item())
    w = torch.tensor([0.5, 2.0, 1.0])
    per_pixel = F.cross_entropy(picked, target[valid], reduction="none")
    expected_w = (w[target[valid]] * per_pixel).sum() / w[target[valid]].sum()
    got = CrossEntropyLoss(IGNORE, class_weights=w.tolist())(logits, target)
    assert got.item() == pytest.approx(expected_w.item())


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = batch()
    ce = CrossEntropyLoss(IGNORE)(logits, target)
    assert FocalLoss(IGNORE, gamma=0.0)(logits, target).item() == pytest.approx(ce.item())


def test_focal_hand_computed_pixel():
    logits = torch.tensor([[[[2.0]], [[0.0]]]])  # p(class 0) = e^2 / (e^2 + 1)
    p = torch.sigmoid(torch.tensor(2.0))
    expected = -((1 - p) ** 2) * torch.log(p)
    assert FocalLoss(IGNORE, gamma=2.0)(logits, torch.tensor([[[0]]])).item() == pytest.approx(
        expected.item()
    )


def test_dice_of_perfect_prediction_is_about_zero():
    target = torch.randint(0, 3, (2, 16, 16))
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50.0
    assert DiceLoss(IGNORE)(logits, target).item() == pytest.approx(0.0, abs=1e-4)
    wrong = F.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float() * 50.0
    assert DiceLoss(IGNORE)(wrong, target).item() > 0.99


def test_weighted_sum_is_the_weighted_sum():
    logits, target = batch()
    ce, dice = CrossEntropyLoss(IGNORE)(logits, target), DiceLoss(IGNORE)(logits, target)
    total = LOSSES["sum"]()(logits, target)
    assert total.item() == pytest.approx((ce + 0.5 * dice).item())
    with pytest.raises(ValueError, match="unknown"):
        WeightedSumLoss({"ce": CrossEntropyLoss()}, {"dice": 1.0})
