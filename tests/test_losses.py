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


def probabilities_as_logits(probs: list[list[list[float]]]) -> torch.Tensor:
    """``[B, C, 1, W]`` logits whose softmax over C is ``probs[b][w]`` exactly (log p)."""
    return torch.tensor(probs).log().permute(0, 2, 1).unsqueeze(2)


# 2 images of 1x2 pixels, 3 classes; class 2 absent from image 0, class 1 from image 1
DICE_PROBS = [[[0.8, 0.1, 0.1], [0.2, 0.6, 0.2]], [[0.5, 0.25, 0.25], [0.1, 0.3, 0.6]]]
DICE_TARGET = torch.tensor([[[0, 1]], [[0, 2]]])


def test_dice_follows_the_notes_hand_computed():
    # smooth 1, per image: Dice_c = (2 sum(p g) + 1) / (sum p + sum g + 1), loss = 1 - Dice
    # image 0: class 0 (2*0.8+1)/(1.0+1+1), class 1 (2*0.6+1)/(0.7+1+1), class 2 1/(0.3+1)
    image0 = [1 - 2.6 / 3.0, 1 - 2.2 / 2.7, 1 - 1 / 1.3]
    # image 1: class 0 (2*0.5+1)/(0.6+1+1), class 1 1/(0.55+1), class 2 (2*0.6+1)/(0.85+1+1)
    image1 = [1 - 2.0 / 2.6, 1 - 1 / 1.55, 1 - 2.2 / 2.85]
    logits = probabilities_as_logits(DICE_PROBS)
    included = (sum(image0) / 3 + sum(image1) / 3) / 2  # the notes: all C classes
    assert DiceLoss(IGNORE)(logits, DICE_TARGET).item() == pytest.approx(included, rel=1e-6)
    excluded = ((image0[0] + image0[1]) / 2 + (image1[0] + image1[2]) / 2) / 2
    loss = DiceLoss(IGNORE, absent="exclude")(logits, DICE_TARGET)
    assert loss.item() == pytest.approx(excluded, rel=1e-6)
    # whole-batch sums: class 0 overlap 1.3, sum p 1.6, sum g 2; class 1 0.6, 1.25, 1;
    # class 2 0.6, 1.15, 1
    batch = [1 - 3.6 / 4.6, 1 - 2.2 / 3.25, 1 - 2.2 / 3.15]
    loss = DiceLoss(IGNORE, per_image=False)(logits, DICE_TARGET)
    assert loss.item() == pytest.approx(sum(batch) / 3, rel=1e-6)
    # smooth 0 on image 0 alone: an absent class gets Dice 0 once predicted
    loss = DiceLoss(IGNORE, smooth=0.0)(logits[:1], DICE_TARGET[:1])
    assert loss.item() == pytest.approx((1 - 1.6 / 2.0 + 1 - 1.2 / 1.7 + 1) / 3, rel=1e-6)


def test_dice_ignores_ignored_pixels_in_value_and_gradient():
    logits = probabilities_as_logits(DICE_PROBS).requires_grad_()
    target = DICE_TARGET.clone()
    target[1, 0, 1] = IGNORE  # image 1 keeps only its first pixel
    DiceLoss(IGNORE)(logits, target).backward()
    assert torch.all(logits.grad[1, :, 0, 1] == 0) and logits.grad[1, :, 0, 0].abs().sum() > 0
    # equal to the loss of image 1 cropped to its labelled pixel
    cropped = DiceLoss(IGNORE)(logits[1:, :, :, :1].detach(), target[1:, :, :1])
    # image 1 now: class 0 (2*0.5+1)/(0.5+1+1), class 1 1/(0.25+1), class 2 1/(0.25+1)
    expected = (1 - 2.0 / 2.5 + 2 * (1 - 1 / 1.25)) / 3
    assert cropped.item() == pytest.approx(expected, rel=1e-6)
    everything_ignored = torch.full_like(DICE_TARGET, IGNORE)
    for smooth in (1.0, 0.0):
        loss = DiceLoss(IGNORE, smooth=smooth)(logits.detach(), everything_ignored)
        assert loss.item() == 0.0
