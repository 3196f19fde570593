"""Semantic segmentation scores from one confusion matrix.

Contract: :class:`ConfusionMatrix` accumulates an int64 ``[C, C]`` matrix ``M``, rows = ground
truth, columns = prediction, pixels whose target is ``ignore_index`` dropped, on the inputs'
device, summed across processes (``dist_reduce_fx="sum"``); :func:`scores` derives every score
from ``M`` alone, and a 0/0 ratio is NaN and left out of every mean. :class:`InstanceIoU` adds
Cityscapes' instance-level iIoU where the ground truth carries instance ids (per class with
instances, per category, and their means). The formulas and the NaN rule, class by class, are
in docs/evaluation.md, "Metrics"; the iIoU definition in its "Cityscapes" section.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Elementwise ratio of real-valued sums, NaN where the denominator is zero."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.nan)


def _none_for_nan(value: float | dict[str, float]) -> Any:
    if isinstance(value, dict):
        return {key: _none_for_nan(v) for key, v in value.items()}
    return None if math.isnan(value) else value


def _nanmean(values: Iterable[float]) -> float:
    return torch.tensor(list(values), dtype=torch.float64).nanmean().item()


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


# The instance-level score of the Cityscapes benchmark (cityscapesScripts'
# evaluation/evalPixelLevelSemanticLabeling.py): the average instance size in pixels of each
# evaluated class with instances, over the training set (its ``args.avgClassSize`` defaults,
# which the benchmark uses), and the categories whose classes all have instances.
CITYSCAPES_AVERAGE_INSTANCE_SIZE = {
    "person": 3462.4756337644,
    "rider": 3930.4788056518,
    "car": 12794.0202738185,
    "truck": 27855.1264367816,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "motorcycle": 6298.7200839748,
    "bicycle": 4672.3249222261,
}
CITYSCAPES_CATEGORIES = {
    "human": ("person", "rider"),
    "vehicle": ("car", "truck", "bus", "train", "motorcycle", "bicycle"),
}


class InstanceIoU(Metric):
    """Instance-level IoU (iIoU) of Cityscapes (Cordts et al., 2016, Sec. 3.2).

    IoU favours large objects. iIoU weights every ground-truth instance by
    ``average_size[class] / instance size``: for class ``c``, ``iTP_c`` and ``iFN_c`` are the
    weighted sums over its instances of the instance pixels predicted ``c`` and not ``c``;
    false positives are not weighted (no instance to attach them to), ``FP_c = Pred_c - TP_c``
    of the confusion matrix. ``iIoU_c = iTP_c / (iTP_c + iFN_c + FP_c)``. A category's iIoU is
    the same with "predicted as any class of the category" for a hit and the category's
    columns, outside its rows, for FP. A zero denominator gives NaN, left out of the means.

    Args:
        class_names: the ``C`` class names; those in ``average_sizes`` have instances.
        average_sizes: ``{class name: average instance size in pixels}`` (Cityscapes'
            training-set defaults, as the official script uses).
        categories: ``{category: class names}``, each scored when all its classes are known.

    ``update(preds, target, instances)`` takes labels ``[B, H, W]`` (or logits ``[B, C, H,
    W]``), ground truth ``[B, H, W]`` and instance ids ``[B, H, W]`` (``0``: no instance;
    every other value marks the pixels of one instance within its image, as Cityscapes'
    ``*_instanceIds.png`` above 1000 do). Pixels whose ground truth is ignored or a class
    without instances are skipped. :meth:`scores` combines the sums with the confusion matrix.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        class_names: Sequence[str],
        average_sizes: Mapping[str, float] = CITYSCAPES_AVERAGE_INSTANCE_SIZE,
        categories: Mapping[str, Sequence[str]] = CITYSCAPES_CATEGORIES,
    ) -> None:
        super().__init__()
        names = list(class_names)
        self.class_names = names
        sizes = [float(average_sizes.get(name, 0.0)) for name in names]
        self.categories = {
            category: [names.index(n) for n in members]
            for category, members in categories.items()
            if all(n in names for n in members)
        }
        category_of = [-1] * len(names)
        for index, members in enumerate(self.categories.values()):
            for member in members:
                category_of[member] = index
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.float64), persistent=False)
        self.register_buffer("category_of", torch.tensor(category_of), persistent=False)
        zeros = {"": len(names), "category_": len(self.categories)}
        for prefix, count in zeros.items():
            for key in ("tp", "fn"):
                default = torch.zeros(count, dtype=torch.float64)
                self.add_state(f"{prefix}{key}", default=default, dist_reduce_fx="sum")
        self.add_state("images", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, instances: torch.Tensor) -> None:
        if preds.ndim == target.ndim + 1:
            preds = labels_from_logits(preds)
        num_classes = len(self.class_names)
        for pred, truth, ids in zip(preds, target, instances, strict=True):
            pred, truth, ids = pred.reshape(-1).long(), truth.reshape(-1).long(), ids.reshape(-1)
            known = (truth >= 0) & (truth < num_classes)
            keep = (ids > 0) & known & (self.sizes[truth.clamp(0, num_classes - 1)] > 0)
            pred, truth, ids = pred[keep].clamp(0, num_classes - 1), truth[keep], ids[keep]
            if ids.numel() == 0:
                continue
            _, inverse = torch.unique(ids, return_inverse=True)  # instance index per pixel
            count = int(inverse.max()) + 1
            size = torch.bincount(inverse, minlength=count).double()  # [N]
            cls = torch.zeros(count, dtype=torch.long, device=ids.device).scatter_(
                0, inverse, truth
            )
            weight = self.sizes[cls] / size
            hit = torch.bincount(inverse, weights=(pred == truth).double(), minlength=count)
            self.tp.index_add_(0, cls, hit * weight)
            self.fn.index_add_(0, cls, (size - hit) * weight)
            category = self.category_of[cls]
            same = (self.category_of[pred] == self.category_of[truth]).double()
            hit = torch.bincount(inverse, weights=same, minlength=count)
            inside = category >= 0
            self.category_tp.index_add_(0, category[inside], (hit * weight)[inside])
            self.category_fn.index_add_(0, category[inside], ((size - hit) * weight)[inside])
        self.images += len(target)

    def compute(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError("InstanceIoU needs the confusion matrix: call scores(confmat)")

    def scores(self, confmat: torch.Tensor) -> dict[str, Any] | None:
        """iIoU from the accumulated sums (all processes) and ``confmat`` (int64 ``[C, C]``,
        rows = ground truth, ignored pixels left out), or ``None`` when no image carried
        instance ids.

        Returns:
            ``iIoU``: ``{class: value}`` for the classes with instances; ``iIoU_class``: their
            nanmean; ``category_iIoU``: ``{category: value}``; ``iIoU_category``: its
            nanmean. Floats, ``None`` for a zero denominator (``null`` in ``metrics.json``).
        """
        with self.sync_context(should_unsync=True):
            if int(self.images) == 0:
                return None
            tp, fn = self.tp.cpu(), self.fn.cpu()
            category_tp, category_fn = self.category_tp.cpu(), self.category_fn.cpu()
        m = torch.as_tensor(confmat).cpu().to(torch.float64)
        false_pos = m.sum(0) - m.diagonal()
        per_class = _ratio(tp, tp + fn + false_pos)
        has_instances = self.sizes.cpu() > 0
        iiou = {
            name: value
            for name, value, kept in zip(
                self.class_names, per_class.tolist(), has_instances.tolist(), strict=True
            )
            if kept
        }
        by_category = {}
        for index, (category, members) in enumerate(self.categories.items()):
            outside = [i for i in range(len(self.class_names)) if i not in members]
            fp = m[outside][:, members].sum()
            denominator = category_tp[index] + category_fn[index] + fp
            by_category[category] = _ratio(category_tp[index], denominator).item()
        result = {
            "iIoU": iiou,
            "iIoU_class": _nanmean(iiou.values()),
            "category_iIoU": by_category,
            "iIoU_category": _nanmean(by_category.values()),
        }
        return {key: _none_for_nan(value) for key, value in result.items()}
