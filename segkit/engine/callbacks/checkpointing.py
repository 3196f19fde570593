"""Checkpointing callbacks: what a checkpoint holds and how a run continues from one.

* :class:`ConfigInCheckpoint` stores the composed config and the training machine
  (:func:`machine`) in every checkpoint and gives the config, flattened, to every logger as
  the run's hyperparameters.
* :class:`LastCheckpoint` keeps ``last.ckpt`` current within an epoch (every N optimiser
  steps) and after each epoch, so ``ckpt_path=last`` / ``resume=auto`` lose little work, and
  writes it when the run is interrupted (Ctrl-C / SIGINT, or SIGTERM before pre-emption).
* :class:`ResumeGuard` compares a resumed run's config with the checkpoint's and applies,
  refuses or accepts each change (the rules: :mod:`segkit.engine.checkpoints`).

``last_checkpoint`` is in ``conf/callbacks/``; the other two are in every run
(:data:`segkit.engine.callbacks.EVERY_RUN`).
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from segkit.engine.checkpoints import (
    PARTIAL_SUFFIX,
    RUN_LENGTH,
    ResumeError,
    config_changes,
    refused_changes,
    upgrade_targets,
)
from segkit.engine.loggers import flat_config
from segkit.tasks.schedulers import scheduled_total_steps, set_total_steps


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> str:
    """CPU model, core count, GPU, torch version and this process's torch threads, e.g.
    ``"AMD EPYC, 2 cores, no GPU; torch 2.14.1+cu130, 2 threads"``."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


class ConfigInCheckpoint(L.Callback):
    """Store the composed (resolved) Hydra config in every checkpoint under ``"config"`` and
    the machine that trained it under ``"machine"`` (:func:`machine`, read in the training
    process: its threads, not those of a later tool), and log the config as the run's
    hyperparameters.

    ``segkit.models.weights.build_model(checkpoint["config"]["model"])`` then rebuilds the model, so
    eval.py and predict.py need nothing but the checkpoint. When fitting starts, every
    logger gets the config as flat hyperparameters (:func:`segkit.engine.loggers.flat_config`:
    ``optimizer.lr``, ``model.encoder_name``, ...; TensorBoard's HPARAMS tab, W&B's config,
    MLflow's params); a resumed run logs them again.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.loggers:
            params = flat_config(self.config)
            for logger in trainer.loggers:
                logger.log_hyperparams(params)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["config"] = self.config
        checkpoint["machine"] = machine()


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :class:`LastCheckpoint` after it saved ``last.ckpt`` for a SIGINT/SIGTERM.

    A ``KeyboardInterrupt``, so Lightning shuts down as for Ctrl-C (``on_exception`` hooks,
    loggers finalised, DDP children stopped); :func:`segkit.engine.runner.fit` then prints the
    command that continues the run and exits with status 128 + the signal number.
    """


