"""LightningModule for semantic segmentation: model + loss + metrics + optimiser + schedule.

Model output contract: logits ``[B, C, H, W]`` at input size, or a dict with ``"out"``
(that) and optionally ``"aux"`` (auxiliary logits at any resolution; upsampled bilinearly to
the input size before the loss). :func:`split_outputs` is the one place that normalises this.

Logged names: ``train/loss_step`` (every ``log_every_n_steps``), ``train/loss_epoch``,
``val/loss``, ``val/{PA,MPA,mIoU,FWIoU,mDice}``,
``val/IoU/<class>`` (and the same under ``test/``). The confusion matrix of the last
finished val/test epoch is kept in ``confusion_matrices[split]`` (int64 ``[C, C]`` on the
CPU, rows = ground truth) for reports. Where the batches carry ground-truth instance ids
(``batch["instance"]``: Cityscapes with ``*_gtFine_instanceIds.png``), Cityscapes' iIoU
(:class:`segkit.evaluation.metrics.InstanceIoU`) is logged as ``{split}/iIoU_class`` and
``{split}/iIoU_category`` and kept, per class and category, in ``extra_scores[split]``
(so ``metrics.json`` carries it). With ``membrane_class`` set (``data=isbi2012``), the ISBI
2012 challenge's scores of that class's map
(:class:`segkit.evaluation.membrane_metrics.MembraneErrors`) are logged as
``{split}/pixel_error`` and ``{split}/rand_error`` and kept in ``extra_scores[split]`` the
same way.

Fine-tuning (:mod:`segkit.tasks.optim`): parameter groups with ``backbone_lr_mult``/
``head_lr_mult`` and no weight decay on norm/bias parameters, ``freeze_backbone_epochs``,
``freeze_bn`` and ``ema_decay``. With EMA, validation, test, ``forward`` (eval.py,
predict.py) and the ``val/*`` scores that choose the best checkpoint all use the averaged
weights; training steps use the raw ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from segkit.evaluation.membrane_metrics import MembraneErrors
from segkit.evaluation.metrics import ConfusionMatrix, InstanceIoU, labels_from_logits
from segkit.tasks.base import HEADLINE_KEYS, SegmentationTask, per_split
from segkit.tasks.optim import (
    WeightEMA,
    apply_eval_modes,
    backbone_of,
    freeze_batch_norm,
    freeze_modules,
    set_backbone_frozen,
)

__all__ = [  # HEADLINE_KEYS: re-exported, its home is segkit.tasks.base
    "HEADLINE_KEYS",
    "SemanticSegmentationTask",
    "check_finetune_options",
    "check_strategy_allows_freezing",
    "split_outputs",
]


def split_outputs(output: torch.Tensor | dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """Return ``(logits, aux_logits_or_None)`` from a model's output."""
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, dict) and "out" in output:
        return output["out"], output.get("aux")
    raise TypeError(
        "a segmentation model must return logits [B,C,H,W] or a dict with 'out' (and "
        f"optionally 'aux'), got {type(output).__name__}"
    )


