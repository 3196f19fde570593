"""Guards: stop a run that would train nothing, or train on a NaN.

* :class:`TrainingBatchesCheck` stops a run whose training split gives no batch at all
  (every run has it: :data:`segkit.engine.callbacks.EVERY_RUN`).
* :class:`NonFiniteGuard` stops the run on a NaN/Inf loss with the step, batch names and
  learning rate in the message, or skips the optimiser update when ``skip_nonfinite=true``
  (``conf/callbacks/nonfinite_guard.yaml``).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn


class NoTrainingBatchesError(ValueError):
    """The training split gives no batch, so fitting would train nothing."""


class TrainingBatchesCheck(L.Callback):
    """Stop at the start of fitting when an epoch would have no training batch.

    The training loader drops its last incomplete batch (BatchNorm cannot train on one
    sample), so ``data.batch_size`` larger than the images per process gives zero steps;
    Lightning would then "finish" at once and the untrained model be scored as a result.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.estimated_stepping_batches  # noqa: B018  (builds the train loader if needed)
        if trainer.num_training_batches != 0:
            return
        loader = trainer.train_dataloader
        dataset, batch_size = getattr(loader, "dataset", None), getattr(loader, "batch_size", 0)
        size = len(dataset) if hasattr(dataset, "__len__") else None
        if size is not None and batch_size and getattr(loader, "drop_last", False):
            per_process = math.ceil(size / trainer.world_size)
            shared = f" shared by {trainer.world_size} processes ({per_process} each)"
            raise NoTrainingBatchesError(
                f"data.batch_size={batch_size} is larger than the training split: its {size} "
                f"images{shared if trainer.world_size > 1 else ''} give no complete batch, "
                "and the last incomplete batch is dropped, so nothing would be trained. Set "
                f"data.batch_size to at most {per_process}, or add training images."
            )
        raise NoTrainingBatchesError(
            "the training loader gives no batch (check trainer.limit_train_batches and the "
            "training split), so nothing would be trained."
        )


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or Inf (raised by :class:`NonFiniteGuard`)."""


class NonFiniteGuard(L.Callback):
    """Stop on a non-finite training loss, or skip that optimiser update.

    With ``skip_nonfinite=False`` (default) a NaN/Inf loss raises
    :class:`NonFiniteLossError` naming the epoch, batch index, optimiser step, the batch's
    ``batch["name"]`` entries and the learning rate, before the NaN reaches the weights.

    With ``skip_nonfinite=True`` the update is dropped instead: gradients are cleared
    before ``optimizer.step`` (torch optimisers leave parameters without ``.grad`` alone,
    momentum included) and BatchNorm running statistics are restored to their values
    before the bad batch. The step counter and the schedule still advance, so the run
    length is unchanged. Skips are counted (``skipped_steps``, restored on resume), warned
    about, and logged as ``train/skipped_steps``.

    Under DDP the decision is taken jointly (any rank non-finite -> every rank skips or
    stops), since gradients are averaged across ranks.

    Args:
        skip_nonfinite: skip the update instead of stopping the run.
    """

    def __init__(self, skip_nonfinite: bool = False) -> None:
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        self._names: list[str] = []
        self._batch_idx = 0
        self._bad = False
        self._buffers: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        names = batch.get("name") if isinstance(batch, dict) else None
        self._names = [str(n) for n in names] if names is not None else []
        self._batch_idx = batch_idx
        if self.skip_nonfinite and batch_idx % trainer.accumulate_grad_batches == 0:
            # first micro-batch of an update: remember BatchNorm statistics
            self._buffers = {k: b.detach().clone() for k, b in pl_module.named_buffers()}

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        if not self.skip_nonfinite:
            raise NonFiniteLossError(self._describe(trainer, loss))
        self._bad = True

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._bad:
            return
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        with torch.no_grad():
            for key, buffer in pl_module.named_buffers():
                if key in self._buffers:
                    buffer.copy_(self._buffers[key])
        self._bad = False
        self.skipped_steps += 1
        rank_zero_warn(f"skipped the update: {self._describe(trainer, None)}")

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.skip_nonfinite:
            pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=True)

    def _describe(self, trainer: L.Trainer, loss: torch.Tensor | None) -> str:
        lrs = [float(group["lr"]) for opt in trainer.optimizers for group in opt.param_groups]
        value = ""
        if loss is not None:
            value = f"loss ({loss.detach().float().item()} on this rank) "
        names = ", ".join(self._names) or "(batch has no 'name' entry)"
        text = (
            f"non-finite training {value}at epoch {trainer.current_epoch}, batch "
            f"{self._batch_idx}, optimiser step {trainer.global_step} (rank "
            f"{trainer.global_rank}); batch names: {names}; learning rate: "
            f"{', '.join(f'{lr:.6g}' for lr in lrs)}."
        )
        if loss is not None:
            text += (
                " Check these images and masks, lower the learning rate, or set "
                "callbacks.nonfinite_guard.skip_nonfinite=true to skip such steps."
            )
        return text
