"""Checkpoints: write them atomically, read them once, choose the one a run resumes from,
check that one fits before Lightning loads it, and rebuild a trained task from one.

* :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the target folder
  and renames it into place, so a killed process never leaves a half-written ``.ckpt``.
* :func:`load_checkpoint` and :func:`task_from_checkpoint` rebuild a trained task from the
  config stored in a train.py checkpoint (eval.py, predict.py, ``segkit.deploy.publish``);
  :func:`checkpoint_overrides` checks the command-line overrides of those tools against it.
  A stored config written before the sub-package layout names the old modules in its
  ``_target_`` paths; :func:`load_checkpoint` rewrites them (:data:`MOVED_MODULES`).
* :func:`resume_checkpoint` picks the checkpoint of ``ckpt_path=<file>|last`` or
  ``resume=auto``, and :func:`check_checkpoint_fits` compares its weights with the task's.
* :func:`check_run_folder` stops a fresh run whose folder already holds a run, before
  anything is built: it would write over that run's report and ``last.ckpt``.
* What a resumed run may change (:func:`config_changes`, :func:`refused_changes`; the
  :class:`~segkit.engine.callbacks.checkpointing.ResumeGuard` callback applies them):

  - **applied**: a new run length (``trainer.max_epochs``, ``trainer.max_steps``). The
    step-counted schedule (poly, cosine, multistep) is given the new total
    (:func:`segkit.tasks.schedulers.set_total_steps`): from the restored step on, the learning
    rate is the one a run of the new length has at that step. Without this, a finished
    poly schedule would train every extra step at learning rate 0.
  - **refused** (:class:`ResumeError`, before the first step): ``optimizer.*``,
    ``scheduler.*`` and the task's learning-rate multipliers and weight-decay switch (the
    restored optimiser and schedule hold the old values, so the new ones would be
    ignored), and a different number of optimiser steps per epoch (training data,
    ``data.batch_size``, ``trainer.accumulate_grad_batches``, ``trainer.devices``, ...: the
    restored epoch, step and schedule positions would no longer line up). To train on with
    such changes, start a new run from the checkpoint's weights: ``model.weights_path=<ckpt>``.
  - **accepted**: everything else (``data.num_workers``, ``test``, callbacks, logger, ...).

  Checkpoints of ``ModelCheckpoint`` (``best_epoch*.ckpt``) that the restored state does
  not know come from the interrupted part of the earlier run, after the checkpoint resumed
  from; :func:`segkit.engine.callbacks.checkpointing.move_superseded_checkpoints` moves them
  to ``checkpoints/superseded/`` (nothing is deleted), so the folder holds only the resumed
  run's best checkpoint.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from segkit.config import ConfigError
from segkit.models.weights import load_torch_file, path_problem
from segkit.outputs import OutputExistsError
from segkit.tasks import build_task

PARTIAL_SUFFIX = ".partial"  # temporary checkpoint files; never matched by *.ckpt globs


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.<random>.partial`` next to the target, fsync, then rename.

    ``os.replace`` is atomic within one filesystem, so a reader (or a resumed run) sees
    either the previous complete file or the new complete file, never a truncated one. The
    temporary name ends in ``.partial`` (not ``.ckpt``) and starts with a dot, so neither
    Lightning's ``last*.ckpt`` search nor segkit's resume logic can pick it up. Remote paths
    (``s3://`` etc.) go to Lightning's writer unchanged.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX
        )
        try:
            os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; match open()
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Persist a rename: fsync the directory entry (a no-op where the OS does not allow it)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


class CheckpointError(ValueError):
    """A file given as a checkpoint (``ckpt_path``) is not one segkit can rebuild a model from."""


# What eval.py, predict.py and export.py read, the last sentence of every message about one.
CHECKPOINT_FIX = (
    "Give the .ckpt of a train.py run (logs/train/runs/<run>/checkpoints/*.ckpt) or a "
    "published model.pt (predict.py also runs a .onnx file that export.py wrote)."
)


# What train.py's ckpt_path takes, the last sentence of every message about one.
RESUME_FIX = (
    "ckpt_path resumes a segkit run: give its checkpoints/last.ckpt (or ckpt_path=last with "
    "hydra.run.dir=<run>); to start a new run from weights, use model.weights_path=<file>."
)


def _files_in(folder: Path) -> list[str]:
    """Up to three checkpoint files under ``folder`` (``*.ckpt``, ``model.pt``), for messages."""
    found = sorted(folder.rglob("*.ckpt")) + sorted(folder.rglob("model.pt"))
    return [str(path) for path in found if path.is_file()][:3]


def read_checkpoint(ckpt_path: str | Path, mmap: bool = False, fix: str = CHECKPOINT_FIX) -> Any:
    """The content of the file ``ckpt_path`` names, read onto the CPU with
    ``torch.load(weights_only=True)`` (:func:`~segkit.models.weights.load_torch_file`).

    Raises:
        FileNotFoundError: nothing is there (a broken link says where it points).
        CheckpointError: a folder (listing the checkpoints in it), an empty, damaged or
            foreign file (ONNX, TorchScript, text, ...): naming the path, what is there and
            ``fix``.
    """
    path = Path(ckpt_path).expanduser()
    problem = path_problem(path)
    if problem == "does not exist" or (problem or "").startswith("is a symbolic link"):
        raise FileNotFoundError(f"ckpt_path={path} {problem}. {fix}")
    if path.is_dir():
        inside = _files_in(path)
        hint = f" It holds {inside}: give one of them." if inside else ""
        raise CheckpointError(f"ckpt_path={path} is a folder, not a checkpoint file.{hint} {fix}")
    return load_torch_file(path, "ckpt_path", fix, CheckpointError, mmap=mmap)


def _describe_content(content: Any) -> str:
    """What a file without segkit's config holds, in words."""
    if not isinstance(content, Mapping):
        return f"a {type(content).__name__}"
    if content and all(isinstance(v, torch.Tensor) for v in content.values()):
        return f"a plain state dict ({len(content)} tensors, e.g. {list(content)[:2]})"
    if "state_dict" in content:
        keys = sorted(map(str, content))[:6]
        return f"a Lightning checkpoint of another program (keys {keys})"
    return f"a dict with the keys {sorted(map(str, content))[:6]}"


