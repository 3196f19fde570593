"""Building blocks of the entry points (train.py, eval.py): config -> task/trainer, scoring.

Also the two reliability pieces that need the whole config: which checkpoint a run resumes
from (:func:`resume_checkpoint`), and :class:`DDPJobCallback`, which keeps each Hydra job
of a multirun in its own DDP world and its own folder.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from segkit.callbacks import AtomicCheckpointIO, ConfigInCheckpoint
from segkit.class_weights import resolve_class_weights
from segkit.report import print_report, write_report


def build_task(
    cfg: DictConfig, datamodule: L.LightningDataModule | None = None
) -> L.LightningModule:
    """Instantiate ``cfg.task`` with the model, loss, optimizer and scheduler groups.

    With ``datamodule``, named ``loss.class_weights`` (``median_frequency``, ...) are first
    computed from its training split and written into ``cfg.loss`` as numbers
    (:func:`segkit.class_weights.resolve_class_weights`), so the config stored in the
    checkpoints holds them and rebuilding the task never needs the training data.
    """
    if datamodule is not None:
        resolve_class_weights(cfg.loss, datamodule, Path(cfg.paths.data_dir) / "cache")
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

    With no logger (``logger=none``) a ``LearningRateMonitor`` is left out.

    The resolved config is stored in every checkpoint (:class:`ConfigInCheckpoint`), and
    checkpoints are written atomically (:class:`AtomicCheckpointIO`). ``trainer.
    sync_batchnorm=true`` is turned off with a warning when only one process runs (nothing
    to synchronise) or on CPU (torch's SyncBatchNorm supports only GPU-like devices).
    """
    callbacks: list[L.Callback] = [
        hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()
    ]
    callbacks.append(ConfigInCheckpoint(OmegaConf.to_container(cfg, resolve=True)))
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    if not loggers:  # LearningRateMonitor raises without a logger; there is nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]

    def make(**overrides: Any) -> L.Trainer:
        return hydra.utils.instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            plugins=[AtomicCheckpointIO()],
            **overrides,
        )

    trainer = make()
    if cfg.trainer.get("sync_batchnorm"):
        reason = ""
        if trainer.world_size == 1:
            reason = "only one process runs"
        elif isinstance(trainer.accelerator, CPUAccelerator):
            reason = "torch's SyncBatchNorm does not run on CPU"
        if reason:
            warnings.warn(
                f"trainer.sync_batchnorm=true is ignored: {reason}; training uses plain "
                "BatchNorm. Set trainer.sync_batchnorm=false to silence this.",
                stacklevel=2,
            )
            trainer = make(sync_batchnorm=False)
    return trainer


def checkpoint_epoch(ckpt_path: str | Path | None) -> int | None:
    """The epoch stored in a Lightning checkpoint (memory-mapped, so cheap for big models)."""
    if not ckpt_path:
        return None
    checkpoint = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True)
    return checkpoint.get("epoch")


