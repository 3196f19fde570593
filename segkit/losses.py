"""Segmentation losses on logits ``[B, C, H, W]`` and integer targets ``[B, H, W]``.

Every loss here takes ``ignore_index``; ignored pixels contribute nothing to the value or the
gradient, and a batch where every pixel is ignored gives a loss of exactly 0 (not NaN).

* :class:`CrossEntropyLoss`: mean over non-ignored pixels, weighted as in PyTorch
  (``sum_i w[y_i] l_i / sum_i w[y_i]``), optional label smoothing.
* :class:`DiceLoss`: soft Dice as the study notes define it (``smooth=1``, per image,
  ``1 - Dice`` averaged over all classes; absent classes may be excluded instead).
* :class:`FocalLoss`: softmax focal loss ``(1 - p_t)^gamma * CE`` (Lin et al., 2017, in its
  multi-class softmax form), mean over non-ignored pixels. We do not use smp's
  ``FocalLoss(mode="multiclass")``: it sums one-vs-rest *sigmoid* focal losses over classes.
* :class:`WeightedSumLoss`: ``sum_k weight_k * loss_k`` of any of the above.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _weight_buffer(class_weights: Sequence[float] | None) -> torch.Tensor | None:
    """``[C]`` float tensor of the weights, or ``None``; a name here was never resolved."""
    if isinstance(class_weights, str):
        raise ValueError(
            f"class_weights={class_weights!r} is a name, not a list: it is computed from the "
            "training split's labels by segkit.class_weights.resolve_class_weights, which "
            "train.py runs before building the loss. Build the loss from the resolved config, "
            "or pass a list of floats."
        )
    if class_weights is None:
        return None
    return torch.tensor([float(w) for w in class_weights])  # ints too: cross_entropy wants float


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy.

    Args:
        ignore_index: target value excluded from the loss.
        class_weights: optional per-class weights ``[C]``; the config names
            ``median_frequency``/``inverse_frequency`` are resolved to lists beforehand
            (:mod:`segkit.class_weights`).
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
        )  # [B,H,W], 0 at ignored pixels
        valid = target != self.ignore_index
        if self.class_weights is None:
            normaliser = valid.sum().to(per_pixel.dtype)
        else:
            safe_target = torch.where(valid, target, 0)
            normaliser = (self.class_weights.to(per_pixel.dtype)[safe_target] * valid).sum()
        # clamp: an all-ignored batch gives 0 / eps = 0 instead of NaN
        return per_pixel.sum() / normaliser.clamp_min(1e-12)


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


class FocalLoss(nn.Module):
    """Softmax focal loss, mean over non-ignored pixels.

    Args:
        ignore_index: target value excluded from the loss.
        gamma: focusing parameter; ``gamma=0`` gives cross-entropy.
        class_weights: optional per-class weights ``[C]`` (the ``alpha`` of the paper).
    """

    def __init__(
        self,
        ignore_index: int = 255,
        gamma: float = 2.0,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.gamma = gamma
        self.register_buffer("class_weights", _weight_buffer(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, 0)
        log_p = F.log_softmax(logits, dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.class_weights is not None:
            loss = loss * self.class_weights.to(loss.dtype)[safe_target]
        loss = torch.where(valid, loss, 0.0)
        return loss.sum() / valid.sum().clamp_min(1)


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
