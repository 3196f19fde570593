"""Segmentation losses on logits ``[B, C, H, W]`` and integer targets ``[B, H, W]``.

Every loss here takes ``ignore_index``; ignored pixels contribute nothing to the value or the
gradient, and a batch where every pixel is ignored gives a loss of exactly 0 (not NaN).

**One normalisation for the pixel losses** (CE, focal, OHEM): the loss is the mean of the
per-pixel losses ``l_i`` over the pixels it averages (the labelled ones; OHEM: the kept ones),
and with ``class_weights`` the *weighted* mean ``sum_i w[y_i] l_i / sum_i w[y_i]``, PyTorch's
``cross_entropy(weight=...)`` convention. Class weights therefore change which pixels matter,
not the loss's overall scale: multiplying every weight by 10 leaves the loss unchanged, so the
learning rate need not be retuned when weights are switched on.

* :class:`CrossEntropyLoss`: the above, optional label smoothing.
* :class:`FocalLoss`: softmax focal loss ``(1 - p_t)^gamma * CE`` (Lin et al., 2017, in its
  multi-class softmax form), optional label smoothing; ``gamma=0`` is exactly
  :class:`CrossEntropyLoss` (weights and smoothing included). We do not use smp's
  ``FocalLoss(mode="multiclass")``: it sums one-vs-rest *sigmoid* focal losses over classes.
* :class:`OhemCrossEntropyLoss`: cross-entropy over the hard pixels only (online hard
  example mining, mmsegmentation's ``OHEMPixelSampler`` rule).
* :class:`DiceLoss`: soft Dice as the study notes define it (``smooth=1``, per image,
  ``1 - Dice`` averaged over all classes; absent classes may be excluded instead).
* :class:`LovaszSoftmaxLoss`: the Lovasz-softmax surrogate of ``1 - IoU`` (Berman et al.,
  2018), averaged over the classes present, over the batch or per image.
* :class:`WeightedSumLoss`: ``sum_k weight_k * loss_k`` of any of the above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import LovaszLoss
from torch import nn


def _weight_buffer(class_weights: Sequence[float] | None) -> torch.Tensor | None:
    """``[C]`` float tensor of the weights, or ``None``; a name here was never resolved."""
    if isinstance(class_weights, str):
        raise ValueError(
            f"class_weights={class_weights!r} is a name, not a list: it is computed from the "
            "training split's labels by segkit.tasks.class_weights.resolve_class_weights, which "
            "train.py runs before building the loss. Build the loss from the resolved config, "
            "or pass a list of floats."
        )
    if class_weights is None:
        return None
    return torch.tensor([float(w) for w in class_weights])  # ints too: cross_entropy wants float


def _weighted_mean(
    per_pixel: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    class_weights: torch.Tensor | None,
) -> torch.Tensor:
    """``sum(per_pixel[mask]) / sum(w[target][mask])`` (``/ mask.sum()`` without weights).

    ``per_pixel`` ``[B,H,W]`` already holds the factor ``w[y]``; ``mask`` ``[B,H,W]`` marks
    the pixels averaged (never an ignored one). An empty mask gives 0, not NaN.
    """
    total = torch.where(mask, per_pixel, 0.0).sum()
    if class_weights is None:
        normaliser = mask.sum().to(per_pixel.dtype)
    else:
        safe_target = torch.where(mask, target, 0)
        normaliser = (class_weights.to(per_pixel.dtype)[safe_target] * mask).sum()
    return total / normaliser.clamp_min(1e-12)  # empty mask: 0 / eps = 0


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy, ``sum_i w[y_i] CE_i / sum_i w[y_i]`` over the labelled
    pixels ``i`` (``w = 1`` without ``class_weights``: the plain mean), exactly
    ``F.cross_entropy(..., weight=w, ignore_index=..., label_smoothing=...)``.

    Args:
        ignore_index: target value excluded from the loss.
        class_weights: optional per-class weights ``[C]``; the config names
            (``median_frequency``, ``sqrt_median_frequency``, ``inverse_frequency``) are
            resolved to lists beforehand (:mod:`segkit.tasks.class_weights`).
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", _weight_buffer(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_pixel = F.cross_entropy(
            logits,
            target,
            weight=self.class_weights,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction="none",
        )  # [B,H,W], w[y] * CE, 0 at ignored pixels
        valid = target != self.ignore_index
        return _weighted_mean(per_pixel, target, valid, self.class_weights)


class DiceLoss(nn.Module):
    """Soft multi-class Dice loss: ``1 - Dice`` of the softmax probabilities, as the study
    notes define it.

    For image ``b`` (``per_image=True``) or the whole batch (``False``) and class ``c``, with
    ``p`` the softmax probability of ``c`` and ``g`` the one-hot target, over the
    non-ignored pixels::

        Dice_bc = (2 * sum(p * g) + smooth) / (sum(p) + sum(g) + smooth)

    The loss is ``1 - Dice_bc`` averaged over the classes, then over the images. Classes
    absent from an image's ground truth (``sum(g) = 0``):

    * ``absent="include"`` (the notes' rule, default): averaged in like every class, so
      probability put on an absent class is penalised (``Dice = smooth / (sum(p) +
      smooth)``); the mean is over all ``C`` classes.
    * ``absent="exclude"``: left out; the mean is over the classes present in that image
      (batch). An image with no labelled pixel adds 0.

    A class with neither probability nor ground truth has Dice 1 (loss 0), also with
    ``smooth=0`` (0/0 is taken as a perfect match). Ignored pixels add nothing to any sum,
    so their gradient is 0; a batch where every pixel is ignored gives 0.

    segmentation-models-pytorch's ``DiceLoss`` differs (no smoothing by default, whole-batch
    sums, absent classes given loss 0 but still counted in the mean), hence this one.

    Args:
        ignore_index: target value excluded from the loss.
        smooth: added to numerator and denominator (the notes: 1).
        per_image: Dice per image, averaged over the batch (the notes); ``False`` sums the
            whole batch first.
        absent: ``"include"`` or ``"exclude"``, see above.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        smooth: float = 1.0,
        per_image: bool = True,
        absent: str = "include",
    ) -> None:
        super().__init__()
        if absent not in ("include", "exclude"):
            raise ValueError(f"loss.absent must be 'include' or 'exclude', got {absent!r}")
        if smooth < 0:
            raise ValueError(f"loss.smooth must be >= 0, got {smooth}")
        self.ignore_index = ignore_index
        self.smooth = float(smooth)
        self.per_image = per_image
        self.absent = absent

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        valid = (target != self.ignore_index).unsqueeze(1)  # [B,1,H,W]
        probs = F.softmax(logits.float(), dim=1) * valid
        safe_target = torch.where(valid.squeeze(1), target, 0)
        truth = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid
        dims = (2, 3) if self.per_image else (0, 2, 3)
        overlap = (probs * truth).sum(dims)  # [B,C] or [C]
        predicted, present = probs.sum(dims), truth.sum(dims)
        numerator = 2 * overlap + self.smooth
        denominator = predicted + present + self.smooth
        empty = denominator == 0  # smooth=0, nothing predicted, nothing present
        dice = torch.where(empty, 1.0, numerator / torch.where(empty, 1.0, denominator))
        loss = 1 - dice
        if self.absent == "include":
            per_group = loss.mean(-1)
        else:
            keep = (present > 0).to(loss.dtype)
            per_group = (loss * keep).sum(-1) / keep.sum(-1).clamp_min(1)
        return per_group.mean()


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-softmax loss (Berman, Rannen Triki & Blaschko, "The Lovasz-Softmax loss", CVPR
    2018): a surrogate of the Jaccard loss ``1 - IoU`` on the softmax probabilities, its
    Lovasz extension (convex in the errors). Logits ``[B,C,H,W]``, targets ``[B,H,W]``;
    returns a float32 scalar.

    For a group of labelled pixels (the whole batch, or one image with ``per_image=True``)
    and a class ``c`` present in its ground truth, with ``p`` the softmax probability of
    ``c`` and ``g`` the 0/1 target, the errors ``m = |g - p|`` are sorted in decreasing order
    ``m_(1) >= m_(2) >= ...`` and::

        loss_c = sum_i m_(i) * (J(first i pixels) - J(first i-1 pixels)),
        J(M)   = |M| / |M union {g = 1}|    (the Jaccard loss of the mispredicted set M)

    the Lovasz extension of ``J`` at ``m``; with one-hot probabilities it is exactly
    ``1 - IoU_c``. A group's loss is the mean of ``loss_c`` over the classes present in its
    labelled pixels (the paper's default, ``classes="present"``: an absent class is left
    out, whatever probability is put on it); with ``per_image=True`` the loss is the
    mean over the ``B`` images. Ignored pixels are left out before sorting, so their
    gradient is 0.

    The values are segmentation-models-pytorch's ``LovaszLoss(mode="multiclass")`` (the
    paper's reference code), called on each group that has a labelled pixel. Where this
    class differs: a group with no labelled pixel gives 0 (smp returns an empty ``[0, C]``
    tensor for it, and with ``per_image=True`` an all-ignored image makes the batch's loss
    empty or raises), so an all-ignored batch gives exactly 0 with zero gradient, and an
    all-ignored image adds 0 to the per-image mean (as in :class:`DiceLoss`). The loss is
    computed in float32, also under bf16/fp16 autocast (sorting, cumulative sums).

    Args:
        ignore_index: target value excluded from the loss.
        per_image: the loss per image, averaged over the batch; ``False`` (the reference
            code's default) takes the whole batch as one group.
    """

    def __init__(self, ignore_index: int = 255, per_image: bool = False) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.per_image = per_image
        # always over one group: forward splits the batch into images itself (see above)
        self.lovasz = LovaszLoss(
            mode="multiclass", per_image=False, ignore_index=ignore_index, from_logits=True
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        groups = (
            zip(logits.split(1), target.split(1), strict=True)
            if self.per_image
            else [(logits, target)]
        )
        losses = []
        with torch.autocast(logits.device.type, enabled=False):
            for group_logits, group_target in groups:
                if (group_target != self.ignore_index).any():
                    losses.append(self.lovasz(group_logits, group_target))
                else:  # exactly 0, in the graph, zero gradient
                    losses.append(group_logits.flatten()[:0].sum())
        return torch.stack(losses).mean()


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al., 2017), optionally with label smoothing.

    Per labelled pixel with true class ``y``, softmax probabilities ``p`` over ``C``
    classes, smoothing ``eps`` and weights ``w`` (all 1 without ``class_weights``)::

        f_c = (1 - p_c) ** gamma * -log(p_c)
        l   = (1 - eps) * w[y] * f_y + eps / C * sum_c w[c] * f_c

    i.e. the focal term applied to each class of the smoothed target
    ``(1 - eps) * onehot(y) + eps / C``, weighted as PyTorch weights a smoothed
    cross-entropy. The loss is ``sum_i l_i / sum_i w[y_i]`` over the labelled pixels (the
    module docstring's normalisation; before, weighted focal divided by the pixel count).
    With ``gamma=0`` it equals :class:`CrossEntropyLoss` with the same weights and smoothing.

    Args:
        ignore_index: target value excluded from the loss.
        gamma: focusing parameter; ``gamma=0`` gives cross-entropy.
        class_weights: optional per-class weights ``[C]`` (the ``alpha`` of the paper).
        label_smoothing: ``eps`` above, in ``[0, 1]``, as in
            :func:`torch.nn.functional.cross_entropy`.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        gamma: float = 2.0,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"loss.gamma must be >= 0, got {gamma}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"loss.label_smoothing must be in [0, 1], got {label_smoothing}")
        self.ignore_index = ignore_index
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", _weight_buffer(class_weights), persistent=False)

    def _focal(self, log_p: torch.Tensor) -> torch.Tensor:
        """``(1 - p) ** gamma * -log(p)`` elementwise, from ``log(p)``."""
        return -((1 - log_p.exp()) ** self.gamma) * log_p

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, 0)
        log_p = F.log_softmax(logits, dim=1)  # [B,C,H,W]
        weights = self.class_weights
        log_p_true = log_p.gather(1, safe_target.unsqueeze(1)).squeeze(1)  # [B,H,W]
        loss = self._focal(log_p_true)  # f_y
        if weights is not None:
            loss = loss * weights.to(loss.dtype)[safe_target]
        if self.label_smoothing > 0:  # the [B,C,H,W] focal terms only when they are needed
            every = self._focal(log_p)
            if weights is not None:
                every = every * weights.to(every.dtype).view(1, -1, 1, 1)
            eps, num_classes = self.label_smoothing, logits.shape[1]
            loss = (1 - eps) * loss + eps / num_classes * every.sum(1)
        return _weighted_mean(loss, target, valid, weights)


class OhemCrossEntropyLoss(nn.Module):
    """Cross-entropy over the hard pixels of the batch: online hard example mining with
    mmsegmentation's ``OHEMPixelSampler`` rule.

    Selection (without gradient), over the **whole batch** at once (not image by image),
    with ``k = min(min_kept * B, labelled pixels)``:

    * ``thresh`` set: a labelled pixel is kept when the softmax probability of its true
      class is ``< thresh``; in any case the ``k`` labelled pixels of lowest true-class
      probability are kept, so at least ``k`` are (``min_kept`` counts per image, as in
      mmseg, but the hard pixels may come from any image).
    * ``thresh=None``: exactly the ``k`` labelled pixels of highest loss (with
      ``class_weights``, the weighted loss ``w[y] CE``) are kept.

    Ignored pixels are never kept. Ties at the ``k``-th place are broken arbitrarily. Under
    DDP each process selects from its own batch (``B`` is the per-process batch size). The
    loss is the weighted mean over the kept pixels, ``sum_kept w[y] CE / sum_kept w[y]``
    (``w = 1`` without ``class_weights``: the plain mean over kept pixels); 0 when nothing is
    kept. It differs from mmseg's sampler in two places: mmseg averages over all labelled
    pixels (unkept ones count as 0), and with ``min_kept`` at or above the labelled count it
    drops the most confident pixel; here every pixel is kept then.

    Args:
        ignore_index: target value excluded from the loss and never kept.
        thresh: true-class probability below which a pixel is hard, in ``(0, 1]``, or
            ``None`` to keep the ``min_kept * B`` highest-loss pixels.
        min_kept: pixels kept at least, per image of the batch (``>= 0``).
        class_weights: optional per-class weights ``[C]``, as in :class:`CrossEntropyLoss`.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        thresh: float | None = 0.7,
        min_kept: int = 100000,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if thresh is not None and not 0.0 < thresh <= 1.0:
            raise ValueError(
                f"loss.thresh must be in (0, 1] (a probability) or null (keep the "
                f"loss.min_kept hardest pixels), got {thresh}"
            )
        if min_kept < 0 or int(min_kept) != min_kept:
            raise ValueError(f"loss.min_kept must be an integer >= 0, got {min_kept}")
        if thresh is None and min_kept == 0:
            raise ValueError("loss.thresh=null keeps loss.min_kept pixels: set min_kept > 0")
        self.ignore_index = ignore_index
        self.thresh = thresh
        self.min_kept = int(min_kept)
        self.register_buffer("class_weights", _weight_buffer(class_weights), persistent=False)

    @torch.no_grad()
    def kept_pixels(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The pixels the loss averages: bool ``[B,H,W]`` (the selection rule above)."""
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, 0).unsqueeze(1)
        if self.thresh is not None:
            prob = F.softmax(logits.float(), dim=1).gather(1, safe_target).squeeze(1)
            kept = valid & (prob < self.thresh)
            hardness = -prob  # lower true-class probability = harder
        else:
            hardness = F.cross_entropy(
                logits.float(), target, weight=self.class_weights,
                ignore_index=self.ignore_index, reduction="none",
            )  # fmt: skip
            kept = torch.zeros_like(valid)
        k = min(self.min_kept * target.shape[0], int(valid.sum()))
        if k > 0:
            hardness = torch.where(valid, hardness, -math.inf)  # ignored: never among the k
            hardest = hardness.flatten().topk(k).indices
            kept = kept.flatten().index_fill(0, hardest, True).view_as(kept)
        return kept

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_pixel = F.cross_entropy(
            logits, target, weight=self.class_weights, ignore_index=self.ignore_index,
            reduction="none",
        )  # fmt: skip  # [B,H,W], w[y] * CE, 0 at ignored pixels
        kept = self.kept_pixels(logits, target)
        return _weighted_mean(per_pixel, target, kept, self.class_weights)


class WeightedSumLoss(nn.Module):
    """Weighted sum of named losses.

    Args:
        losses: name -> loss module, each called as ``loss(logits, target)``.
        weights: name -> weight; names missing here get weight 1.
    """

    def __init__(
        self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        weights = dict(weights or {})
        unknown = set(weights) - set(losses)
        if unknown:
            raise ValueError(f"weights given for unknown losses {sorted(unknown)}")
        self.losses = nn.ModuleDict(losses)
        self.weights = {name: float(weights.get(name, 1.0)) for name in losses}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.losses.items())
