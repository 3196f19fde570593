"""segkit.tasks.losses: ignored pixels contribute nothing; values against hand-computed ones."""

import math

import hydra
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segkit.tasks.losses import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    WeightedSumLoss,
)

from ..helpers import compose

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
    "lovasz": lambda: LovaszSoftmaxLoss(IGNORE),
    "lovasz_per_image": lambda: LovaszSoftmaxLoss(IGNORE, per_image=True),
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


# --- Lovasz-softmax ----------------------------------------------------------------------------


def jaccard_loss(mispredicted: set[int], truth: set[int]) -> float:
    """The paper's set function J(M) = |M| / |{y = c} union M| (``truth``: the pixels of c)."""
    return len(mispredicted) / len(truth | mispredicted)


def lovasz_reference(logits: np.ndarray, target: np.ndarray, per_image: bool) -> float:
    """The paper's definition, with sets: for each class c present in a group's labelled
    pixels, errors m_i = |[y_i = c] - p_ic| sorted in decreasing order, and
    loss_c = sum_i m_(i) (J(first i) - J(first i-1)) with J(M) = |M| / |{y = c} union M|;
    the mean over the present classes, then over the groups (images, or the whole batch)."""
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)  # softmax over C, float64
    num_classes = logits.shape[1]
    groups = [slice(b, b + 1) for b in range(len(target))] if per_image else [slice(None)]
    losses = []
    for group in groups:
        p = probs[group].transpose(0, 2, 3, 1).reshape(-1, num_classes)  # [P,C]
        y = target[group].reshape(-1)
        p, y = p[y != IGNORE], y[y != IGNORE]
        per_class = []
        for c in range(num_classes):
            truth = {i for i in range(len(y)) if y[i] == c}
            if not truth:  # only the classes present
                continue
            errors = np.abs((y == c) - p[:, c])
            order = sorted(range(len(y)), key=lambda i: -errors[i])
            # J of the first i sorted pixels, i = 0..P
            first = [jaccard_loss(set(order[:i]), truth) for i in range(len(order) + 1)]
            steps = range(1, len(order) + 1)
            per_class.append(sum(errors[order[i - 1]] * (first[i] - first[i - 1]) for i in steps))
        losses.append(np.mean(per_class) if per_class else 0.0)
    return float(np.mean(losses))


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_matches_the_definition_with_sets(per_image):
    # 2 images of 3x4 pixels, 4 classes; class 3 absent from image 0, some pixels ignored
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, 4, generator=g, dtype=torch.float64) * 2
    target = torch.tensor(
        [
            [[0, 0, 1, 1], [2, 2, IGNORE, 0], [1, IGNORE, 2, 2]],
            [[3, 3, 0, 1], [3, IGNORE, IGNORE, 2], [0, 0, 3, 1]],
        ]
    )
    expected = lovasz_reference(logits.numpy(), target.numpy(), per_image)
    got = LovaszSoftmaxLoss(IGNORE, per_image=per_image)(logits.float(), target)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)


# 2x3 pixels, 4 classes, logits +-50: the softmax is one-hot, the Lovasz extension is the
# Jaccard loss 1 - IoU of each class present
#   target  0 0 0     prediction  0 3 1
#           1 1 2                 1 2 2
LOVASZ_TARGET = torch.tensor([[[0, 0, 0], [1, 1, 2]]])
LOVASZ_PREDICTION = torch.tensor([[[0, 3, 1], [1, 2, 2]]])


def test_lovasz_of_hard_predictions_is_one_minus_iou_hand_computed():
    logits = F.one_hot(LOVASZ_PREDICTION, 4).permute(0, 3, 1, 2).float() * 100 - 50
    # class 0: truth {0,1,2}, predicted {0}: IoU 1/3; class 1: {3,4}, {2,3}: 1/3;
    # class 2: {5}, {4,5}: 1/2; class 3 predicted but not labelled: not averaged
    expected = ((1 - 1 / 3) + (1 - 1 / 3) + (1 - 1 / 2)) / 3  # 11/18
    for per_image in (False, True):
        loss = LovaszSoftmaxLoss(IGNORE, per_image=per_image)(logits, LOVASZ_TARGET)
        assert loss.item() == pytest.approx(expected, abs=1e-6)
    # pixel 1 ignored: class 0 truth {0,2}, predicted {0}: IoU 1/2; class 3 gone entirely
    target = LOVASZ_TARGET.clone()
    target[0, 0, 1] = IGNORE
    expected = ((1 - 1 / 2) + (1 - 1 / 3) + (1 - 1 / 2)) / 3  # 5/9
    assert LovaszSoftmaxLoss(IGNORE)(logits, target).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_all_ignored_batch_gives_exactly_zero_and_a_zero_gradient(per_image):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = LovaszSoftmaxLoss(IGNORE, per_image=per_image)(
        logits, torch.full((2, 4, 4), IGNORE)
    )  # smp's LovaszLoss returns an empty [0, C] tensor here
    assert loss.ndim == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.all(torch.isfinite(logits.grad)) and torch.all(logits.grad == 0)


def test_lovasz_per_image_counts_an_all_ignored_image_as_zero():
    # smp's per_image=True raises or returns an empty tensor with such an image in the batch
    logits, target = batch()
    target[1] = IGNORE
    both = LovaszSoftmaxLoss(IGNORE, per_image=True)(logits, target)
    first = LovaszSoftmaxLoss(IGNORE, per_image=True)(logits[:1], target[:1])
    assert both.item() == pytest.approx(first.item() / 2, rel=1e-6)


def test_lovasz_is_float32_under_bf16_autocast():
    logits, target = batch()
    low = logits.detach().bfloat16()  # what a bf16 model hands the loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LovaszSoftmaxLoss(IGNORE)(low, target)
    assert loss.dtype == torch.float32
    expected = LovaszSoftmaxLoss(IGNORE)(low.float(), target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_ce_lovasz_config_composes_and_is_the_sum(tmp_path):
    cfg = compose(tmp_path, ["loss=ce_lovasz"])
    loss = hydra.utils.instantiate(cfg.loss)
    assert isinstance(loss, WeightedSumLoss) and loss.weights == {"ce": 1.0, "lovasz": 1.0}
    ce, lovasz = loss.losses["ce"], loss.losses["lovasz"]
    assert isinstance(ce, CrossEntropyLoss) and isinstance(lovasz, LovaszSoftmaxLoss)
    assert ce.class_weights is None and not lovasz.per_image
    assert ce.ignore_index == lovasz.ignore_index == cfg.data.ignore_index
    logits, target = batch()
    target[target == IGNORE] = cfg.data.ignore_index
    expected = CrossEntropyLoss(cfg.data.ignore_index)(logits, target) + LovaszSoftmaxLoss(
        cfg.data.ignore_index
    )(logits, target)
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    alone = hydra.utils.instantiate(compose(tmp_path, ["loss=lovasz"]).loss)
    assert isinstance(alone, LovaszSoftmaxLoss) and not alone.per_image
