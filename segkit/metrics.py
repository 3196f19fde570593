"""Semantic segmentation scores from one confusion matrix.

Conventions (used everywhere in segkit: logs, ``metrics.json``, ``per_class.csv``):

* The confusion matrix ``M`` is int64 ``[C, C]``; **rows are ground truth, columns are
  predictions**: ``M[i, j]`` counts pixels of true class ``i`` predicted as ``j``.
  Pixels whose target equals ``ignore_index`` are dropped before counting.
* ``GT_i = sum_j M[i, j]``, ``Pred_i = sum_j M[j, i]``, ``TP_i = M[i, i]``, ``total = sum M``.
* ``PA = trace / total``; ``CPA_i = TP_i / GT_i`` (per-class recall); ``MPA = nanmean(CPA)``.
* ``IoU_i = TP_i / (GT_i + Pred_i - TP_i)``; ``mIoU = nanmean(IoU)``.
* ``FWIoU = sum over classes with GT_i > 0 of (GT_i / total) * IoU_i``.
* ``Dice_i = 2 TP_i / (GT_i + Pred_i)``; ``mDice = nanmean(Dice)``;
  ``Precision_i = TP_i / Pred_i``.
* A ratio whose denominator is zero is NaN and is left out of every mean (the nanmean
  convention of mmsegmentation): a class with neither ground truth nor prediction has NaN
  IoU/Dice; a class absent from the ground truth has NaN CPA; a class never predicted has
  NaN Precision. A class that is predicted but absent from the ground truth gets IoU 0 and
  Dice 0, so false positives on absent classes do lower mIoU.

The counts are accumulated on the device of the inputs and summed across processes by
torchmetrics (``dist_reduce_fx="sum"``), so a score never depends on the number of GPUs
(provided every pixel is seen exactly once).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

PER_CLASS_KEYS = ("IoU", "CPA", "Precision", "Dice")


def _index_dtype(num_bins: int) -> torch.dtype:
    """The narrowest signed integer type that holds ``0 .. num_bins - 1``."""
    for dtype in (torch.int16, torch.int32):
        if num_bins - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def _clamp_labels(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Labels as ``dtype`` with every value outside ``[0, C)`` moved to ``-1`` or ``C``.

    The clamp runs in the input's own type (no int64 upcast) and is skipped where the type
    cannot hold an out-of-range value, so uint8 labels cost one narrow pass. On the CPU, wide
    labels whose values all fit ``dtype`` (one read to check) are narrowed first and clamped
    in place, which saves writing a full-width clamped copy; elsewhere that check would be a
    host synchronisation, so other devices clamp first.
    """
    if labels.dtype == torch.bool:
        labels = labels.to(torch.uint8)
    elif labels.is_floating_point():
        labels = labels.long()  # integral labels stored as floats
    info = torch.iinfo(labels.dtype)
    low = -1 if info.min < 0 else None
    high = num_classes if info.max > num_classes else None
    if low is None and high is None:
        return labels.to(dtype)
    narrow = torch.iinfo(dtype)
    if labels.device.type == "cpu" and info.bits > narrow.bits and labels.numel() > 0:
        smallest, largest = labels.aminmax()
        if smallest >= narrow.min and largest <= narrow.max:
            return labels.to(dtype).clamp_(low, high)
    return labels.clamp(low, high).to(dtype)


def _scatter_histogram(index: torch.Tensor, num_bins: int) -> torch.Tensor:
    """int64 counts ``[num_bins]`` of ``index`` (values in ``[0, num_bins)``) by ``scatter_add_``.

    Used off the CPU: CUDA ``bincount`` reads ``index.max()`` back to the host (a
    synchronisation), while a fixed-size buffer needs none, and 1-D ``scatter_add_`` stays
    deterministic under ``torch.use_deterministic_algorithms(True)``.
    """
    counts = torch.zeros(num_bins, dtype=torch.int64, device=index.device)
    ones = torch.ones(1, dtype=torch.int64, device=index.device).expand(index.numel())
    return counts.scatter_add_(0, index.long(), ones)


def _histogram(index: torch.Tensor, num_bins: int) -> torch.Tensor:
    """int64 counts ``[num_bins]``: ``bincount`` on the CPU (no int64 copy of the index)."""
    if index.device.type == "cpu":
        return torch.bincount(index, minlength=num_bins)
    return _scatter_histogram(index, num_bins)


