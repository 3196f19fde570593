"""Lightning modules (semantic, instance) and :func:`build_task`, which builds one from config,
with what a training step needs besides the model: losses, class weights, optimiser
parameter groups and EMA (``optim.py``), learning-rate schedules.

Above ``evaluation`` (a task logs its metrics and runs its inference), below ``engine`` (the
run that builds and drives a task).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

from segkit.models.weights import build_model
from segkit.tasks.class_weights import resolve_class_weights


def build_task(
    cfg: DictConfig, datamodule: L.LightningDataModule | None = None
) -> L.LightningModule:
    """Instantiate ``cfg.task`` with the model (:func:`segkit.models.weights.build_model`: built,
    then ``weights_path`` loaded), loss, optimizer and scheduler groups.

    The loss goes to tasks that take a ``loss`` argument only: Mask R-CNN computes its own
    losses, so the instance task has none.

    With ``datamodule``, named ``loss.class_weights`` (``median_frequency``, ...) are first
    computed from its training split and written into ``cfg.loss`` as numbers
    (:func:`segkit.tasks.class_weights.resolve_class_weights`), so the config stored in the
    checkpoints holds them and rebuilding the task never needs the training data.
    """
    if datamodule is not None:
        resolve_class_weights(cfg.loss, datamodule, Path(cfg.paths.data_dir) / "cache")
    scheduler = hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    parts = {"model": build_model(cfg.model)}
    if "loss" in inspect.signature(hydra.utils.get_class(cfg.task._target_)).parameters:
        parts["loss"] = hydra.utils.instantiate(cfg.loss)
    optimizer = hydra.utils.instantiate(cfg.optimizer)
    return hydra.utils.instantiate(cfg.task, **parts, optimizer=optimizer, scheduler=scheduler)