def newest_last_checkpoint(run_dir: str | Path) -> Path | None:
    """The most recently written ``last*.ckpt`` anywhere under ``run_dir``, or ``None``.

    ``last-v1.ckpt`` etc. count too (Lightning's names when ``last.ckpt`` already existed);
    ``*.partial`` temporary files of :class:`AtomicCheckpointIO` never do.
    """
    candidates = [p for p in Path(run_dir).rglob("last*.ckpt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


def resume_checkpoint(cfg: DictConfig, task: torch.nn.Module | None = None) -> str | None:
    """The checkpoint this run starts from, from ``cfg.ckpt_path`` and ``cfg.resume``.

    * ``ckpt_path=<file>``: that file (it must exist).
    * ``ckpt_path=last``: the newest ``last*.ckpt`` under this run's folder
      ``cfg.paths.output_dir``; an error if there is none (you asked to resume).
    * ``resume=auto``: the same search, but a fresh start when nothing is there, so one
      command serves the first submission of a cluster job and every requeue.
    * neither: ``None`` (a fresh start).

    The run folder is Hydra's output dir. Its default name is the launch time, so a
    requeued job must pin it (``hydra.run.dir=logs/train/runs/${oc.env:SLURM_JOB_ID}``);
    other runs' folders are never searched, since they may hold a different config.

    With ``task``, the chosen checkpoint is checked against it first
    (:func:`check_checkpoint_fits`), so a wrong file fails with a readable report.
    """
    ckpt_path, resume = cfg.get("ckpt_path"), cfg.get("resume")
    if resume not in (None, "auto"):
        raise ValueError(f"resume must be null or 'auto', got {resume!r}")
    if ckpt_path is not None and resume is not None:
        raise ValueError(
            f"both ckpt_path={ckpt_path} and resume={resume} are set; keep one of them."
        )
    run_dir = Path(cfg.paths.output_dir)
    if ckpt_path == "last" or resume == "auto":
        found = newest_last_checkpoint(run_dir)
        if found is None and ckpt_path == "last":
            raise FileNotFoundError(
                f"ckpt_path=last: no last*.ckpt under this run's folder {run_dir}. Point "
                "hydra.run.dir at the folder of the run to continue, give ckpt_path=<file>, "
                "or use resume=auto to start fresh when nothing is there."
            )
        ckpt_path = None if found is None else str(found)
    elif ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file.")
    if ckpt_path is not None and task is not None:
        check_checkpoint_fits(task, ckpt_path, cfg)
    return ckpt_path


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not fit the model this run builds."""


def _model_summary(config: Any) -> str:
    """``_target_`` plus the arguments that usually differ (arch, encoder, classes)."""
    if not isinstance(config, dict | DictConfig):
        return "(unknown: the checkpoint stores no config)"
    model = config.get("model") or {}
    keys = ("_target_", "arch", "encoder_name", "backbone", "num_classes")
    return ", ".join(f"{k}={model[k]}" for k in keys if k in model) or "(no model config)"


def check_checkpoint_fits(
    task: torch.nn.Module, ckpt_path: str | Path, cfg: DictConfig | None = None
) -> None:
    """Compare a Lightning checkpoint's ``state_dict`` with ``task``'s, key by key and shape
    by shape, before Lightning loads it (memory-mapped, ``weights_only=True``).

    Raises:
        CheckpointMismatchError: listing shape mismatches, missing and unexpected keys, the
            model the checkpoint was written for (from its stored config) and this run's.
    """
    checkpoint = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if state is None:
        raise CheckpointMismatchError(
            f"{ckpt_path} has no 'state_dict', so it is not a training checkpoint; load plain "
            "weights with model.weights_path=<file> instead of ckpt_path."
        )
    own = task.state_dict()
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems = [
        f"{len(found)} {what}, e.g. {found[:3]}"
        for what, found in (
            ("shape mismatches", shapes),
            ("keys missing from the checkpoint", missing),
            ("unexpected keys", unexpected),
        )
        if found
    ]
    if not problems:
        return
    here = "" if cfg is None else f"; this run builds {_model_summary(cfg)}"
    raise CheckpointMismatchError(
        f"checkpoint {ckpt_path} does not fit this run's model: {'; '.join(problems)}. It was "
        f"written for {_model_summary(checkpoint.get('config'))}{here}. Resume with the "
        "config it was trained with (model=..., data.num_classes=...), or start a new run "
        "from its weights with model.weights_path=<file>."
    )


class DDPJobCallback(HydraCallback):
    """Hydra callback that gives every job of a multirun its own DDP world and folder.

    Lightning's DDP launcher starts ranks > 0 by re-running ``sys.argv`` with
    ``hydra.run.dir=<hydra.run.dir>``. In a multirun (``-m``) that would start the whole
    sweep again in a new timestamped folder, and the next job would find the previous
    job's process group and environment variables. So, around each job:

    * ``on_job_start`` (multirun only): ``sys.argv`` becomes this job's own overrides plus
      ``hydra.mode=RUN``, and ``hydra.run.dir`` this job's output dir, so the extra ranks
      run this job and write only into its folder.
    * ``on_job_end``: destroy the process group and restore ``sys.argv`` and the
      environment variables the launcher set (``MASTER_PORT``, ``LOCAL_RANK``, ...).
    """

    _DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")

    def __init__(self) -> None:
        self._argv: list[str] | None = None
        self._env: dict[str, str | None] = {}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._env = {key: os.environ.get(key) for key in self._DDP_ENV}
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return
        self._argv = list(sys.argv)
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, "hydra.mode=RUN"]
        output_dir = hydra_cfg.runtime.output_dir
        for node in (hydra_cfg, config.hydra):  # HydraConfig's copy and the job's config
            with read_write(node), open_dict(node):
                node.run.dir = output_dir

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._argv is not None:
            sys.argv, self._argv = self._argv, None


def evaluate(
    trainer: L.Trainer,
    task: L.LightningModule,
    datamodule: L.LightningDataModule,
    stage: str,
    ckpt_path: str | Path | None,
    output_dir: str | Path,
    loaded: tuple[str | Path, int | None] | None = None,
) -> dict[str, Any]:
    """Score ``ckpt_path`` (or the current weights) on the ``val`` or ``test`` split.

    Writes the report files into ``output_dir`` and prints the per-class table (rank 0 only).
    A task's ``extra_scores[stage]`` dict, if it has one, is added to ``metrics.json``.

    Args:
        loaded: ``(path, epoch)`` of a checkpoint whose weights ``task`` already holds
            (eval.py): it is recorded in ``metrics.json`` without being read again; give
            ``ckpt_path=None`` with it.

    Returns:
        the ``metrics.json`` content, or ``{}`` on other ranks.
    """
    run = trainer.validate if stage == "val" else trainer.test
    run(task, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, weights_only=True)
    if not trainer.is_global_zero:
        return {}
    source, epoch = loaded if loaded else (ckpt_path, checkpoint_epoch(ckpt_path))
    extra = {
        "checkpoint": str(source) if source else None,
        "epoch": epoch,
        # scores a task keeps beside its confusion matrix (instance task: COCO AP)
        **getattr(task, "extra_scores", {}).get(stage, {}),
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
