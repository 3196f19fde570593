"""Learning-rate schedules stepped once per optimiser step.

Each factory takes ``(optimizer, total_steps, ...)``; the task passes ``total_steps`` from
``trainer.estimated_stepping_batches`` so configs never repeat the run length.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


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
