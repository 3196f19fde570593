"""The ISBI 2012 challenge's pixel and Rand errors (segkit.evaluation.membrane_metrics):
hand-computed cases, scikit-image's adapted Rand error on real and synthetic label maps and
perturbed predictions, threshold maximisation, pooling over images, and the task's
reporting."""

from __future__ import annotations

from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage.metrics import adapted_rand_error
from torch import nn
from torch.utils.data import DataLoader

from segkit.evaluation.membrane_metrics import (
    MembraneErrors,
    cell_segments,
    rand_counts,
    rand_f_score,
)
from segkit.tasks.losses import CrossEntropyLoss
from segkit.tasks.semantic import SemanticSegmentationTask

from ..helpers import SHARED_DATA

ISBI = SHARED_DATA / "isbi2012"
needs_isbi = pytest.mark.skipif(
    not (ISBI / "labels" / "00.png").is_file(),
    reason=f"shared ISBI 2012 data not found at {ISBI} (see ../shared/data/isbi2012/README.md)",
)


def logits_of(cell_probability: np.ndarray) -> torch.Tensor:
    """Log-probabilities ``[1, 2, H, W]`` (membrane, cell) of a cell-probability map."""
    p = torch.as_tensor(cell_probability, dtype=torch.float64)
    return torch.stack([(1 - p).log(), p.log()])[None]


def test_pixel_error_by_hand():
    # membrane 0, cells 1 and 2 (both "cell"), one ignored pixel (255)
    target = torch.tensor([[[0, 1, 2, 255], [0, 0, 1, 1]]])
    labels = torch.tensor([[[0, 0, 1, 1], [1, 0, 2, 1]]])
    metric = MembraneErrors(membrane_class=0, ignore_index=255)
    metric.update(labels, target)
    # scored: 7 pixels; wrong: (0,1) cell predicted membrane, (1,0) membrane predicted cell;
    # (0,2) and (1,2) swap cell classes, which is no membrane error
    assert metric.compute()["pixel_error"] == pytest.approx(2 / 7)


def test_rand_counts_by_hand():
    truth = cell_segments(np.array([[True, True, False, True, True]]))  # cells {0,1}, {3,4}
    # one predicted cell over both (and over the membrane pixel, which is not counted):
    # TP = 2^2 + 2^2, TP + FP = 4^2, TP + FN = 2^2 + 2^2
    merged = rand_counts(truth, cell_segments(np.ones((1, 5), bool)))
    np.testing.assert_array_equal(merged, [8, 8, 0])
    assert 1 - rand_f_score(merged) == pytest.approx(1 / 3)
    # pixel 1 predicted membrane: a segment of its own. n_ij: 1 ({0}), 2 ({3,4}), s = 1:
    # TP = 1 + 4 + 1, TP + FP = 1 + 4 + 1, TP + FN = 8
    split = rand_counts(truth, cell_segments(np.array([[True, False, False, True, True]])))
    np.testing.assert_array_equal(split, [6, 0, 2])
    assert 1 - rand_f_score(split) == pytest.approx(1 - 12 / 14)


def test_segments_are_4_connected():
    segments = cell_segments(np.array([[True, False], [False, True]]))
    assert sorted(np.unique(segments).tolist()) == [0, 1, 2]  # diagonal pixels: two cells


def test_rand_error_is_maximised_over_thresholds():
    """A weak membrane pixel (cell probability 0.55) merges two cells at the argmax; the
    challenge's thresholds (0.6 and up) separate them, so the maximal F-score is 1."""
    target = torch.tensor([[[1, 1, 0, 1, 1]]])
    probability = np.array([[0.9, 0.9, 0.55, 0.9, 0.9]])
    best = MembraneErrors()
    best.update(logits_of(probability), target)
    at_half = MembraneErrors(thresholds=(0.5,))
    at_half.update(logits_of(probability), target)
    labels = MembraneErrors()
    labels.update(logits_of(probability).argmax(1), target)
    assert best.compute()["rand_error"] == pytest.approx(0.0, abs=1e-12)
    assert at_half.compute()["rand_error"] == pytest.approx(1 / 3)
    assert labels.compute()["rand_error"] == pytest.approx(1 / 3)
    assert best.compute()["pixel_error"] == pytest.approx(1 / 5)  # from the argmax labels


def test_counts_are_pooled_over_images():
    """Fiji sums TP, FP and FN over the slices before the F-score (no mean of F-scores)."""
    rng = np.random.default_rng(0)
    truths = [brick_wall(48, 10 + 3 * i) for i in range(3)]
    preds = [t ^ (rng.random(t.shape) < 0.05) for t in truths]
    pairs = list(zip(truths, preds, strict=True))
    metric = MembraneErrors()
    for truth, pred in pairs:  # labels: membrane 0, cell 1
        metric.update(torch.from_numpy(pred).long()[None], torch.from_numpy(truth).long()[None])
    counts = [rand_counts(cell_segments(t), cell_segments(p)) for t, p in pairs]
    result = metric.compute()["rand_error"]
    assert result == pytest.approx(1 - rand_f_score(sum(counts)))
    assert result != pytest.approx(np.mean([1 - rand_f_score(c) for c in counts]), abs=1e-6)


