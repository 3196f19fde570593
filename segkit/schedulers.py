"""Learning-rate schedules stepped once per optimiser step, and :func:`plateau_lr`, stepped
once per validation on its score.

Each factory takes ``(optimizer, total_steps, ...)``; the task passes ``total_steps`` from
``trainer.estimated_stepping_batches`` so configs never repeat the run length.

The run length lives in the ``LambdaLR`` factor objects, which a checkpoint stores and a
resumed run restores. A resumed run of a different length (``trainer.max_epochs=<more>``)
therefore calls :func:`set_total_steps`, which gives the schedule the new length: from the
restored step on, the rate is the one a run of the new length has at that step (a poly
schedule that had reached 0 rises again instead of training every extra step at lr 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau


class _PolyFactor:
    """``(1 - step / total) ** power`` after a linear warm-up; a class so it pickles."""

    def __init__(self, total_steps: int, power: float, warmup_steps: int) -> None:
        self.total_steps, self.power, self.warmup_steps = max(1, total_steps), power, warmup_steps

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = max(1, total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return max(0.0, 1.0 - step / self.total_steps) ** self.power


class _CosineFactor:
    """Half a cosine from 1 to 0 after a linear warm-up."""

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps, self.warmup_steps = max(1, total_steps), warmup_steps

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = max(1, total_steps)

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
        self.milestones = list(milestones)  # fractions, to place the steps for a new length
        self.gamma, self.warmup_steps, self.warmup_factor = gamma, warmup_steps, warmup_factor
        self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.steps = sorted(round(m * total_steps) for m in self.milestones)

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


class PlateauSchedule(ReduceLROnPlateau):
    """``ReduceLROnPlateau`` that knows the metric it follows (:attr:`monitor`), so
    :func:`lightning_schedule` steps it after each validation with that value."""

    def __init__(self, optimizer: Optimizer, monitor: str, **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self.monitor = monitor


def plateau_lr(
    optimizer: Optimizer,
    total_steps: int,
    monitor: str = "val/mIoU",
    mode: str = "max",
    factor: float = 0.1,
    patience: int = 5,
    threshold: float = 1e-4,
    min_lr: float = 0.0,
) -> PlateauSchedule:
    """Reduce the rate by ``factor`` when ``monitor`` has not improved (by more than
    ``threshold``, relative) for ``patience`` validations; stepped once per validation, not
    per optimiser step. ``total_steps`` is accepted for the common factory signature and
    unused: the schedule follows the scores, not the run length.
    """
    del total_steps
    return PlateauSchedule(
        optimizer, monitor, mode=mode, factor=factor, patience=patience,
        threshold=threshold, min_lr=min_lr,
    )  # fmt: skip


def scheduled_total_steps(scheduler: LRScheduler) -> int | None:
    """The run length (optimiser steps) a segkit schedule holds, or ``None`` for another
    scheduler (whose length, if any, segkit cannot change)."""
    factors = getattr(scheduler, "lr_lambdas", None) or []
    totals = {f.total_steps for f in factors if hasattr(f, "set_total_steps")}
    return totals.pop() if len(totals) == 1 else None


def set_total_steps(scheduler: LRScheduler, total_steps: int) -> bool:
    """Give a restored segkit schedule a new run length, and the optimiser the new rate.

    Every factor of a ``LambdaLR`` built by :func:`poly_lr`, :func:`cosine_lr` or
    :func:`multistep_lr` gets ``total_steps``; each param group's ``lr`` becomes
    ``base_lr * factor(step)`` at the restored step, so the very next update already uses
    the new schedule.

    Returns:
        ``False`` (and changes nothing) for any other scheduler.
    """
    factors = getattr(scheduler, "lr_lambdas", None)
    if not factors or not all(hasattr(f, "set_total_steps") for f in factors):
        return False
    for factor in factors:
        factor.set_total_steps(total_steps)
    groups = scheduler.optimizer.param_groups
    rates = [
        base * factor(scheduler.last_epoch)
        for base, factor in zip(scheduler.base_lrs, factors, strict=True)
    ]
    for group, rate in zip(groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() and LearningRateMonitor report
    return True


def lightning_schedule(
    optimizer: Optimizer,
    scheduler: Callable[..., LRScheduler] | None,
    total_steps: int,
    val_every_n_epochs: int = 1,
) -> Any:
    """What a LightningModule's ``configure_optimizers`` returns for a built optimiser.

    Args:
        optimizer: the optimiser (its groups' ``lr`` already final: schedules scale them).
        scheduler: partial ``scheduler(optimizer, total_steps=...)`` or ``None`` (constant lr).
        total_steps: optimiser steps of the whole run (``trainer.estimated_stepping_batches``).
        val_every_n_epochs: ``trainer.check_val_every_n_epoch``: how often a
            :class:`PlateauSchedule` gets a score to step on.
    """
    if scheduler is None:
        return optimizer
    schedule = scheduler(optimizer, total_steps=total_steps)
    if isinstance(schedule, PlateauSchedule):  # once per validation, with its score
        config = {"scheduler": schedule, "interval": "epoch", "monitor": schedule.monitor}
        config["frequency"] = val_every_n_epochs
        return {"optimizer": optimizer, "lr_scheduler": config}
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
