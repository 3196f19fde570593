"""One trained checkpoint rebuilt as a task for eval.py and predict.py (:func:`load_task`);
an ensemble of several is loaded member by member with it
(:func:`segkit.engine.ensemble.load_ensemble`).

The caller merges the command line first: ``overrides`` (``{"data": ..., "task": ...}``,
plain containers, e.g. :func:`given_groups`) are merged over the checkpoint's stored config,
after :func:`segkit.engine.checkpoints.checkpoint_overrides` has refused those that
contradict the classes the weights were trained on. The weights come from the checkpoint
alone (:func:`segkit.engine.checkpoints.task_from_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from segkit.engine.checkpoints import checkpoint_overrides, load_checkpoint, task_from_checkpoint


@dataclass
class Trained:
    """A task rebuilt from one checkpoint, or the ensemble of several.

    Attributes:
        path: the checkpoint file; for an ensemble, the list of its members' files.
        config: the stored config merged with the overrides; for an ensemble its first
            member's, which gives the data, palette and split.
        task: in eval mode, on the CPU.
        epoch: the checkpoint's epoch (``None``: not stored, or an ensemble).
        members: an ensemble's members, each from :func:`load_task`; ``[]`` for one checkpoint.
    """

    path: str | list[str]
    config: DictConfig
    task: L.LightningModule
    epoch: int | None
    members: list[Trained] = field(default_factory=list)


def given_groups(cfg: DictConfig) -> dict[str, Any]:
    """The ``data`` and ``task`` nodes of ``cfg`` (what the command line gave eval.py or
    predict.py) as plain containers, interpolations resolved; an empty node is left out."""
    return {
        key: OmegaConf.to_container(cfg[key], resolve=True)
        for key in ("data", "task")
        if cfg.get(key)
    }


def load_task(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Trained:
    """Rebuild the task of the checkpoint ``path`` with ``overrides`` merged over its config.

    Args:
        path: a ``.ckpt`` written by train.py, or a published ``model.pt``.
        overrides: ``{"data": {...}, "task": {...}}`` (plain containers), merged over the
            stored config once checked against it.

    Raises:
        FileNotFoundError, CheckpointError: ``path`` is no readable segkit checkpoint (a
            folder, an empty, damaged or foreign file, a plain state dict), naming what is
            there and what to give instead (:func:`segkit.engine.checkpoints.load_checkpoint`).
        ConfigError: an override contradicts the checkpoint's classes.
    """
    checkpoint = load_checkpoint(path)  # the one read of the file
    stored = checkpoint["config"]
    config, task = task_from_checkpoint(checkpoint, checkpoint_overrides(overrides or {}, stored))
    return Trained(str(path), config, task, checkpoint.get("epoch"))
