"""The console of a run: one line naming what trains and one line per epoch (also in
``train.log``).

* :class:`RunOverview`: at the start of fitting, the model, its parameter counts, the loss,
  the optimiser, and the run's callbacks (those of ``conf/callbacks/`` and
  :data:`segkit.engine.callbacks.EVERY_RUN`).
* :class:`EpochLines`: one line per training epoch (loss, validation scores, best so far,
  learning rate, time).

Both are in every run (:data:`segkit.engine.callbacks.EVERY_RUN`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from segkit.engine.checkpoints import describe_model

progress_log = logging.getLogger("segkit.progress")  # Hydra: console and <run>/train.log
EPOCH_MINUTES = "time/epoch_minutes"  # logged by EpochLines, read by deploy.publish


def _format_rate(trainer: L.Trainer) -> str:
    """The largest learning rate of the first optimiser (the head's, with a backbone
    multiplier below 1)."""
    if not trainer.optimizers:
        return "-"
    return f"{max(group['lr'] for group in trainer.optimizers[0].param_groups):.3g}"


class EpochLines(L.Callback):
    """One log line per training epoch, on rank 0 (here wrapped)::

        epoch 3/45 | step 135 | train loss 0.4123 | val mIoU 61.23 PA 88.10
            | best mIoU 61.23 (epoch 3) | lr 0.00182 | 2.1 min

    The train loss is the mean of the epoch's step losses (accumulated on the device, read
    once per epoch); the val figures are those of this epoch's validation, left out in
    epochs without one; "best" is the best ``monitor`` so far (maximised). Written through
    the ``segkit.progress`` logger, which Hydra sends to the console and to the run's
    ``train.log``; the progress bar is off when the output is not a terminal
    (:func:`segkit.engine.runner.build_trainer`), so a log file reads one line per epoch.

    The epoch's wall time (training and, in epochs that validate, validation; from the
    epoch's start to its end, so start-up and time spent stopped are not counted) is also
    logged as ``time/epoch_minutes``: a published result's ``history.csv`` carries it
    (``epoch_minutes``), and its running sum is the x axis of time-to-accuracy charts
    (:mod:`segkit.evaluation.compare`).

    Args:
        monitor: the validation metric followed for "best" (the config's
            ``optimized_metric``).
    """

    def __init__(self, monitor: str = "val/mIoU") -> None:
        self.monitor = monitor
        self.best: tuple[float, int] | None = None
        self._loss_sum: torch.Tensor | None = None
        self._steps = 0
        self._started = 0.0
        self._validated = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum, self._steps, self._validated = None, 0, False
        self._started = time.monotonic()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._steps += 1

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._validated = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        minutes = (time.monotonic() - self._started) / 60
        pl_module.log(EPOCH_MINUTES, minutes, on_epoch=True, on_step=False)
        if not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        parts = [f"epoch {epoch}/{trainer.max_epochs}", f"step {trainer.global_step}"]
        if self._steps:
            parts.append(f"train loss {float(self._loss_sum) / self._steps:.4f}")
        metrics = trainer.callback_metrics
        if self._validated:
            shown = [(k, metrics.get(f"val/{k}")) for k in ("mIoU", "PA")]
            parts.append(
                "val " + " ".join(f"{k} {100 * float(v):.2f}" for k, v in shown if v is not None)
            )
            value = metrics.get(self.monitor)
            if value is not None and (self.best is None or float(value) > self.best[0]):
                self.best = (float(value), epoch)
            if self.best is not None:
                name = self.monitor.split("/", 1)[-1]
                parts.append(f"best {name} {100 * self.best[0]:.2f} (epoch {self.best[1]})")
        parts += [
            f"lr {_format_rate(trainer)}",
            f"{minutes:.1f} min",
        ]
        progress_log.info(" | ".join(parts))

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")


class RunOverview(L.Callback):
    """At the start of fitting, one log line naming what trains: the model config
    (:func:`segkit.engine.checkpoints.describe_model`), the parameter counts of ``pl_module.model``,
    the loss and the optimiser. It stands in for Lightning's summary table
    (``trainer.enable_model_summary: false``), which names only wrapper classes and prints
    a FLOPs column of zeros without an example input; ``python -m segkit.cli.model_summary`` counts
    FLOPs. A second line names the run's callbacks, when they are given::

        callbacks: model_checkpoint, last_checkpoint, ... (conf/callbacks) | every run:
            ConfigInCheckpoint, ResumeGuard, TrainingBatchesCheck, RunOverview, EpochLines

    Args:
        config: the composed config (plain containers).
        configured: the keys of the run's ``callbacks`` config that became callbacks.
        every_run: the class names of :data:`segkit.engine.callbacks.EVERY_RUN`.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        configured: Sequence[str] = (),
        every_run: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.configured = list(configured)
        self.every_run = list(every_run)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        network = getattr(pl_module, "model", pl_module)
        total = sum(p.numel() for p in network.parameters())
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        optimizer = (self.config.get("optimizer") or {}).get("_target_", "-")
        loss = getattr(pl_module, "loss", None)
        progress_log.info(
            f"model {describe_model(self.config)}: "
            f"{total:,} parameters ({trainable:,} trainable) | task {type(pl_module).__name__}"
            f" | loss {type(loss).__name__ if loss is not None else '-'}"
            f" | optimiser {optimizer.rsplit('.', 1)[-1]}"
        )
        if self.configured or self.every_run:
            progress_log.info(
                f"callbacks: {', '.join(self.configured) or 'none'} (conf/callbacks)"
                f" | every run: {', '.join(self.every_run) or 'none'}"
            )