class LastCheckpoint(Checkpoint):
    """Write ``dirpath/last.ckpt`` every ``every_n_train_steps`` optimiser steps, after
    every training epoch, and when the run is interrupted.

    Lightning's ``ModelCheckpoint`` cannot combine a step interval with epoch-end saves in
    one instance, and a second instance with ``save_last`` would write ``last-v1.ckpt``;
    hence this small callback. It is a Lightning ``Checkpoint``, so it runs after every
    other callback, and :func:`segkit.engine.runner.build_trainer` puts it after the
    ``ModelCheckpoint``: the epoch-end ``last.ckpt`` then holds that epoch's best-checkpoint
    record (``ModelCheckpoint`` saves at the end of the training epoch too), and a resumed
    run knows every ``best_*.ckpt`` written before it. It saves through
    ``trainer.save_checkpoint``, so the file holds everything a resume needs (weights,
    optimiser, scheduler, AMP scaler, loop position, callback states) and is written by
    :class:`AtomicCheckpointIO`. Stale ``*.partial`` files left by a killed writer are
    removed when fitting starts.

    Interrupts (``save_on_signal``): while fitting, SIGINT (Ctrl-C) and SIGTERM (what a
    cluster sends before pre-emption) only set a flag. At the end of the training step in
    progress (or, during validation, at the end of the epoch) ``last.ckpt`` is written at
    exactly the point a periodic save would write it, and :class:`TrainingInterrupted` stops
    the run; ``ckpt_path=last`` then continues to the same final step as an uninterrupted
    run. A second Ctrl-C stops at once, without saving. Under DDP the ranks agree on the
    stop (one boolean all-reduce per step), so all of them save the same step. DataLoader
    workers forked while fitting inherit the handlers, so a terminal's Ctrl-C, which reaches
    every process of the group, does not kill them mid-epoch.

    Args:
        dirpath: folder of ``last.ckpt`` (the run's ``checkpoints/``).
        every_n_train_steps: optimiser steps between mid-epoch saves; 0 saves only at
            epoch ends.
        save_on_signal: handle SIGINT and SIGTERM as above (main thread only).
    """

    FILENAME = "last.ckpt"
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(
        self, dirpath: str | Path, every_n_train_steps: int = 500, save_on_signal: bool = True
    ) -> None:
        if every_n_train_steps < 0:
            raise ValueError(
                f"callbacks.last_checkpoint.every_n_train_steps must be >= 0, got "
                f"{every_n_train_steps}"
            )
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.save_on_signal = save_on_signal
        self._saved_step = -1
        self._received: str | None = None  # name of the signal this process received
        self._previous: dict[int, Any] = {}  # handlers to restore
        self._pid = os.getpid()
        self.interrupted: str | None = None  # why the run stopped, once it has
        self.interrupt_saved = False  # whether last.ckpt holds the interrupted step

    @property
    def path(self) -> Path:
        return self.dirpath / self.FILENAME

    def _active(self, trainer: L.Trainer) -> bool:
        return (
            not trainer.fast_dev_run
            and not trainer.sanity_checking
            and trainer.state.fn == TrainerFn.FITTING
        )

    def _save(self, trainer: L.Trainer) -> None:
        # the full state, said explicitly: left unset, Lightning logs its default every save
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step

    # --- signals ---------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: the main process decides
        if self._received is not None and signum == signal.SIGINT:
            self._restore_handlers()
            raise KeyboardInterrupt  # second Ctrl-C: stop now, unsaved
        self._received = signal.Signals(signum).name
        message = (
            f"\n{self._received} received: saving {self.path} at the end of this training "
            "step, then stopping (Ctrl-C again stops at once, without saving).\n"
        )
        try:  # a raw write: print() inside a signal handler can hit a reentrant buffer
            os.write(2, message.encode())
        except OSError:
            pass

    def _install(self, signums: tuple[int, ...]) -> None:
        if not self.save_on_signal or threading.current_thread() is not threading.main_thread():
            return
        self._pid = os.getpid()  # forked DataLoader workers inherit the handler
        for signum in signums:
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _stop_requested(self, trainer: L.Trainer) -> bool:
        if not self.save_on_signal:
            return False
        stop = self._received is not None
        if trainer.world_size > 1:  # every rank must save and stop at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        return stop

    def _stop(self, trainer: L.Trainer) -> None:
        self.interrupted = self._received or "a signal to another process"
        if self._active(trainer) and self._saved_step != trainer.global_step:
            self._save(trainer)
        self.interrupt_saved = self._active(trainer)
        raise TrainingInterrupted(self.interrupted)

    # --- hooks -----------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.dirpath.is_dir():
            for stale in self.dirpath.glob(f".*{PARTIAL_SUFFIX}"):
                stale.unlink(missing_ok=True)
        self._saved_step = trainer.global_step  # a resumed run does not re-save at once
        self._received, self.interrupted, self.interrupt_saved = None, None, False
        # SIGINT now, before the sanity check forks validation workers; SIGTERM once
        # Lightning has installed its own handler (after on_fit_start), which would stop
        # in the middle of validation, before the epoch's checkpoint.
        self._install((signal.SIGINT,))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install((signal.SIGTERM,))

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if (
            self.every_n_train_steps > 0
            and step % self.every_n_train_steps == 0
            and step != self._saved_step  # accumulation: the step did not advance
            and self._active(trainer)
        ):
            self._save(trainer)
        # accumulation: stop only after a complete optimiser step
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if stepped and self._stop_requested(trainer):
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer):
            self._save(trainer)
        if self._stop_requested(trainer):
            self._stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()
        if self.interrupted is None and self._received is not None:
            self.interrupted = self._received  # e.g. a second Ctrl-C

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()


# --- resuming: config changes since the checkpoint --------------------------------------


def _describe(changes: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)


def _new_run_hint(ckpt_path: str | None) -> str:
    return (
        "Resume with the checkpoint's values, or start a new run from its weights: "
        f"python train.py <new settings> model.weights_path={ckpt_path or '<ckpt>'}"
    )


def _steps_per_epoch(trainer: L.Trainer) -> int | None:
    batches = trainer.num_training_batches
    if not batches or math.isinf(batches):
        return None
    return math.ceil(batches / trainer.accumulate_grad_batches)


def _total_steps(trainer: L.Trainer) -> int | None:
    total = trainer.estimated_stepping_batches
    return None if math.isinf(total) else int(total)