def confusion_matrix(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """Count (target, prediction) pairs.

    Args:
        preds: predicted labels ``[...]`` (any integer dtype), same shape as ``target``.
        target: ground-truth labels ``[...]``; ``ignore_index`` marks pixels to drop.
        num_classes: ``C``.
        ignore_index: label value to drop, or ``None``.

    Returns:
        int64 ``[C, C]`` on the inputs' device, rows = ground truth, columns = prediction.
        Target values outside ``[0, C)`` that are not ``ignore_index`` are dropped as well;
        datasets validate labels, so this only guards the index arithmetic.
    """
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ")
    # Every label is first clamped into [-1, C], so out-of-range values (including an
    # ignore_index outside the classes) land in the border rows/columns of a (C+2)x(C+2)
    # histogram that are cut off afterwards. No pixel is removed by boolean-mask indexing
    # (which needs the count of kept pixels on the host: a device sync on GPU, and a copy
    # on CPU), and the fused index is int16 for C <= 179 instead of int64.
    side = num_classes + 2
    dtype = _index_dtype(side * side)
    rows = _clamp_labels(target.reshape(-1), num_classes, dtype)
    cols = _clamp_labels(preds.reshape(-1), num_classes, dtype)
    index = torch.add(cols, rows, alpha=side).add_(side + 1)  # (row + 1) * side + (col + 1)
    counts = _histogram(index, side * side).reshape(side, side)
    matrix = counts[1 : num_classes + 1, 1 : num_classes + 1]
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        matrix = matrix.clone()
        matrix[ignore_index] = 0  # an ignored class index: drop its ground-truth row
    return matrix.contiguous()


# Pixels per block of labels_from_logits: one block's scores (C x 4 bytes per pixel) and its
# scratch stay in the L2 cache, so each pass over the channels reads memory only once.
_ARGMAX_BLOCK_PIXELS = 1 << 15


def labels_from_logits(logits: torch.Tensor, block: int = _ARGMAX_BLOCK_PIXELS) -> torch.Tensor:
    """``logits.argmax(dim=1)``, computed faster on the CPU.

    Args:
        logits: ``[B, C, ...]`` scores.
        block: pixels per block on the CPU (a speed knob; the result does not depend on it).

    Returns:
        ``[B, ...]`` class indices (the first maximum on ties, as ``torch.argmax``); int16
        on the CPU for ``C <= 255``, int64 elsewhere.

    On the CPU ``argmax`` over the channel dimension runs several times slower than ``amax``
    (it does not vectorise over the strided channels). Instead, per block of pixels: ``best =
    amax`` over the channels, then the channels that reach it are weighted ``C - c`` in uint8
    and their ``amax`` is ``C`` minus the lowest such ``c``, so ties go to the lowest index.
    A block holding NaN falls back to ``torch.argmax`` (which treats NaN as the maximum).
    Other devices, and ``C > 255``, use ``torch.argmax`` directly.
    """
    batch, num_classes = logits.shape[:2]
    if logits.device.type != "cpu" or num_classes > torch.iinfo(torch.uint8).max:
        return logits.argmax(dim=1)
    scores = logits.reshape(batch, num_classes, -1)  # a view unless logits are channels_last
    weights = torch.arange(num_classes, 0, -1, dtype=torch.uint8).view(num_classes, 1)
    labels = torch.empty((batch, scores.shape[2]), dtype=torch.int16)
    for image in range(batch):
        for start in range(0, scores.shape[2], block):
            part = scores[image, :, start : start + block]  # [C, n]
            out = labels[image, start : start + block]
            best = part.amax(dim=0, keepdim=True)
            if best.isnan().any():
                out.copy_(part.argmax(dim=0))
                continue
            reached = (part == best).view(torch.uint8).mul_(weights)  # C - c where c is a max
            torch.sub(num_classes, reached.amax(dim=0), out=out)
    return labels.reshape(logits.shape[:1] + logits.shape[2:])


def _divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Elementwise ratio that is NaN where the denominator is zero."""
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1), torch.nan)


def scores(confmat: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
    """All segmentation scores from a confusion matrix (see the module docstring).

    Args:
        confmat: ``[C, C]`` counts, rows = ground truth, columns = prediction.

    Returns:
        Dict with float64 tensors on the matrix's device: per-class ``[C]`` for ``CPA``,
        ``IoU``, ``Dice``, ``Precision``; 0-dim for ``PA``, ``MPA``, ``mIoU``, ``FWIoU``,
        ``mDice``.
    """
    m = torch.as_tensor(confmat).to(torch.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got {tuple(m.shape)}")
    tp = m.diagonal()
    gt = m.sum(dim=1)
    pred = m.sum(dim=0)
    total = m.sum()
    iou = _divide(tp, gt + pred - tp)
    cpa = _divide(tp, gt)
    dice = _divide(2 * tp, gt + pred)
    frequency = _divide(gt, total.expand_as(gt))
    has_gt = gt > 0
    fwiou = torch.where(has_gt, frequency * iou, 0.0).sum()
    if total == 0:
        fwiou = torch.tensor(torch.nan, dtype=torch.float64, device=m.device)
    return {
        "PA": _divide(tp.sum(), total),
        "CPA": cpa,
        "MPA": cpa.nanmean(),
        "IoU": iou,
        "mIoU": iou.nanmean(),
        "FWIoU": fwiou,
        "Dice": dice,
        "mDice": dice.nanmean(),
        "Precision": _divide(tp, pred),
    }


class ConfusionMatrix(Metric):
    """Confusion matrix accumulated on the device, summed across processes.

    Args:
        num_classes: ``C``.
        ignore_index: target value whose pixels are dropped (``None`` keeps all).

    ``update(preds, target)`` takes logits ``[B, C, H, W]`` (argmax over dim 1) or labels
    ``[B, H, W]``, and targets ``[B, H, W]``. ``compute()`` returns :func:`scores` of the
    accumulated matrix; the matrix itself is the ``confmat`` attribute (int64 ``[C, C]``,
    rows = ground truth).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state(
            "confmat",
            default=torch.zeros(num_classes, num_classes, dtype=torch.int64),
            dist_reduce_fx="sum",
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim == target.ndim + 1:
            if preds.shape[1] != self.num_classes:
                raise ValueError(
                    f"logits have {preds.shape[1]} channels but num_classes={self.num_classes}"
                )
            preds = labels_from_logits(preds)
        self.confmat += confusion_matrix(preds, target, self.num_classes, self.ignore_index)

    def compute(self) -> dict[str, torch.Tensor]:
        return scores(self.confmat)

    def compute_confmat(self) -> torch.Tensor:
        """The accumulated matrix summed over all processes (int64 ``[C, C]``)."""
        with self.sync_context(should_unsync=True):
            return self.confmat.clone()
