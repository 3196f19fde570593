"""Building blocks of the entry points (train.py, eval.py, predict.py): config -> task/trainer,
start-up checks, fitting, scoring, and the line that says where a run's results are.

Also the reliability pieces that need the whole config: which checkpoint a run resumes
from (:func:`resume_checkpoint`), what to type to continue an interrupted run
(:func:`continue_command`, printed by :func:`fit`), and the Hydra callbacks
:class:`DDPJobCallback` (each job of a multirun in its own DDP world and folder),
:class:`KeepEarlierConfigs` (a run started again in its folder keeps the earlier
``.hydra`` files) and :class:`SweepSummary` (a multirun ends with its folder and the
leaderboard command).
"""

from __future__ import annotations

import difflib
import inspect
import os
import shlex
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from segkit.callbacks import (
    AtomicCheckpointIO,
    ConfigInCheckpoint,
    LastCheckpoint,
    TrainingBatchesCheck,
)
from segkit.class_weights import resolve_class_weights
from segkit.report import print_report, write_report
from segkit.resume import ResumeGuard

# Keys of a Hydra node that are Hydra's, not the callable's.
_HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
# Arguments the code passes itself, per group (the task builds the optimiser and schedule).
_SUPPLIED = {
    "optimizer": ("params",),
    "scheduler": ("optimizer", "total_steps"),
    "task": ("model", "loss", "optimizer", "scheduler"),
    "loss": (),
    "model": (),
}


class ConfigError(ValueError):
    """A config key that cannot work, found at start-up (before data or model are built)."""


def check_arguments(cfg: DictConfig, groups: tuple[str, ...] = tuple(_SUPPLIED)) -> None:
    """Check that every key of the ``groups`` nodes is an argument of its ``_target_``.

    ``+optimizer.learning_rate=1e-3`` would otherwise fail with a ``TypeError`` of AdamW
    once the data and the model are built. Callables that take ``**kwargs`` are not
    checked; nested nodes (``loss.losses``) are checked when they are instantiated.

    Raises:
        ConfigError: naming the key, the callable and its valid keys.
    """
    for group in groups:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        target = node._target_
        try:
            parameters = inspect.signature(hydra.utils.get_object(target)).parameters
        except (ImportError, ValueError, TypeError, AttributeError):
            continue  # an unknown target fails with Hydra's own message when built
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        valid = [n for n in parameters if n not in _SUPPLIED[group] and n != "self"]
        unknown = [k for k in node if k not in _HYDRA_KEYS and k not in valid]
        if unknown:
            keys = ", ".join(f"{group}.{k}" for k in unknown)
            raise ConfigError(
                f"{keys} {'is not an argument' if len(unknown) == 1 else 'are not arguments'} "
                f"of {target}; its arguments are {', '.join(f'{group}.{n}' for n in valid)}. "
                f"Fix the name (e.g. {group}.{_closest(unknown[0], valid)}=...) and drop the '+'."
            )


def _closest(name: str, valid: list[str]) -> str:
    """The valid key most like ``name`` (learning_rate -> lr), for the hint."""
    initials = "".join(part[0] for part in name.split("_") if part)
    if initials in valid:  # an abbreviation: learning_rate -> lr
        return initials
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.0)
    return close[0] if close else (valid[0] if valid else name)