def move_superseded_checkpoints(trainer: L.Trainer) -> list[Path]:
    """Move ``ModelCheckpoint`` files that the restored state does not track to
    ``<dirpath>/superseded/``; returns their new paths.

    Only files named like the callback's ``filename`` template (the part before the first
    ``{``) are moved; ``last*.ckpt`` and the checkpoint being resumed from never are.
    """
    moved: list[Path] = []
    resumed = Path(trainer.ckpt_path).resolve() if trainer.ckpt_path else None
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or not callback.dirpath:
            continue
        folder = Path(callback.dirpath)
        if not folder.is_dir():
            continue
        known = {
            Path(p).resolve()
            for p in (
                *callback.best_k_models,
                callback.best_model_path,
                callback.kth_best_model_path,
                callback.last_model_path,
            )
            if p
        }
        prefix = (callback.filename or "").split("{")[0]
        for path in sorted(folder.glob(f"{prefix}*{callback.FILE_EXTENSION}")):
            if path.name.startswith("last") or path.resolve() in known | {resumed}:
                continue
            target = folder / "superseded" / path.name
            target.parent.mkdir(exist_ok=True)
            number = 1
            while target.exists():
                target = target.with_name(f"{path.stem}.{number}{path.suffix}")
                number += 1
            shutil.move(path, target)
            moved.append(target)
    return moved


class ResumeGuard(L.Callback):
    """Compare, apply or refuse config changes of a resumed run (the rules:
    :mod:`segkit.engine.checkpoints`).

    Every run has it (:data:`segkit.engine.callbacks.EVERY_RUN`); it does nothing in a fresh
    run. Its state (optimiser steps per epoch and the run length) is stored in every
    checkpoint, so the next resume can compare them.

    Args:
        config: this run's resolved config (as stored by ``ConfigInCheckpoint``).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.stored_config: Mapping[str, Any] | None = None
        self.stored_state: dict[str, Any] = {}
        self.changes: list[tuple[str, Any, Any]] = []
        self._position: tuple[Any, Any] = (None, None)

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return {}
        return {
            "steps_per_epoch": _steps_per_epoch(trainer),
            "total_steps": _total_steps(trainer),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stored_state = dict(state_dict)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        stored = checkpoint.get("config")  # with the _target_ paths of today's modules
        self.stored_config = None if stored is None else upgrade_targets(stored)
        self._position = (checkpoint.get("epoch"), checkpoint.get("global_step"))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        source = trainer.ckpt_path
        say = print if trainer.is_global_zero else (lambda *_: None)
        self.changes = (
            [] if self.stored_config is None else config_changes(self.stored_config, self.config)
        )
        listing = "".join(f"\n  {key}: {old!r} -> {new!r}" for key, old, new in self.changes)
        epoch, step = self._position
        say(
            f"Resuming from {source} (epoch {epoch}, step {step}); config changes since that "
            f"run:{listing or ' none'}"
        )
        refused = refused_changes(self.changes)
        if refused:
            raise ResumeError(
                f"resuming from {source} with {_describe(refused)}: the restored optimiser and "
                "learning-rate schedule keep the checkpoint's values, so the new ones would be "
                f"ignored. {_new_run_hint(source)}"
            )
        before = self.stored_state.get("steps_per_epoch")
        now = _steps_per_epoch(trainer)
        if before is not None and now is not None and before != now:
            related = [
                c
                for c in self.changes
                if c[0].startswith("data.")
                or c[0]
                in (
                    "trainer.accumulate_grad_batches",
                    "trainer.devices",
                    "trainer.num_nodes",
                    "trainer.limit_train_batches",
                )
            ]
            changed = f" (changed: {_describe(related)})" if related else ""
            raise ResumeError(
                f"resuming from {source}: an epoch now has {now} optimiser steps, the "
                f"checkpoint's run had {before}{changed}; the restored epoch, step and "
                f"schedule positions would no longer line up. {_new_run_hint(source)}"
            )
        if trainer.is_global_zero:
            moved = move_superseded_checkpoints(trainer)
            if moved:
                say(
                    f"Moved {len(moved)} checkpoint(s) of the interrupted run, written after "
                    f"{Path(source).name}, to {moved[0].parent}: "
                    f"{', '.join(p.name for p in moved)}"
                )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        total = _total_steps(trainer)
        if total is None:
            return
        for config in trainer.lr_scheduler_configs:
            before = scheduled_total_steps(config.scheduler)
            if set_total_steps(config.scheduler, total) and before != total:
                rates = ", ".join(f"{r:.6g}" for r in config.scheduler.get_last_lr())
                length = [c for c in self.changes if c[0] in RUN_LENGTH]
                why = f" ({_describe(length)})" if length else ""
                if trainer.is_global_zero:
                    print(
                        f"Run length changed{why}: the learning-rate schedule now spans "
                        f"{total} optimiser steps (was {before}); learning rate at step "
                        f"{trainer.global_step}: {rates}."
                    )
