"""What the semantic and the instance task share: the model, class names and optimiser set-up,
the val/test hooks and the semantic scores both report.

:class:`SegmentationTask` is the base of :class:`segkit.tasks.semantic.SemanticSegmentationTask`
and :class:`segkit.tasks.instance.InstanceSegmentationTask`. It holds ``model`` (the only
module it registers, so a subclass's state-dict keys are ``model.*`` followed by its own, as
before the base existed), checks that ``class_names`` has ``num_classes`` names, builds the
optimiser from :func:`segkit.tasks.optim.parameter_groups` and the schedule from
:func:`segkit.tasks.schedulers.lightning_schedule`, and routes Lightning's val/test hooks to
two methods a subclass writes: ``_eval_step(batch, split)`` and ``_eval_epoch_end(split)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from segkit.evaluation.metrics import scores
from segkit.tasks.optim import build_optimizer, parameter_groups
from segkit.tasks.schedulers import lightning_schedule

HEADLINE_KEYS = ("PA", "MPA", "mIoU", "FWIoU", "mDice")
SPLITS = ("val", "test")  # the scored splits: one metric of each kind per split


def per_split(make: Callable[[], nn.Module]) -> nn.ModuleDict:
    """``{"val": make(), "test": make()}`` as an ``nn.ModuleDict`` (moved with the task)."""
    return nn.ModuleDict({split: make() for split in SPLITS})


class SegmentationTask(L.LightningModule):
    """Base of segkit's tasks: model, classes, optimiser and schedule, val/test hooks.

    A subclass calls ``super().__init__(...)`` first, then
    :meth:`set_parameter_groups` with its ``task.*`` learning-rate options.

    Args:
        model: the network; its parameters are split into optimiser groups by
            :func:`segkit.tasks.optim.parameter_groups` (``model.backbone`` or not).
        num_classes: ``C``.
        class_names: ``C`` names used in logged keys and reports.
        ignore_index: target value excluded from metrics.
        optimizer: partial ``optimizer(params) -> torch.optim.Optimizer``.
        scheduler: partial ``scheduler(optimizer, total_steps=N)`` stepped once per optimiser
            step, or ``None`` for a constant learning rate.

    Raises:
        ValueError: ``class_names`` does not hold ``num_classes`` names.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        class_names: Sequence[str],
        ignore_index: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.set_parameter_groups()
        # confusion matrix (int64 [C, C] on the CPU) of the last finished val/test epoch
        self.confusion_matrices: dict[str, torch.Tensor] = {}
        # scores beyond the confusion matrix, per split (metrics.json carries them)
        self.extra_scores: dict[str, dict[str, Any]] = {}

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        """Score one val/test batch into the metrics of ``split``."""
        raise NotImplementedError

    def _eval_epoch_end(self, split: str) -> None:
        """Compute, log and reset the metrics of ``split``."""
        raise NotImplementedError

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _log_semantic_scores(
        self, split: str, confmat: torch.Tensor, prog_bar: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Keep ``confmat`` in ``confusion_matrices[split]`` and log ``{split}/<key>`` of
        :data:`HEADLINE_KEYS` (the one named ``prog_bar`` also on the progress bar).

        Returns:
            :func:`segkit.evaluation.metrics.scores` of ``confmat``.
        """
        self.confusion_matrices[split] = confmat.cpu()
        result = scores(confmat)
        for key in HEADLINE_KEYS:
            self.log(f"{split}/{key}", result[key].float(), prog_bar=key == prog_bar)
        return result

    def set_parameter_groups(
        self,
        backbone_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
        no_decay_norm_bias: bool = True,
    ) -> None:
        """How :meth:`optimizer_groups` splits ``model``'s parameters (the defaults: one
        learning rate, no weight decay on norm-layer weights and biases).

        Args:
            backbone_lr_mult: learning rate of ``model.backbone`` = optimizer lr * this.
            head_lr_mult: learning rate of every other parameter = optimizer lr * this.
            no_decay_norm_bias: weight decay 0 on norm-layer weights and biases.
        """
        self.backbone_lr_mult = backbone_lr_mult
        self.head_lr_mult = head_lr_mult
        self.no_decay_norm_bias = no_decay_norm_bias

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (:func:`segkit.tasks.optim.parameter_groups`)."""
        return parameter_groups(
            self.model, self.backbone_lr_mult, self.head_lr_mult, self.no_decay_norm_bias
        )

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.optimizer_factory, self.optimizer_groups())
        return lightning_schedule(
            optimizer,
            self.scheduler_factory,
            total_steps=int(self.trainer.estimated_stepping_batches),
            val_every_n_epochs=self.trainer.check_val_every_n_epoch or 1,
        )
