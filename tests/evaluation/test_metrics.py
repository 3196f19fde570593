"""segkit.evaluation.metrics against an independent numpy reference (np.bincount + the seed
formulas)."""

import math

import numpy as np
import pytest
import torch

from segkit.evaluation.metrics import ConfusionMatrix, confusion_matrix, scores

IGNORE = 255


def numpy_confmat(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    keep = target != IGNORE
    return np.bincount(
        num_classes * target[keep].astype(np.int64) + pred[keep], minlength=num_classes**2
    ).reshape(num_classes, num_classes)


def numpy_scores(m: np.ndarray) -> dict[str, np.ndarray | float]:
    m = m.astype(np.float64)
    tp, gt, pred, total = np.diag(m), m.sum(1), m.sum(0), m.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt + pred - tp)
        cpa = tp / gt
        dice = 2 * tp / (gt + pred)
        precision = tp / pred
    freq = gt / total
    return {
        "PA": np.trace(m) / total,
        "CPA": cpa,
        "MPA": np.nanmean(cpa),
        "IoU": iou,
        "mIoU": np.nanmean(iou),
        "FWIoU": (freq[gt > 0] * iou[gt > 0]).sum(),
        "Dice": dice,
        "mDice": np.nanmean(dice),
        "Precision": precision,
    }


def random_case(seed: int, num_classes: int = 6, shape=(3, 17, 23)):
    rng = np.random.default_rng(seed)
    # class 4 never appears in the target, class 5 appears nowhere: absent-class cases
    target = rng.choice([0, 1, 2, 3], size=shape, p=[0.5, 0.3, 0.15, 0.05])
    target[rng.random(shape) < 0.1] = IGNORE
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, 5, size=shape))
    pred[pred == IGNORE] = 0
    return pred, target, num_classes


@pytest.mark.parametrize("seed", range(5))
def test_scores_match_numpy_reference(seed):
    pred, target, c = random_case(seed)
    metric = ConfusionMatrix(c, ignore_index=IGNORE)
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    expected_cm = numpy_confmat(pred, target, c)
    np.testing.assert_array_equal(metric.confmat.numpy(), expected_cm)
    got = metric.compute()
    want = numpy_scores(expected_cm)
    for key, value in want.items():
        np.testing.assert_allclose(got[key].numpy(), value, rtol=1e-12, equal_nan=True, err_msg=key)
    # absent class (5): NaN IoU, left out of mIoU; predicted-but-absent class (4): IoU 0
    assert math.isnan(got["IoU"][5]) and got["IoU"][4] == 0
    assert math.isnan(got["CPA"][4])


def test_hand_computed_case():
    # GT:   0 0 1 1    Pred: 0 1 1 1   -> M = [[1,1],[0,2]]
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    result = scores(confusion_matrix(pred, target, 2))
    assert result["PA"] == pytest.approx(3 / 4)
    assert result["IoU"].tolist() == pytest.approx([1 / 2, 2 / 3])
    assert result["CPA"].tolist() == pytest.approx([1 / 2, 1.0])
    assert result["Precision"].tolist() == pytest.approx([1.0, 2 / 3])
    assert result["Dice"].tolist() == pytest.approx([2 / 3, 4 / 5])
    assert result["FWIoU"] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_perfect_prediction_scores_one():
    _, target, c = random_case(0)
    target = np.where(target == IGNORE, 0, target)
    result = scores(confusion_matrix(torch.from_numpy(target), torch.from_numpy(target), c))
    for key in ("PA", "MPA", "mIoU", "FWIoU", "mDice"):
        assert result[key] == pytest.approx(1.0), key
    present = np.unique(target)
    assert torch.allclose(result["IoU"][present], torch.ones(len(present), dtype=torch.float64))


def test_all_ignored_batch_changes_nothing():
    pred, target, c = random_case(1)
    metric = ConfusionMatrix(c, ignore_index=IGNORE)
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    before = metric.confmat.clone()
    metric.update(torch.from_numpy(pred), torch.full_like(torch.from_numpy(target), IGNORE))
    assert torch.equal(metric.confmat, before)


def test_logits_and_labels_agree():
    rng = np.random.default_rng(2)
    logits = torch.from_numpy(rng.normal(size=(2, 4, 9, 11)))
    target = torch.from_numpy(rng.integers(0, 4, size=(2, 9, 11)))
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.confmat, b.confmat) and a.confmat.sum() == target.numel()


def test_two_updates_equal_one_over_concatenation():
    p1, t1, c = random_case(3)
    p2, t2, _ = random_case(4)
    split, joined = ConfusionMatrix(c), ConfusionMatrix(c)
    split.update(torch.from_numpy(p1), torch.from_numpy(t1))
    split.update(torch.from_numpy(p2), torch.from_numpy(t2))
    joined.update(
        torch.from_numpy(np.concatenate([p1, p2])), torch.from_numpy(np.concatenate([t1, t2]))
    )
    assert torch.equal(split.confmat, joined.confmat)


def test_empty_matrix_gives_nan_not_error():
    result = scores(torch.zeros(3, 3, dtype=torch.int64))
    assert all(math.isnan(result[k]) for k in ("PA", "mIoU", "FWIoU"))


def test_wrong_channel_count_is_an_error():
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(3).update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
