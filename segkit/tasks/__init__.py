"""Lightning modules (semantic, instance) and :func:`build_task`, which builds one from config,
with what a training step needs besides the model: losses, class weights, optimiser
parameter groups and EMA (``optim.py``), learning-rate schedules.

Above ``evaluation`` (a task logs its metrics and runs its inference), below ``engine`` (the
run that builds and drives a task).
"""

from __future__ import annotations

import inspect

import hydra
import lightning as L
from omegaconf import DictConfig

from segkit.models.weights import build_model


def build_task(cfg: DictConfig) -> L.LightningModule:
    """Instantiate ``cfg.task`` with the model (:func:`segkit.models.weights.build_model`: built,
    then ``weights_path`` loaded), loss, optimizer and scheduler groups.

    The loss goes to tasks that take a ``loss`` argument only: Mask R-CNN computes its own
    losses, so the instance task has none.

    Building reads no data and leaves ``cfg`` as it is: named ``loss.class_weights``
    (``median_frequency``, ...) must be resolved into numbers first
    (:func:`segkit.tasks.class_weights.resolve_class_weights`, a printed step of ``train()``),
    so the config stored in the checkpoints holds them and rebuilding the task never needs
    the training data.
    """
    scheduler = hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    parts = {"model": build_model(cfg.model)}
    if "loss" in inspect.signature(hydra.utils.get_class(cfg.task._target_)).parameters:
        parts["loss"] = hydra.utils.instantiate(cfg.loss)
    optimizer = hydra.utils.instantiate(cfg.optimizer)
    return hydra.utils.instantiate(cfg.task, **parts, optimizer=optimizer, scheduler=scheduler)
