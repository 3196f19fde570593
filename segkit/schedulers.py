"""Learning-rate schedules stepped once per optimiser step.

Each factory takes ``(optimizer, total_steps, ...)``; the task passes ``total_steps`` from
``trainer.estimated_stepping_batches`` so configs never repeat the run length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


class _PolyFactor:
    """``(1 - step / total) ** power`` after a linear warm-up; a class so it pickles."""

    def __init__(self, total_steps: int, power: float, warmup_steps: int) -> None:
        self.total_steps, self.power, self.warmup_steps = max(1, total_steps), power, warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return max(0.0, 1.0 - step / self.total_steps) ** self.power


class _CosineFactor:
    """Half a cosine from 1 to 0 after a linear warm-up."""

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps, self.warmup_steps = max(1, total_steps), warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(
            1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        )
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def poly_lr(
    optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0
) -> LambdaLR:
    """Poly schedule ``lr = base_lr * (1 - step / total_steps) ** power`` (DeepLab, PSPNet)."""
    return LambdaLR(optimizer, _PolyFactor(total_steps, power, warmup_steps))


def cosine_lr(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Cosine decay to 0 over ``total_steps`` (after ``warmup_steps`` of linear warm-up)."""
    return LambdaLR(optimizer, _CosineFactor(total_steps, warmup_steps))


class _MultiStepFactor:
    """``gamma ** (milestones passed)`` after a linear warm-up from ``warmup_factor``."""

    def __init__(
        self,
        total_steps: int,
        milestones: list[float],
        gamma: float,
        warmup_steps: int,
        warmup_factor: float,
    ) -> None:
        self.steps = sorted(round(m * total_steps) for m in milestones)
        self.gamma, self.warmup_steps, self.warmup_factor = gamma, warmup_steps, warmup_factor

    def __call__(self, step: int) -> float:
        factor = self.gamma ** sum(step >= s for s in self.steps)
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def multistep_lr(
    optimizer: Optimizer,
    total_steps: int,
    milestones: Sequence[float] = (16 / 26, 22 / 26),
    gamma: float = 0.1,
    warmup_steps: int = 1000,
    warmup_factor: float = 0.001,
) -> LambdaLR:
    """Step decay: ``lr *= gamma`` at each milestone, after a linear warm-up (Mask R-CNN).

    Args:
        optimizer: the optimiser.
        total_steps: run length in optimiser steps.
        milestones: fractions of ``total_steps`` at which the rate drops; the default is
            torchvision's Mask R-CNN recipe (26 epochs, drops after 16 and 22).
        gamma: factor per drop.
        warmup_steps: steps of linear warm-up, from ``warmup_factor * lr`` to ``lr``.
        warmup_factor: starting fraction of the warm-up.
    """
    factor = _MultiStepFactor(total_steps, list(milestones), gamma, warmup_steps, warmup_factor)
    return LambdaLR(optimizer, factor)


def lightning_schedule(
    optimizer: Optimizer,
    scheduler: Callable[..., LRScheduler] | None,
    total_steps: int,
) -> Any:
    """What a LightningModule's ``configure_optimizers`` returns for a built optimiser.

    Args:
        optimizer: the optimiser (its groups' ``lr`` already final: schedules scale them).
        scheduler: partial ``scheduler(optimizer, total_steps=...)`` or ``None`` (constant lr).
        total_steps: optimiser steps of the whole run (``trainer.estimated_stepping_batches``).
    """
    if scheduler is None:
        return optimizer
    schedule = scheduler(optimizer, total_steps=total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
