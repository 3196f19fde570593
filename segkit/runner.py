"""Building blocks of the entry points (train.py, eval.py): config -> task/trainer, scoring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from segkit.callbacks import ConfigInCheckpoint
from segkit.report import print_report, write_report


def build_task(cfg: DictConfig) -> L.LightningModule:
    """Instantiate ``cfg.task`` with the model, loss, optimizer and scheduler groups."""
    scheduler = hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return hydra.utils.instantiate(
        cfg.task,
        model=hydra.utils.instantiate(cfg.model),
        loss=hydra.utils.instantiate(cfg.loss),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=scheduler,
    )


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """Instantiate ``cfg.trainer`` with ``cfg.callbacks`` and ``cfg.logger``.

    The resolved config is stored in every checkpoint (:class:`ConfigInCheckpoint`).
    """
    callbacks: list[L.Callback] = [
        hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()
    ]
    callbacks.append(ConfigInCheckpoint(OmegaConf.to_container(cfg, resolve=True)))
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def checkpoint_epoch(ckpt_path: str | Path | None) -> int | None:
    """The epoch stored in a Lightning checkpoint (memory-mapped, so cheap for big models)."""
    if not ckpt_path:
        return None
    checkpoint = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False)
    return checkpoint.get("epoch")


def evaluate(
    trainer: L.Trainer,
    task: L.LightningModule,
    datamodule: L.LightningDataModule,
    stage: str,
    ckpt_path: str | Path | None,
    output_dir: str | Path,
) -> dict[str, Any]:
    """Score ``ckpt_path`` (or the current weights) on the ``val`` or ``test`` split.

    Writes the report files into ``output_dir`` and prints the per-class table (rank 0 only).

    Returns:
        the ``metrics.json`` content, or ``{}`` on other ranks.
    """
    run = trainer.validate if stage == "val" else trainer.test
    run(task, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    if not trainer.is_global_zero:
        return {}
    extra = {
        "checkpoint": str(ckpt_path) if ckpt_path else None,
        "epoch": checkpoint_epoch(ckpt_path),
    }
    metrics = write_report(
        output_dir,
        task.confusion_matrices[stage],
        task.class_names,
        split=datamodule.splits[stage],
        extra=extra,
    )
    print_report(metrics)
    return metrics
