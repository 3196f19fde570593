"""LightningModule for semantic segmentation: model + loss + metrics + optimiser + schedule.

Model output contract: logits ``[B, C, H, W]`` at input size, or a dict with ``"out"``
(that) and optionally ``"aux"`` (auxiliary logits at any resolution; upsampled bilinearly to
the input size before the loss). :func:`split_outputs` is the one place that normalises this.

Logged names: ``train/loss_step`` (every ``log_every_n_steps``), ``train/loss_epoch``,
``val/loss``, ``val/{PA,MPA,mIoU,FWIoU,mDice}``,
``val/IoU/<class>`` (and the same under ``test/``). The confusion matrix of the last
finished val/test epoch is kept in ``confusion_matrices[split]`` (int64 ``[C, C]`` on the
CPU, rows = ground truth) for reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from segkit.metrics import ConfusionMatrix, scores
from segkit.schedulers import optimizers_for_lightning

HEADLINE_KEYS = ("PA", "MPA", "mIoU", "FWIoU", "mDice")


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


class SemanticSegmentationTask(L.LightningModule):
    """Train and score a semantic segmentation model.

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
            scores (:class:`segkit.inference.Inference`: sliding window, multi-scale, flip);
            ``None`` runs the model once on the whole image.
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
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.inference = inference
        self.metrics = nn.ModuleDict(
            {split: ConfusionMatrix(num_classes, ignore_index) for split in ("val", "test")}
        )
        self.confusion_matrices: dict[str, torch.Tensor] = {}
        self._epoch_loss_sum = torch.zeros(())  # running train loss of the epoch
        self._epoch_steps = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, H, W]`` at the input size (auxiliary outputs dropped)."""
        return self._logits(images)[0]

    def _logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, aux = split_outputs(self.model(images))
        if logits.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"model returned logits of size {tuple(logits.shape[-2:])} for an input of "
                f"{tuple(images.shape[-2:])}; models must upsample to the input size."
            )
        if aux is not None and aux.shape[-2:] != images.shape[-2:]:
            aux = F.interpolate(aux, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits, aux

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, aux = self._logits(batch["image"])
        loss = self.loss(logits, batch["mask"])
        aux_loss = None
        if aux is not None and self.aux_weight > 0:
            aux_loss = self.loss(aux, batch["mask"])
            loss = loss + self.aux_weight * aux_loss
        # self.log costs milliseconds per call (benchmarks/train_step.py), so the step values
        # are logged only on the steps the logger writes, and the epoch mean is kept here on
        # the device (no host sync) and logged once per epoch.
        self._epoch_loss_sum = self._epoch_loss_sum + loss.detach()
        self._epoch_steps += 1
        if batch_idx % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss, prog_bar=True, batch_size=len(logits))
            if aux_loss is not None:
                self.log("train/aux_loss", aux_loss, batch_size=len(logits))
        return loss

    def on_train_epoch_start(self) -> None:
        self._epoch_loss_sum = torch.zeros((), device=self.device)
        self._epoch_steps = 0

    def on_train_epoch_end(self) -> None:
        if self._epoch_steps:
            mean = self._epoch_loss_sum / self._epoch_steps
            self.log("train/loss_epoch", mean, sync_dist=True)

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        if self.inference is None:
            logits, _ = self._logits(batch["image"])
        else:
            logits = self.inference(self.forward, batch["image"])
        loss = self.loss(logits, batch["mask"])
        self.log(f"{split}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(logits))
        self.metrics[split].update(logits, batch["mask"])

    def _eval_epoch_end(self, split: str) -> None:
        metric = self.metrics[split]
        confmat = metric.compute_confmat()
        metric.reset()
        if self.trainer.sanity_checking:
            return
        self.confusion_matrices[split] = confmat.cpu()
        result = scores(confmat)
        for key in HEADLINE_KEYS:
            self.log(f"{split}/{key}", result[key].float(), prog_bar=key == "mIoU")
        for name, value in zip(self.class_names, result["IoU"].tolist(), strict=False):
            self.log(f"{split}/IoU/{name}", value)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> Any:
        return optimizers_for_lightning(
            self.optimizer_factory,
            self.scheduler_factory,
            self.parameters(),
            total_steps=int(self.trainer.estimated_stepping_batches),
        )
