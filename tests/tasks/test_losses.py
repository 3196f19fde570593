"""segkit.tasks.losses: ignored pixels contribute nothing; values against hand-computed ones."""

import math

import pytest
import torch
import torch.nn.functional as F

from segkit.tasks.losses import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    OhemCrossEntropyLoss,
    WeightedSumLoss,
)

IGNORE = 255
LOSSES = {
    "ce": lambda: CrossEntropyLoss(IGNORE),
    "ce_weighted": lambda: CrossEntropyLoss(IGNORE, class_weights=[0.5, 2.0, 1.0]),
    "dice": lambda: DiceLoss(IGNORE),
    "focal": lambda: FocalLoss(IGNORE),
    "focal_weighted_smoothed": lambda: FocalLoss(
        IGNORE, class_weights=[0.5, 2.0, 1.0], label_smoothing=0.1
    ),
    "ohem": lambda: OhemCrossEntropyLoss(IGNORE, thresh=0.5, min_kept=8),
    "ohem_top_k": lambda: OhemCrossEntropyLoss(IGNORE, thresh=None, min_kept=8),
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


# --- focal: weights on the CE scale, label smoothing -----------------------------------------


def test_focal_weighted_is_the_weighted_mean_hand_computed():
    # pixel 0: logits (2, 0), class 0; pixel 1: logits (0, 0), class 1; w = (1, 3), gamma 2
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])
    target = torch.tensor([[[0, 1]]])
    p0 = 1 / (1 + math.exp(-2.0))
    f0, f1 = (1 - p0) ** 2 * -math.log(p0), 0.5**2 * math.log(2.0)
    loss = FocalLoss(IGNORE, gamma=2.0, class_weights=[1.0, 3.0])(logits, target)
    assert loss.item() == pytest.approx((1 * f0 + 3 * f1) / (1 + 3), rel=1e-6)


def test_focal_label_smoothing_hand_computed():
    # one pixel, logits (2, 0), class 0, eps 0.2: target (0.9, 0.1), focal term per class
    logits, target = torch.tensor([[[[2.0]], [[0.0]]]]), torch.tensor([[[0]]])
    p0 = 1 / (1 + math.exp(-2.0))
    f0, f1 = (1 - p0) ** 2 * -math.log(p0), p0**2 * -math.log(1 - p0)
    loss = FocalLoss(IGNORE, gamma=2.0, label_smoothing=0.2)(logits, target)
    assert loss.item() == pytest.approx(0.9 * f0 + 0.1 * f1, rel=1e-6)


def test_focal_with_gamma_zero_is_pytorch_cross_entropy_with_weights_and_smoothing():
    logits, target = batch()
    w = torch.tensor([0.5, 2.0, 1.0])
    expected = F.cross_entropy(logits, target, w, ignore_index=IGNORE, label_smoothing=0.1)
    focal = FocalLoss(IGNORE, gamma=0.0, class_weights=w.tolist(), label_smoothing=0.1)
    assert focal(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["ce_weighted", "focal_weighted_smoothed", "ohem_weighted"])
def test_scaling_every_class_weight_leaves_the_loss_unchanged(name):
    # one scale for every pixel loss: sum w l / sum w, so only the weights' ratios matter
    build = {
        "ce_weighted": lambda w: CrossEntropyLoss(IGNORE, class_weights=w),
        "focal_weighted_smoothed": lambda w: FocalLoss(IGNORE, class_weights=w),
        "ohem_weighted": lambda w: OhemCrossEntropyLoss(IGNORE, 0.5, 8, class_weights=w),
    }[name]
    logits, target = batch()
    w = [0.5, 2.0, 1.0]
    small, large = build(w)(logits, target), build([10 * x for x in w])(logits, target)
    assert small.item() == pytest.approx(large.item(), rel=1e-6)


# --- OHEM ------------------------------------------------------------------------------------