# --- against scikit-image's adapted Rand error -------------------------------------------


def brick_wall(size: int, period: int) -> np.ndarray:
    """bool ``[size, size]`` cell map: rectangular cells between 2-pixel membranes, every
    other row of cells offset by half a cell (a synthetic slice)."""
    cell = np.ones((size, size), bool)
    for top in range(0, size, period):
        cell[top : top + 2] = False
        offset = (top // period % 2) * (period // 2)
        for left in range(offset, size, period):
            cell[top : top + period, left : left + 2] = False
    return cell


def perturbations(cell: np.ndarray) -> dict[str, np.ndarray]:
    """Predicted cell maps: exact, thicker and thinner membranes, pixel noise, a shift, a
    membrane gap (a merge), everything cell, everything membrane."""
    rng = np.random.default_rng(0)
    gap = cell.copy()
    height, width = cell.shape
    gap[height // 3 : height // 3 + 12, : width // 2] = True
    return {
        "exact": cell,
        "thick membrane": ndimage.binary_erosion(cell),
        "thin membrane": ndimage.binary_dilation(cell),
        "noise 5%": cell ^ (rng.random(cell.shape) < 0.05),
        "shift 3 px": np.roll(cell, 3, axis=1),
        "membrane gap": gap,
        "all cell": np.ones_like(cell),
        "all membrane": np.zeros_like(cell),
    }


def skimage_rand_error(truth_cell: np.ndarray, predicted_cell: np.ndarray) -> float:
    """scikit-image's adapted Rand error of the same segmentations, each predicted membrane
    pixel given its own label (the challenge counts them as singletons, skimage's 0 would be
    one segment)."""
    truth = cell_segments(truth_cell)
    predicted = cell_segments(predicted_cell).astype(np.int64)
    membrane = ~predicted_cell
    predicted[membrane] = predicted.max() + 1 + np.arange(np.count_nonzero(membrane))
    return adapted_rand_error(truth, predicted)[0]


def check_against_skimage(truth_cell: np.ndarray, predicted_cell: np.ndarray) -> float:
    """Check the pair counts against skimage; return ours minus skimage's Rand error."""
    counts = rand_counts(cell_segments(truth_cell), cell_segments(predicted_cell))
    tp, fp, fn = (float(v) for v in counts)
    n = np.count_nonzero(truth_cell)  # pairs of a pixel with itself: n of TP, TP+FP, TP+FN
    reference = skimage_rand_error(truth_cell, predicted_cell)
    # skimage counts pairs of distinct pixels: the same sums less the n self-pairs
    assert 1 - (tp - n) / ((2 * tp + fp + fn) / 2 - n) == pytest.approx(reference, abs=1e-12)
    return 1 - rand_f_score(counts) - reference


CASES = list(perturbations(brick_wall(96, 16)))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # skimage, all membrane
@pytest.mark.parametrize("case", CASES)
def test_matches_skimage_on_a_synthetic_slice(case):
    truth = brick_wall(96, 16)
    check_against_skimage(truth, perturbations(truth)[case])


@pytest.mark.shared_data
@needs_isbi
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # skimage, all membrane
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stem", ["00", "11", "23"])
def test_matches_skimage_on_isbi_label_slices(stem, case):
    truth = np.asarray(Image.open(ISBI / "labels" / f"{stem}.png")) == 255  # 255: cell
    # the self-pairs are a small share of a slice's pairs (cells of thousands of pixels)
    assert abs(check_against_skimage(truth, perturbations(truth)[case])) < 1e-3


# --- the task reports them ---------------------------------------------------------------


def test_task_refuses_a_membrane_class_that_is_no_class():
    with pytest.raises(ValueError, match=r"task.membrane_class=2 is no class of 0..1"):
        SemanticSegmentationTask(
            nn.Conv2d(1, 2, 1),
            CrossEntropyLoss(),
            torch.optim.SGD,
            None,
            2,
            ["m", "c"],
            membrane_class=2,
        )


def test_task_logs_and_keeps_the_errors():
    """task.membrane_class=0: validation logs val/pixel_error and val/rand_error and keeps
    them in extra_scores (metrics.json), equal to the metric on the same logits."""
    torch.manual_seed(0)
    model = nn.Conv2d(1, 2, 1)  # logits from grey values
    truths = [brick_wall(32, 8 + 2 * i) for i in range(4)]
    samples = [
        {
            "image": torch.from_numpy(t.astype(np.float32))[None] + 0.3 * torch.randn(1, 32, 32),
            "mask": torch.from_numpy(t.astype(np.int64)),
        }
        for t in truths
    ]
    task = SemanticSegmentationTask(
        model=model,
        loss=CrossEntropyLoss(),
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=None,
        num_classes=2,
        class_names=["membrane", "cell"],
        membrane_class=0,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(task, dataloaders=DataLoader(samples, batch_size=2), verbose=False)
    expected = MembraneErrors()
    with torch.no_grad():
        for sample in samples:
            expected.update(model(sample["image"][None]), sample["mask"][None])
    scores = expected.compute()
    for key in ("pixel_error", "rand_error"):
        assert task.extra_scores["val"][key] == pytest.approx(scores[key])
        assert trainer.callback_metrics[f"val/{key}"].item() == pytest.approx(scores[key])