def check_task_kinds(task: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """Stop at start-up when the task, the model and the data are of different kinds.

    Mask R-CNN (torchvision's detection models) needs ``task=instance`` (which
    ``model=maskrcnn`` selects, unless ``task=`` is given too) and instance data
    (``data=shapes_instances``, ``data=coco``); the semantic task needs a semantic model
    and semantic data.

    Raises:
        ConfigError: naming the group choices that fix it.
    """
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    from segkit.data.instances import InstanceDataModule
    from segkit.tasks.instance import InstanceSegmentationTask

    instance_task = isinstance(task, InstanceSegmentationTask)
    instance_model = isinstance(getattr(task, "model", None), GeneralizedRCNN)
    instance_data = isinstance(datamodule, InstanceDataModule)
    if instance_model and not instance_task:
        raise ConfigError(
            f"the model ({type(task.model).__name__}) is an instance-segmentation model, but "
            f"the task is {type(task).__name__}: use task=instance (model=maskrcnn selects "
            "it unless task= is given) with instance data, e.g. data=shapes_instances; "
            "or run experiment=shapes_maskrcnn."
        )
    if instance_task and not instance_model:
        raise ConfigError(
            f"task=instance needs an instance-segmentation model (model=maskrcnn), got "
            f"{type(task.model).__name__}; for a semantic model use task=semantic."
        )
    if instance_task and not instance_data:
        raise ConfigError(
            f"task=instance trains on instance data (data=shapes_instances or data=coco), "
            f"got {type(datamodule).__name__} without instance masks."
        )
    if not instance_task and instance_data:
        raise ConfigError(
            f"{type(datamodule).__name__} is instance data: train it with model=maskrcnn "
            "(task=instance), or use its semantic counterpart (e.g. data=shapes)."
        )


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

    The resolved config is stored in every checkpoint (:class:`ConfigInCheckpoint`), a
    resumed run checks its config changes against it (:class:`~segkit.resume.ResumeGuard`),
    a training split without a single batch stops the run
    (:class:`~segkit.callbacks.TrainingBatchesCheck`), and checkpoints are written
    atomically (:class:`AtomicCheckpointIO`). ``trainer.
    sync_batchnorm=true`` is turned off with a warning when only one process runs (nothing
    to synchronise) or on CPU (torch's SyncBatchNorm supports only GPU-like devices).
    """
    callbacks: list[L.Callback] = [
        hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()
    ]
    config = OmegaConf.to_container(cfg, resolve=True)
    callbacks += [ConfigInCheckpoint(config), ResumeGuard(config), TrainingBatchesCheck()]
    # LastCheckpoint after ModelCheckpoint (Lightning keeps the order of checkpoint
    # callbacks), so the epoch-end last.ckpt records that epoch's best checkpoint
    callbacks.sort(key=lambda callback: isinstance(callback, LastCheckpoint))
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


def best_checkpoint(trainer: L.Trainer) -> str:
    """The best checkpoint of the first ``ModelCheckpoint`` (``""`` when none was written)."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            return callback.best_model_path
    return ""


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


# --- fitting, interrupts and where the results are ----------------------------------------


def continue_command(cfg: DictConfig) -> str:
    """The command that continues this run from its ``last.ckpt``.

    This job's command-line overrides (``ckpt_path``/``resume`` left out), its folder
    pinned with ``hydra.run.dir`` and ``ckpt_path=last``; for a job of a multirun too,
    which then continues as a single run in the job's folder.
    """
    overrides: list[str] = []
    if HydraConfig.initialized():
        overrides = [
            o
            for o in HydraConfig.get().overrides.task
            if o.lstrip("+~").split("=")[0] not in ("ckpt_path", "resume")
        ]
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "train.py"
    words = ["python", script, *overrides]
    words += [f"hydra.run.dir={cfg.paths.output_dir}", "ckpt_path=last"]
    return shlex.join(words)


def fit(
    cfg: DictConfig,
    trainer: L.Trainer,
    task: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt_path: str | None,
) -> None:
    """``trainer.fit`` that says where the work is when it stops early.

    On an interrupt (SIGINT/SIGTERM: :class:`~segkit.callbacks.LastCheckpoint` has saved
    ``last.ckpt`` at the end of the step in progress) or an error after training began, rank
    0 prints which ``last.ckpt`` holds the work (or that none was written, so the work is
    lost) and the exact command that continues the run (:func:`continue_command`). An
    interrupted run exits with status 128 + the signal number (130 for Ctrl-C, 143 for
    SIGTERM).
    """
    import signal as signals

    last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except BaseException as error:
        interrupted = last.interrupted if last is not None else None
        if trainer.is_global_zero and (interrupted or trainer.global_step > 0):
            _say_where_the_work_is(cfg, trainer, last, interrupted, error)
        if interrupted in signals.Signals.__members__:
            raise SystemExit(128 + signals.Signals[interrupted]) from error
        raise


def _say_where_the_work_is(
    cfg: DictConfig,
    trainer: L.Trainer,
    last: LastCheckpoint | None,
    interrupted: str | None,
    error: BaseException,
) -> None:
    why = f"interrupted by {interrupted}" if interrupted else f"stopped by {type(error).__name__}"
    path = last.path if last is not None else None
    if path is not None and path.is_file():
        step = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["global_step"]
        saved = "saved at this step" if last.interrupt_saved else "the newest save"
        print(
            f"\nTraining {why} at step {trainer.global_step}: {path} holds step {step} "
            f"({saved}). Continue with:\n  {continue_command(cfg)}",
            flush=True,
        )
    else:
        print(
            f"\nTraining {why} at step {trainer.global_step}: no checkpoint was written, so "
            "the work of this run is lost.",
            flush=True,
        )


def print_results(folder: str | Path, what: str) -> None:
    """The last line of every run: where its results are."""
    print(f"Results: {Path(folder).resolve()} ({what})", flush=True)


class KeepEarlierConfigs(HydraCallback):
    """Hydra callback: a run started again in an existing folder (``hydra.run.dir=<run>
    ckpt_path=last``) keeps the earlier ``.hydra/{config,hydra,overrides}.yaml`` as
    ``config.<n>.yaml`` etc. (n = 1, 2, ... in start order) instead of letting Hydra
    overwrite them; the plain names describe the newest start.

    DDP ranks > 0 (started with ``hydra.output_subdir=null``) write no files and move none.
    """

    NAMES = ("config", "hydra", "overrides")

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        subdir = config.hydra.output_subdir
        if subdir is None or os.environ.get("LOCAL_RANK", "0") != "0":
            return
        folder = Path(config.hydra.run.dir) / subdir
        if not (folder / "config.yaml").is_file():
            return
        number = 1
        while any((folder / f"{name}.{number}.yaml").exists() for name in self.NAMES):
            number += 1
        for name in self.NAMES:
            if (folder / f"{name}.yaml").is_file():
                (folder / f"{name}.yaml").rename(folder / f"{name}.{number}.yaml")


class SweepSummary(HydraCallback):
    """Hydra callback: a multirun ends with its folder and the leaderboard command."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        print_results(sweep, "one folder per job")
        print(f"Leaderboard: python -m segkit.leaderboard {shlex.quote(str(sweep))}", flush=True)


# --- eval.py / predict.py: config merged over a checkpoint's ---------------------------


# Keys fixed by the trained weights: an override that differs cannot be honoured.
CLASS_KEYS = ("num_classes", "class_names")


def checkpoint_overrides(given: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data``/``task`` overrides of eval.py or predict.py, checked against the config
    stored in the checkpoint.

    A ``num_classes`` or ``class_names`` that differs from the
    checkpoint's is refused: the classes are fixed by the trained weights, and the report
    would otherwise show the checkpoint's classes under the new names.

    Args:
        given: ``{"data": {...}, "task": {...}}`` from the command line (plain containers).
        stored: the checkpoint's ``config``.

    Raises:
        ConfigError: naming each contradicting key, its value and the checkpoint's.
    """

    overrides = {k: v for k, v in given.items() if v}
    contradictions = []
    for group, node in overrides.items():
        for key in CLASS_KEYS:
            if key not in node:
                continue
            mine, theirs = node[key], (stored.get(group) or {}).get(key)
            mine = list(mine) if isinstance(mine, list | tuple) else mine
            theirs = list(theirs) if isinstance(theirs, list | tuple) else theirs
            if theirs is not None and mine != theirs:
                contradictions.append(f"{group}.{key}={mine} (the checkpoint has {theirs})")
    if contradictions:
        data = stored.get("data") or {}
        raise ConfigError(
            f"{'; '.join(contradictions)}: the classes of a trained model are fixed by its "
            f"weights (data.num_classes={data.get('num_classes')}, data.class_names="
            f"{data.get('class_names')}). Drop these overrides, or train a model with the "
            "new classes."
        )
    return overrides
