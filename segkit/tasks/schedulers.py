"""Learning-rate schedules stepped once per optimiser step, and :func:`plateau_lr`, stepped
once per validation on its score.

Each factory takes ``(optimizer, total_steps, ...)``; the task passes ``total_steps`` from
``trainer.estimated_stepping_batches`` so configs never repeat the run length.

**One warm-up rule for every per-step schedule** (poly, cosine, exponential, multistep), the
multiplicative linear warm-up of mmcv and torchvision's detection references: with
``W = warmup_steps`` and ``f0 = warmup_factor``, the rate at optimiser step ``s`` (0-based) is
::

    lr(s) = warm(s) * decayed(s)
    warm(s) = f0 + (1 - f0) * s / W   for s < W,   1 from s = W on

where ``decayed(s)`` is the schedule without warm-up over the *whole* run (its span is
``total_steps``, not ``total_steps - W``). So step 0 trains at ``f0 * lr``, the warm-up
ends at ``decayed(W)`` (``lr`` for multistep, slightly under it for the decays) and the
schedule ends where it would without warm-up. ``warmup_steps > total_steps`` is allowed:
the warm-up then never ends. ``plateau`` (stepped on scores) and ``constant`` have none.

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


class _Factor:
    """``warm(step) * decay(step)``, the factor ``LambdaLR`` multiplies a group's base rate by.

    A class, not a closure, so that it pickles and ``LambdaLR.state_dict`` stores its
    attributes (``total_steps`` included) in the checkpoint. Subclasses give ``decay``.
    """

    def __init__(self, total_steps: int, warmup_steps: int, warmup_factor: float) -> None:
        if warmup_steps < 0:
            raise ValueError(f"scheduler.warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= warmup_factor <= 1.0:
            raise ValueError(
                f"scheduler.warmup_factor must be in [0, 1] (the warm-up starts at "
                f"warmup_factor x lr), got {warmup_factor}"
            )
        self.warmup_steps, self.warmup_factor = int(warmup_steps), float(warmup_factor)
        self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = max(1, int(total_steps))

    def decay(self, step: int) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        factor = self.decay(step)
        if step < self.warmup_steps:
            factor *= self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
        return factor


def _floors(optimizer: Optimizer, min_lr: float) -> list[float]:
    """``min_lr / base_lr`` per param group: the factor each group ends at."""
    if min_lr < 0:
        raise ValueError(f"scheduler.min_lr must be >= 0, got {min_lr}")
    floors = []
    for index, group in enumerate(optimizer.param_groups):
        base = group.get("initial_lr", group["lr"])
        if base == 0:  # a group trained at lr 0 stays at 0
            floors.append(0.0)
        elif min_lr > base:
            name = group.get("name", f"param group {index}")
            raise ValueError(
                f"scheduler.min_lr={min_lr} is above the base learning rate {base} of "
                f"{name!r}, so the schedule would raise it; lower scheduler.min_lr (the rate "
                "every group ends at) or raise optimizer.lr / the task's lr multipliers."
            )
        else:
            floors.append(min_lr / base)
    return floors


class _PolyFactor(_Factor):
    """``floor + (1 - floor) * (1 - step / total) ** power``."""

    def __init__(
        self,
        total_steps: int,
        power: float,
        warmup_steps: int,
        warmup_factor: float = 0.001,
        floor: float = 0.0,
    ) -> None:
        super().__init__(total_steps, warmup_steps, warmup_factor)
        self.power, self.floor = power, floor

    def decay(self, step: int) -> float:
        remaining = max(0.0, 1.0 - step / self.total_steps)
        return self.floor + (1.0 - self.floor) * remaining**self.power


class _CosineFactor(_Factor):
    """Half a cosine from 1 to ``floor`` per cycle; ``restarts`` cycles after the first,
    each ``cycle_mult`` times as long as the one before, together spanning the run."""

    def __init__(
        self,
        total_steps: int,
        warmup_steps: int,
        warmup_factor: float = 0.001,
        floor: float = 0.0,
        restarts: int = 0,
        cycle_mult: float = 1.0,
    ) -> None:
        if restarts < 0:
            raise ValueError(f"scheduler.restarts must be >= 0, got {restarts}")
        if cycle_mult <= 0:
            raise ValueError(f"scheduler.cycle_mult must be > 0, got {cycle_mult}")
        super().__init__(total_steps, warmup_steps, warmup_factor)
        self.floor, self.restarts, self.cycle_mult = floor, int(restarts), float(cycle_mult)

    def decay(self, step: int) -> float:
        lengths = [self.cycle_mult**k for k in range(self.restarts + 1)]
        unit = self.total_steps / sum(lengths)  # first cycle's length in steps
        start = 0.0
        for k, length in enumerate(lengths):
            end = start + length * unit
            if step < end or k == self.restarts:
                progress = min(1.0, (step - start) / (end - start))
                break
            start = end
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _ExponentialFactor(_Factor):
    """``end_factor ** (step / total)``: a constant factor per step, ``end_factor`` at the end."""

    def __init__(
        self, total_steps: int, end_factor: float, warmup_steps: int, warmup_factor: float
    ) -> None:
        if not 0.0 < end_factor <= 1.0:
            raise ValueError(
                f"scheduler.end_factor must be in (0, 1] (the fraction of the base rate the "
                f"run ends at), got {end_factor}"
            )
        super().__init__(total_steps, warmup_steps, warmup_factor)
        self.end_factor = end_factor

    def decay(self, step: int) -> float:
        return self.end_factor ** (min(step, self.total_steps) / self.total_steps)


def poly_lr(
    optimizer: Optimizer,
    total_steps: int,
    power: float = 0.9,
    min_lr: float = 0.0,
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
) -> LambdaLR:
    """Poly schedule (DeepLab, PSPNet; mmseg's ``PolyLR`` with ``eta_min``)::

        lr(s) = warm(s) * (min_lr + (base_lr - min_lr) * (1 - s / total_steps) ** power)

    Args:
        optimizer: the optimiser; each param group decays from its own base rate.
        total_steps: run length in optimiser steps.
        power: exponent (0.9 in DeepLab).
        min_lr: the absolute rate every param group ends at (not a fraction of it).
        warmup_steps: steps of linear warm-up (the module docstring's rule).
        warmup_factor: the warm-up starts at ``warmup_factor x`` the scheduled rate.
    """
    factors = [
        _PolyFactor(total_steps, power, warmup_steps, warmup_factor, floor)
        for floor in _floors(optimizer, min_lr)
    ]
    return LambdaLR(optimizer, factors)


def cosine_lr(
    optimizer: Optimizer,
    total_steps: int,
    min_lr: float = 0.0,
    restarts: int = 0,
    cycle_mult: float = 1.0,
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
) -> LambdaLR:
    """Cosine decay (SGDR, Loshchilov & Hutter 2017), optionally with warm restarts::

        lr(s) = warm(s) * (min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2)

    with ``t`` the fraction of the current cycle elapsed at step ``s``. The run is split
    into ``restarts + 1`` cycles of lengths ``L, L * cycle_mult, L * cycle_mult**2, ...``
    that add up to ``total_steps``; each cycle restarts at the base rate. With
    ``restarts=0`` it is one half-cosine over the run. This equals PyTorch's
    ``CosineAnnealingWarmRestarts(T_0=L, T_mult=cycle_mult, eta_min=min_lr)`` where ``L``
    and ``cycle_mult`` are integers, with ``L`` derived from the run length instead of set.

    Args:
        optimizer: the optimiser; each param group decays from its own base rate.
        total_steps: run length in optimiser steps.
        min_lr: the absolute rate each cycle ends at, for every param group.
        restarts: number of restarts (cycles after the first).
        cycle_mult: each cycle's length over the previous one's (SGDR's ``T_mult``).
        warmup_steps: steps of linear warm-up, once, at the start of the run.
        warmup_factor: the warm-up starts at ``warmup_factor x`` the scheduled rate.
    """
    factors = [
        _CosineFactor(total_steps, warmup_steps, warmup_factor, floor, restarts, cycle_mult)
        for floor in _floors(optimizer, min_lr)
    ]
    return LambdaLR(optimizer, factors)


def exponential_lr(
    optimizer: Optimizer,
    total_steps: int,
    end_factor: float = 0.01,
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
) -> LambdaLR:
    """Exponential decay by the same factor every optimiser step::

        lr(s) = warm(s) * base_lr * end_factor ** (s / total_steps)

    i.e. PyTorch's ``ExponentialLR`` stepped per optimiser step with
    ``gamma = end_factor ** (1 / total_steps)``. The config gives the end point, not
    ``gamma``, so that it does not depend on the run length.

    Args:
        optimizer: the optimiser; every group keeps its ratio to the others.
        total_steps: run length in optimiser steps.
        end_factor: fraction of the base rate at the last step, in ``(0, 1]``.
        warmup_steps: steps of linear warm-up (the module docstring's rule).
        warmup_factor: the warm-up starts at ``warmup_factor x`` the scheduled rate.
    """
    return LambdaLR(
        optimizer, _ExponentialFactor(total_steps, end_factor, warmup_steps, warmup_factor)
    )


class _MultiStepFactor(_Factor):
    """``gamma ** (milestones passed)``."""

    def __init__(
        self,
        total_steps: int,
        milestones: list[float],
        gamma: float,
        warmup_steps: int,
        warmup_factor: float,
    ) -> None:
        self.milestones = list(milestones)  # fractions, to place the steps for a new length
        self.gamma = gamma
        super().__init__(total_steps, warmup_steps, warmup_factor)

    def set_total_steps(self, total_steps: int) -> None:
        super().set_total_steps(total_steps)
        self.steps = sorted(round(m * self.total_steps) for m in self.milestones)

    def decay(self, step: int) -> float:
        return self.gamma ** sum(step >= s for s in self.steps)


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

    Every factor of a ``LambdaLR`` built by :func:`poly_lr`, :func:`cosine_lr`,
    :func:`exponential_lr` or :func:`multistep_lr` gets ``total_steps``; each param group's
    ``lr`` becomes ``base_lr * factor(step)`` at the restored step, so the very next update
    already uses the new schedule.

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