def load_checkpoint(ckpt_path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a Lightning checkpoint written by train.py (or a published ``model.pt``) onto the
    CPU, its stored config's ``_target_`` paths upgraded (:func:`upgrade_targets`).

    ``mmap=True`` maps the file instead of reading it: cheap when only the config is read.

    Raises:
        FileNotFoundError: nothing is at ``ckpt_path``.
        CheckpointError: the file cannot be read (:func:`read_checkpoint`), or it holds no
            segkit config and weights (a plain state dict, another program's checkpoint):
            the message says what it holds and what to give instead.
    """
    path = Path(ckpt_path).expanduser()
    checkpoint = read_checkpoint(path, mmap=mmap)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("config"), Mapping):
        weights = (
            " Its weights can start a new segkit run of the architecture they belong to: "
            f"python train.py model=<that architecture> model.weights_path={path}"
        )
        train_from = weights if isinstance(checkpoint, Mapping) else ""
        raise CheckpointError(
            f"ckpt_path={path} holds {_describe_content(checkpoint)} and no segkit config (the "
            "composed config train.py stores), so the model cannot be rebuilt from it. "
            f"{CHECKPOINT_FIX}{train_from}"
        )
    if not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(
            f"ckpt_path={path} holds a segkit config but no 'state_dict' (the weights). "
            f"{CHECKPOINT_FIX}"
        )
    checkpoint = dict(checkpoint)
    checkpoint["config"] = upgrade_targets(checkpoint["config"])
    return checkpoint


# Where each module of the flat segkit/ went when it was split into sub-packages (issue 28).
# Checkpoints and published model.pt files written before store their config with the old
# `_target_` paths (segkit.losses.CrossEntropyLoss, ...); upgrade_targets rewrites them when
# a stored config is read (load_checkpoint, and ResumeGuard for a resumed run). A module that
# was split in turn lists its classes one by one (old class path -> new class path), applied
# after the module's move: segkit.callbacks.LastCheckpoint -> segkit.engine.callbacks.
# LastCheckpoint -> segkit.engine.callbacks.checkpointing.LastCheckpoint.
MOVED_MODULES = {
    "segkit.analysis": "segkit.evaluation.analysis",
    "segkit.callbacks": "segkit.engine.callbacks",
    "segkit.check_data": "segkit.cli.check_data",
    "segkit.checkpoints": "segkit.engine.checkpoints",
    "segkit.class_weights": "segkit.tasks.class_weights",
    "segkit.colours": "segkit.data.palettes",
    "segkit.compare": "segkit.evaluation.compare",
    "segkit.convert": "segkit.cli.convert",
    "segkit.ensemble": "segkit.engine.ensemble",
    "segkit.export": "segkit.deploy.export",
    "segkit.figures": "segkit.evaluation.figures",
    "segkit.finetune": "segkit.tasks.optim",
    "segkit.hydra_callbacks": "segkit.engine.hydra_callbacks",
    "segkit.inference": "segkit.evaluation.inference",
    "segkit.leaderboard": "segkit.evaluation.leaderboard",
    "segkit.loggers": "segkit.engine.loggers",
    "segkit.losses": "segkit.tasks.losses",
    "segkit.membrane_metrics": "segkit.evaluation.membrane_metrics",
    "segkit.metrics": "segkit.evaluation.metrics",
    "segkit.publish": "segkit.deploy.publish",
    "segkit.report": "segkit.evaluation.report",
    "segkit.runner": "segkit.engine.runner",
    "segkit.schedulers": "segkit.tasks.schedulers",
    "segkit.summary": "segkit.cli.model_summary",
    "segkit.sweeps": "segkit.engine.sweeps",
    # segkit/engine/callbacks.py became the package segkit/engine/callbacks/
    "segkit.engine.callbacks.ConfigInCheckpoint": (
        "segkit.engine.callbacks.checkpointing.ConfigInCheckpoint"
    ),
    "segkit.engine.callbacks.LastCheckpoint": (
        "segkit.engine.callbacks.checkpointing.LastCheckpoint"
    ),
    "segkit.engine.callbacks.ResumeGuard": "segkit.engine.callbacks.checkpointing.ResumeGuard",
    "segkit.engine.callbacks.TrainingBatchesCheck": (
        "segkit.engine.callbacks.guards.TrainingBatchesCheck"
    ),
    "segkit.engine.callbacks.NonFiniteGuard": "segkit.engine.callbacks.guards.NonFiniteGuard",
    "segkit.engine.callbacks.EpochLines": "segkit.engine.callbacks.console.EpochLines",
    "segkit.engine.callbacks.RunOverview": "segkit.engine.callbacks.console.RunOverview",
    "segkit.engine.callbacks.FastPaths": "segkit.engine.callbacks.speed.FastPaths",
    "segkit.engine.callbacks.ValidationFigures": (
        "segkit.engine.callbacks.figures.ValidationFigures"
    ),
}


def upgrade_targets(config: Any) -> Any:
    """A copy of a stored config (plain dicts and lists) whose ``_target_`` paths name the
    modules of today's layout (:data:`MOVED_MODULES`); every other value is kept as is."""
    if isinstance(config, Mapping):
        upgraded = {key: upgrade_targets(value) for key, value in config.items()}
        target = upgraded.get("_target_")
        if isinstance(target, str):
            module, _, name = target.rpartition(".")
            if module in MOVED_MODULES:
                target = f"{MOVED_MODULES[module]}.{name}"
            upgraded["_target_"] = MOVED_MODULES.get(target, target)  # a split module's class
        return upgraded
    if isinstance(config, list | tuple):
        return [upgrade_targets(value) for value in config]
    return config


# Model config keys that fetch weights at build time (the last two: Mask R-CNN configs
# written before the one weights contract).
WEIGHT_SOURCE_KEYS = ("weights_path", "encoder_weights", "weights", "weights_backbone")


def without_weight_sources(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose ``model`` reads no weights: every key of
    :data:`WEIGHT_SOURCE_KEYS` that it has set to null."""
    cfg = cfg.copy()
    for key in WEIGHT_SOURCE_KEYS:
        if OmegaConf.select(cfg, f"model.{key}") is not None:
            cfg.model[key] = None
    return cfg


def task_from_checkpoint(
    checkpoint: dict[str, Any], overrides: DictConfig | dict[str, Any] | None = None
) -> tuple[DictConfig, L.LightningModule]:
    """Rebuild the task stored in ``checkpoint`` and load its weights.

    The model is built with every weight source of its training run cleared
    (:data:`WEIGHT_SOURCE_KEYS` set to null): the checkpoint holds every weight, so eval and
    predict never need the training-time ``weights_path`` file, the offline encoder package
    or the Hub. The state dict is then loaded strictly, once.

    Args:
        checkpoint: from :func:`load_checkpoint`.
        overrides: config merged over the stored one (e.g. ``{"task": {"inference": ...}}``).

    Returns:
        ``(config, task)``: the merged config and the task in eval mode on the CPU. The
        config keeps the stored weight sources (it describes the run); only the build
        ignores them.
    """

    cfg = OmegaConf.create(checkpoint["config"])
    if overrides:
        cfg = OmegaConf.merge(cfg, overrides)
    task = build_task(without_weight_sources(cfg))
    # Strict, except BatchNorm step counters: a backbone trained with frozen BatchNorm
    # (Mask R-CNN on ImageNet weights) is rebuilt with plain BatchNorm, whose eval-mode output
    # is the same and which alone has num_batches_tracked.
    result = task.load_state_dict(checkpoint["state_dict"], strict=False)
    wrong = [
        k
        for k in (*result.missing_keys, *result.unexpected_keys)
        if not k.endswith("num_batches_tracked")
    ]
    if wrong:
        raise KeyError(f"the checkpoint's state dict does not fit its own config: {wrong[:5]}")
    task.eval()
    return cfg, task


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
    checkpoint = read_checkpoint(ckpt_path, mmap=True)
    return checkpoint.get("epoch") if isinstance(checkpoint, Mapping) else None


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
    elif ckpt_path is not None and Path(ckpt_path).expanduser().is_dir():
        inside = _files_in(Path(ckpt_path).expanduser())
        raise CheckpointError(
            f"ckpt_path={ckpt_path} is a folder, not a checkpoint file. To continue the run of "
            f"that folder: hydra.run.dir={ckpt_path} ckpt_path=last; or give a checkpoint file"
            + (f", e.g. {inside}." if inside else ".")
        )
    elif ckpt_path is not None and not Path(ckpt_path).expanduser().is_file():
        problem = path_problem(Path(ckpt_path).expanduser())
        raise FileNotFoundError(f"ckpt_path={ckpt_path} {problem}. {RESUME_FIX}")
    if ckpt_path is not None and task is not None:
        check_checkpoint_fits(task, ckpt_path, cfg)
    return ckpt_path


RUN_REPORT = ("metrics.json", "per_class.csv", "confusion_matrix.npy")  # what train() writes


def check_run_folder(cfg: DictConfig) -> None:
    """Stop a fresh run whose folder ``cfg.paths.output_dir`` (``hydra.run.dir``) already
    holds a run: a checkpoint under ``checkpoints/`` or a report (:data:`RUN_REPORT`).

    A run continues the folder's run, and passes, with ``ckpt_path=last``, with
    ``ckpt_path=<file>`` of a checkpoint inside the folder, or with ``resume=auto`` when
    that finds a ``last*.ckpt`` there (:func:`resume_checkpoint`). What Hydra writes before
    the run starts (``.hydra/``, ``train.log``) is no run. Only rank 0 checks: the other
    processes of a DDP run start once it has passed. No switch lifts this and nothing is
    deleted: a new run gets a new folder.

    Raises:
        segkit.outputs.OutputExistsError: naming the run's file, ``ckpt_path=last`` (to
            continue it) and a new ``hydra.run.dir`` (to start afresh).
    """
    if rank_zero_only.rank != 0:
        return
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path, resume = cfg.get("ckpt_path"), cfg.get("resume")
    if ckpt_path == "last":
        return
    if ckpt_path is not None and Path(ckpt_path).resolve().is_relative_to(run_dir.resolve()):
        return
    if ckpt_path is None and resume == "auto" and newest_last_checkpoint(run_dir) is not None:
        return
    found = [run_dir / name for name in RUN_REPORT if (run_dir / name).is_file()]
    found += sorted((run_dir / "checkpoints").rglob("*.ckpt"))
    if found:
        continuing = shlex.quote(f"hydra.run.dir={run_dir}")
        raise OutputExistsError(
            f"{run_dir} already holds a run ({found[0]}); a fresh run there would write over "
            f"its report and checkpoints. To continue that run: python train.py <its "
            f"overrides> {continuing} ckpt_path=last. To start a new one, give a new "
            "hydra.run.dir=<folder> (or none: each launch gets its own folder)."
        )


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not fit the model this run builds."""


def describe_model(config: Any) -> str:
    """The model of a composed config in one line: ``_target_`` plus the arguments that
    usually differ (arch, encoder, backbone, variant, classes), e.g.
    ``_target_=segkit.models.smp.smp_model, arch=FPN, encoder_name=resnet18, num_classes=11``.
    """
    if not isinstance(config, dict | DictConfig):
        return "(unknown: the checkpoint stores no config)"
    model = config.get("model") or {}
    keys = ("_target_", "arch", "encoder_name", "backbone", "variant", "num_classes")
    return ", ".join(f"{k}={model[k]}" for k in keys if k in model) or "(no model config)"


def check_checkpoint_fits(
    task: torch.nn.Module, ckpt_path: str | Path, cfg: DictConfig | None = None
) -> None:
    """Compare a Lightning checkpoint's ``state_dict`` with ``task``'s, key by key and shape
    by shape, before Lightning loads it (memory-mapped, ``weights_only=True``).

    Raises:
        FileNotFoundError, CheckpointError: the file cannot be read (:func:`read_checkpoint`),
            or it is no segkit training checkpoint (a plain state dict, another program's).
        CheckpointMismatchError: listing shape mismatches, missing and unexpected keys, the
            model the checkpoint was written for (from its stored config) and this run's.
    """
    checkpoint = read_checkpoint(ckpt_path, mmap=True, fix=RESUME_FIX)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not isinstance(checkpoint.get("config"), Mapping):
        raise CheckpointError(
            f"ckpt_path={ckpt_path} holds {_describe_content(checkpoint)}, not the checkpoint "
            f"of a segkit run (its 'state_dict' and 'config'). {RESUME_FIX}"
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
    here = "" if cfg is None else f"; this run builds {describe_model(cfg)}"
    raise CheckpointMismatchError(
        f"checkpoint {ckpt_path} does not fit this run's model: {'; '.join(problems)}. It was "
        f"written for {describe_model(checkpoint.get('config'))}{here}. Resume with the "
        "config it was trained with (model=..., data.num_classes=...), or start a new run "
        "from its weights with model.weights_path=<file>."
    )


# How a run is started, not what it computes: never reported as a change.
NOT_COMPARED = ("ckpt_path", "resume")


# Config keys whose values live in the restored optimiser or schedule state.
RESTORED_STATE = (
    "optimizer",
    "scheduler",
    "task.backbone_lr_mult",
    "task.head_lr_mult",
    "task.no_decay_norm_bias",
)


RUN_LENGTH = ("trainer.max_epochs", "trainer.max_steps")


_MISSING = "<not set>"


class ResumeError(ValueError):
    """A resumed run changes something the restored state cannot follow."""


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping) and node:
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def config_changes(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, stored value, new value)`` for every leaf that differs, sorted by key.

    Both configs are plain resolved containers (``OmegaConf.to_container(cfg,
    resolve=True)``); a key present in one only shows ``"<not set>"`` on the other side.
    Lists are compared whole. :data:`NOT_COMPARED` keys are skipped.
    """
    old, now = dict(_flatten(stored)), dict(_flatten(new))
    changes = []
    for key in sorted(old.keys() | now.keys()):
        if key.split(".")[0] in NOT_COMPARED:
            continue
        before, after = old.get(key, _MISSING), now.get(key, _MISSING)
        if before != after:
            changes.append((key, before, after))
    return changes


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def refused_changes(changes: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """The changes a resumed run cannot apply (:data:`RESTORED_STATE` keys)."""
    return [change for change in changes if _matches(change[0], RESTORED_STATE)]
