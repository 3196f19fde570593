"""Segmentation losses on logits ``[B, C, H, W]`` and integer targets ``[B, H, W]``.

Every loss here takes ``ignore_index``; ignored pixels contribute nothing to the value or the
gradient, and a batch where every pixel is ignored gives a loss of exactly 0 (not NaN).

* :class:`CrossEntropyLoss`: mean over non-ignored pixels, weighted as in PyTorch
  (``sum_i w[y_i] l_i / sum_i w[y_i]``), optional label smoothing.
* :class:`DiceLoss`: segmentation-models-pytorch's soft Dice (``1 - Dice``, averaged over the
  classes present in the batch's ground truth).
* :class:`FocalLoss`: softmax focal loss ``(1 - p_t)^gamma * CE`` (Lin et al., 2017, in its
  multi-class softmax form), mean over non-ignored pixels. We do not use smp's
  ``FocalLoss(mode="multiclass")``: it sums one-vs-rest *sigmoid* focal losses over classes.
* :class:`WeightedSumLoss`: ``sum_k weight_k * loss_k`` of any of the above.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import segmentation_models_pytorch as smp
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
    """Soft multi-class Dice loss from segmentation-models-pytorch (``mode="multiclass"``).

    Args:
        ignore_index: target value excluded from the loss.
        smooth: additive smoothing of numerator and denominator.
    """

    def __init__(self, ignore_index: int = 255, smooth: float = 0.0) -> None:
        super().__init__()
        self.dice = smp.losses.DiceLoss(
            mode="multiclass", from_logits=True, ignore_index=ignore_index, smooth=smooth
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target)


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