class SemanticSegmentationTask(SegmentationTask):
    """Train and score a semantic segmentation model (:class:`segkit.tasks.base.SegmentationTask`).

    Args:
        model: ``nn.Module`` mapping images ``[B, 3, H, W]`` to logits (see module docstring).
        loss: callable ``loss(logits [B,C,H,W], target [B,H,W]) -> scalar``.
        optimizer: partial ``optimizer(params) -> torch.optim.Optimizer``.
        scheduler: partial ``scheduler(optimizer, total_steps=N)`` stepped once per optimiser
            step, or ``None`` for a constant learning rate.
        num_classes: ``C``.
        class_names: ``C`` names used in logged keys and reports.
        ignore_index: target value excluded from metrics (the loss has its own).
        aux_weight: weight of the auxiliary-head loss.
        inference: val/test inference, ``inference(model, images [B,3,H,W]) -> [B,C,H,W]``
            scores (:class:`segkit.evaluation.inference.Inference`: sliding window,
            multi-scale, flip);
            ``None`` runs the model once on the whole image.
        backbone_lr_mult: learning rate of ``model.backbone`` = optimizer lr * this.
        head_lr_mult: learning rate of every other parameter = optimizer lr * this.
        no_decay_norm_bias: weight decay 0 on norm-layer weights and biases.
        freeze_backbone_epochs: keep ``model.backbone`` frozen (no gradient, eval mode) for
            the first N epochs, then train it.
        freeze_bn: keep the backbone's BatchNorm layers fixed for the whole run (statistics
            and affine parameters), as fine-tuning at small batch sizes does.
        frozen_modules: names of ``model``'s submodules (``model.named_modules()`` keys) kept
            fixed for the whole run (no gradient, eval mode), e.g. a pretrained encoder's
            stem and first stages, as detection codebases freeze them (Detectron2's
            ``FREEZE_AT``); at the input end this also skips their backward pass.
        ema_decay: ``None``, or the decay in (0, 1) of an exponential moving average of the
            weights, updated after every optimiser step, stored in checkpoints and used for
            validation, test and inference.
        membrane_class: ``None``, or the class whose map the ISBI 2012 challenge scores
            (membrane; every other class is cell): validation and test then also report its
            pixel error and Rand error
            (:class:`~segkit.evaluation.membrane_metrics.MembraneErrors`).

    Raises:
        ValueError: at construction, for a backbone control on a model without a backbone,
            a negative ``freeze_backbone_epochs``, an ``ema_decay`` outside (0, 1), a
            ``membrane_class`` that is no class or ``class_names`` not ``num_classes`` long.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
        num_classes: int,
        class_names: Sequence[str],
        ignore_index: int = 255,
        aux_weight: float = 0.4,
        inference: Callable[[Callable, torch.Tensor], torch.Tensor] | None = None,
        backbone_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
        no_decay_norm_bias: bool = True,
        freeze_backbone_epochs: int = 0,
        freeze_bn: bool = False,
        frozen_modules: Sequence[str] = (),
        ema_decay: float | None = None,
        membrane_class: int | None = None,
    ) -> None:
        check_finetune_options(model, backbone_lr_mult, freeze_backbone_epochs, freeze_bn)
        super().__init__(model, num_classes, class_names, ignore_index, optimizer, scheduler)
        self.set_parameter_groups(backbone_lr_mult, head_lr_mult, no_decay_norm_bias)
        self.freeze_backbone_epochs = freeze_backbone_epochs
        if freeze_bn:
            freeze_batch_norm(model)
        if frozen_modules:
            freeze_modules(model, list(frozen_modules))
        apply_eval_modes(model)
        # After freezing, so the copy's flags match; never trained by the optimiser.
        self.ema_model = None if ema_decay is None else WeightEMA(model, ema_decay)
        self.loss = loss
        self.aux_weight = aux_weight
        self.inference = inference
        self.metrics = per_split(lambda: ConfusionMatrix(num_classes, ignore_index))
        # Cityscapes' iIoU, scored when the batches carry instance ids ("instance")
        self.instance_metrics = per_split(lambda: InstanceIoU(class_names))
        self.membrane_errors = None  # the ISBI 2012 challenge's scores, where asked for
        if membrane_class is not None:
            if not 0 <= membrane_class < num_classes:
                raise ValueError(
                    f"task.membrane_class={membrane_class} is no class of 0..{num_classes - 1}: "
                    "give the membrane's class index (data=isbi2012: 0)."
                )
            self.membrane_errors = per_split(lambda: MembraneErrors(membrane_class, ignore_index))
        self._epoch_loss_sum = torch.zeros(())  # running train loss of the epoch
        self._epoch_steps = 0

    @property
    def eval_model(self) -> nn.Module:
        """The weights that validation, test and inference use: the EMA when enabled."""
        return self.model if self.ema_model is None else self.ema_model.module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, H, W]`` of :attr:`eval_model` (auxiliary outputs dropped)."""
        return self._logits(images, self.eval_model)[0]

    def class_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, C, H, W]`` of full images, as validation and test compute them.

        The task's ``inference`` (sliding window, multi-scale, flip: log-probabilities)
        over :meth:`forward`, or the logits of :meth:`forward` alone when it has none.
        ``argmax(1)`` gives the labels either way. eval.py, predict.py and
        ``segkit.deploy.publish`` all score through this one method.
        """
        if self.inference is None:
            return self.forward(images)
        return self.inference(self.forward, images)

    def _logits(
        self, images: torch.Tensor, model: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, aux = split_outputs((model or self.model)(images))
        if logits.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"model returned logits of size {tuple(logits.shape[-2:])} for an input of "
                f"{tuple(images.shape[-2:])}; models must upsample to the input size."
            )
        if aux is not None and aux.shape[-2:] != images.shape[-2:]:
            aux = F.interpolate(aux, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits, aux

    def training_loss(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(loss, aux_loss)`` of one training batch (``images [B, 3, H, W]``, ``masks
        [B, H, W]``) through :attr:`model`: the loss of the logits plus ``aux_weight`` x the
        loss of the auxiliary logits (``aux_loss``; ``None`` without an auxiliary head).

        What :meth:`training_step` optimises; ``benchmarks/fast_paths.py`` times it.
        """
        logits, aux = self._logits(images)
        loss = self.loss(logits, masks)
        aux_loss = None
        if aux is not None and self.aux_weight > 0:
            aux_loss = self.loss(aux, masks)
            loss = loss + self.aux_weight * aux_loss
        return loss, aux_loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, aux_loss = self.training_loss(batch["image"], batch["mask"])
        # self.log costs milliseconds per call (benchmarks/train_step.py), so the step values
        # are logged only on the steps the logger writes, and the epoch mean is kept here on
        # the device (no host sync) and logged once per epoch.
        self._epoch_loss_sum = self._epoch_loss_sum + loss.detach()
        self._epoch_steps += 1
        if batch_idx % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss, prog_bar=True, batch_size=len(batch["image"]))
            if aux_loss is not None:
                self.log("train/aux_loss", aux_loss, batch_size=len(batch["image"]))
        return loss

    def train(self, mode: bool = True) -> SemanticSegmentationTask:
        super().train(mode)
        if mode:  # frozen parts keep their running statistics (Lightning calls train())
            apply_eval_modes(self.model)
        return self

    def on_fit_start(self) -> None:
        if self.freeze_backbone_epochs:
            check_strategy_allows_freezing(self.trainer)

    def on_train_epoch_start(self) -> None:
        self._epoch_loss_sum = torch.zeros((), device=self.device)
        self._epoch_steps = 0
        if self.freeze_backbone_epochs:
            set_backbone_frozen(self.model, self.current_epoch < self.freeze_backbone_epochs)
        apply_eval_modes(self.model)  # Lightning restores modes per module; keep frozen ones

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after the optimiser step of this batch (one step per accumulate_grad_batches)
        stepped = (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0
        if self.ema_model is not None and stepped:
            self.ema_model.update_parameters(self.model)

    def on_train_epoch_end(self) -> None:
        if self._epoch_steps:
            mean = self._epoch_loss_sum / self._epoch_steps
            self.log("train/loss_epoch", mean, sync_dist=True)

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        scores = self.class_scores(batch["image"])  # logits, or log-probabilities of TTA
        loss = self.loss(scores, batch["mask"])
        self.log(f"{split}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(scores))
        if self.membrane_errors is not None:
            self.membrane_errors[split].update(scores, batch["mask"])
        if "instance" not in batch:
            self.metrics[split].update(scores, batch["mask"])
            return
        labels = labels_from_logits(scores)  # once for both metrics
        self.metrics[split].update(labels, batch["mask"])
        self.instance_metrics[split].update(labels, batch["mask"], batch["instance"])

    def _eval_epoch_end(self, split: str) -> None:
        metric = self.metrics[split]
        confmat = metric.compute_confmat()
        metric.reset()
        instance_scores = self.instance_metrics[split].scores(confmat)  # None: no instances
        self.instance_metrics[split].reset()
        membrane_scores = None
        if self.membrane_errors is not None:
            membrane_scores = self.membrane_errors[split].compute()
            self.membrane_errors[split].reset()
        if self.trainer.sanity_checking:
            return
        if membrane_scores is not None:
            for key, value in membrane_scores.items():
                self.log(f"{split}/{key}", value)
            kept = {key: None if math.isnan(v) else v for key, v in membrane_scores.items()}
            self.extra_scores[split] = {**self.extra_scores.get(split, {}), **kept}
        if instance_scores is not None:
            self.extra_scores[split] = {**self.extra_scores.get(split, {}), **instance_scores}
            for key in ("iIoU_class", "iIoU_category"):
                value = instance_scores[key]
                self.log(f"{split}/{key}", float("nan") if value is None else value)
        result = self._log_semantic_scores(split, confmat, prog_bar="mIoU")
        for name, value in zip(self.class_names, result["IoU"].tolist(), strict=False):
            self.log(f"{split}/IoU/{name}", value)


def check_finetune_options(
    model: nn.Module, backbone_lr_mult: float, freeze_backbone_epochs: int, freeze_bn: bool
) -> None:
    """Refuse backbone controls on a model without a backbone, and negative epochs."""
    if freeze_backbone_epochs < 0:
        raise ValueError(
            f"task.freeze_backbone_epochs={freeze_backbone_epochs} must be >= 0 (0: never frozen)"
        )
    asked = {
        "task.freeze_backbone_epochs": freeze_backbone_epochs > 0,
        "task.freeze_bn": freeze_bn,
        "task.backbone_lr_mult": backbone_lr_mult != 1.0,
    }
    if backbone_of(model) is None and any(asked.values()):
        keys = ", ".join(key for key, on in asked.items() if on)
        raise ValueError(
            f"{keys} needs a model with a pretrained backbone, and {type(model).__name__} has "
            "none (model.backbone is None: every parameter is head). Set it back to its "
            "default (task.backbone_lr_mult=1.0, task.freeze_backbone_epochs=0, "
            "task.freeze_bn=false), or pick a model with an encoder (e.g. model=unet_r18, "
            "deeplabv3, pspnet)."
        )


def check_strategy_allows_freezing(trainer: L.Trainer) -> None:
    """DDP must tolerate parameters without gradients while the backbone is frozen.

    segkit freezes after the model is wrapped, so the reducer still expects gradients for
    the backbone; only ``find_unused_parameters=True`` lets DDP skip them.
    """
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get(
        "find_unused_parameters", False
    ):
        raise ValueError(
            "task.freeze_backbone_epochs under DDP needs find_unused_parameters: run with "
            "trainer.strategy=ddp_find_unused_parameters_true."
        )