# 1 image, 1x5 pixels, 2 classes; true-class probabilities 0.9, 0.6, 0.3, 0.8 and an ignored
# pixel whose class-0 probability (0.05) would make it the hardest if it counted
OHEM_PROBS = [[[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.05, 0.95]]]
OHEM_TARGET = torch.tensor([[[0, 1, 0, 1, IGNORE]]])


@pytest.mark.parametrize(
    ("thresh", "min_kept", "kept_probs"),
    [
        (0.7, 1, [0.6, 0.3]),  # below the threshold: 2 >= min_kept
        (0.7, 3, [0.6, 0.3, 0.8]),  # the 3 lowest, though 0.8 >= thresh
        (0.7, 10, [0.9, 0.6, 0.3, 0.8]),  # every labelled pixel, never the ignored one
        (0.25, 0, []),  # nothing below 0.25, none required: loss 0
        (None, 2, [0.6, 0.3]),  # the 2 highest losses
    ],
)
def test_ohem_keeps_hard_pixels_hand_computed(thresh, min_kept, kept_probs):
    logits = probabilities_as_logits(OHEM_PROBS).requires_grad_()
    loss = OhemCrossEntropyLoss(IGNORE, thresh=thresh, min_kept=min_kept)(logits, OHEM_TARGET)
    expected = sum(-math.log(p) for p in kept_probs) / max(1, len(kept_probs))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    true_prob = [0.9, 0.6, 0.3, 0.8, None]
    for pixel, p in enumerate(true_prob):  # gradient exactly on the kept pixels
        has_gradient = bool(logits.grad[0, :, 0, pixel].abs().sum() > 0)
        assert has_gradient == (p in kept_probs), (pixel, p)


def test_ohem_min_kept_counts_per_image_and_picks_over_the_batch():
    # image 0 easy (0.9, 0.8), image 1 hard (0.2, 0.1); thresh 0.05 keeps none by itself,
    # min_kept 1 x 2 images keeps the batch's 2 hardest pixels, both from image 1
    probs = [[[0.9, 0.1], [0.8, 0.2]], [[0.2, 0.8], [0.1, 0.9]]]
    target = torch.zeros(2, 1, 2, dtype=torch.long)
    loss = OhemCrossEntropyLoss(IGNORE, thresh=0.05, min_kept=1)
    logits = probabilities_as_logits(probs)
    assert loss.kept_pixels(logits, target).tolist() == [[[False, False]], [[True, True]]]
    expected = (-math.log(0.2) - math.log(0.1)) / 2
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_ohem_weighted_ranks_by_weighted_loss_and_takes_the_weighted_mean():
    # thresh None, min_kept 2, w = (1, 4): weighted losses -log p * w[y]
    # 0.9 (class 0): 0.105; 0.6 (class 1): 2.04; 0.3 (class 0): 1.20; 0.8 (class 1): 0.89
    logits = probabilities_as_logits(OHEM_PROBS)
    loss = OhemCrossEntropyLoss(IGNORE, thresh=None, min_kept=2, class_weights=[1.0, 4.0])
    kept = loss.kept_pixels(logits, OHEM_TARGET)
    assert kept.tolist() == [[[False, True, True, False, False]]]
    expected = (4 * -math.log(0.6) + 1 * -math.log(0.3)) / (4 + 1)
    assert loss(logits, OHEM_TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_ohem_with_every_pixel_kept_is_cross_entropy():
    logits, target = batch()
    ohem = OhemCrossEntropyLoss(IGNORE, thresh=1.0, min_kept=0, class_weights=[0.5, 2.0, 1.0])
    ce = CrossEntropyLoss(IGNORE, class_weights=[0.5, 2.0, 1.0])
    assert ohem(logits, target).item() == pytest.approx(ce(logits, target).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"thresh": 1.5}, r"loss.thresh must be in \(0, 1\]"),
        ({"min_kept": -1}, "loss.min_kept must be an integer >= 0"),
        ({"thresh": None, "min_kept": 0}, "set min_kept > 0"),
    ],
)
def test_ohem_rejects_bad_arguments_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OhemCrossEntropyLoss(IGNORE, **kwargs)
