"""Every Lightning callback of segkit (Hydra's: :mod:`segkit.engine.hydra_callbacks`).

* :class:`ConfigInCheckpoint` stores the composed config in every checkpoint and gives it,
  flattened, to every logger as the run's hyperparameters.
* :class:`ResumeGuard` compares a resumed run's config with the checkpoint's and applies,
  refuses or accepts each change (the rules: :mod:`segkit.engine.checkpoints`).
* :class:`LastCheckpoint` keeps ``last.ckpt`` current within an epoch (every N optimiser
  steps) and after each epoch, so ``ckpt_path=last`` / ``resume=auto`` lose little work, and
  writes it when the run is interrupted (Ctrl-C / SIGINT, or SIGTERM before pre-emption).
* :class:`TrainingBatchesCheck` stops a run whose training split gives no batch at all.
* :class:`NonFiniteGuard` stops the run on a NaN/Inf loss with the step, batch names and
  learning rate in the message, or skips the optimiser update when ``skip_nonfinite=true``.
* :class:`EpochLines` and :class:`RunOverview`: the console of a run, one line naming what
  trains and one line per epoch (also in ``train.log``).
* :class:`FastPaths`: the speed switches that leave the results unchanged, channels_last
  memory format and ``torch.compile``
  (``python train.py 'callbacks=[default,fast_paths]' callbacks.fast_paths.compile=true``).
  Mixed precision and cuDNN autotuning are Lightning trainer arguments already
  (``trainer.precision=bf16-mixed``, ``trainer.benchmark=true``). ``channels_last`` stores
  the model's 4-D weights and every image batch as NHWC, the layout that cuDNN tensor cores
  and oneDNN prefer; ``compile`` compiles the task's ``model``. Both give the same logits up
  to float rounding (``tests/engine/test_speed.py``).
* :class:`ValidationFigures`: every ``n`` epochs, the validation confusion matrix as a
  heatmap and ``k`` fixed validation images as image | ground truth | prediction panels, to
  the loggers that take images (TensorBoard, W&B, MLflow).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image

from segkit.data.voc import voc_colour
from segkit.engine.checkpoints import (
    PARTIAL_SUFFIX,
    RUN_LENGTH,
    ResumeError,
    config_changes,
    describe_model,
    move_superseded_checkpoints,
    refused_changes,
    upgrade_targets,
)
from segkit.engine.loggers import flat_config, log_image, takes_images
from segkit.evaluation.figures import confusion_heatmap, sample_indices, sample_panels
from segkit.tasks.schedulers import scheduled_total_steps, set_total_steps


class ConfigInCheckpoint(L.Callback):
    """Store the composed (resolved) Hydra config in every checkpoint under ``"config"``,
    and log it as the run's hyperparameters.

    ``hydra.utils.instantiate(checkpoint["config"]["model"])`` then rebuilds the model, so
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


def compile_supported() -> str | None:
    """``None`` if ``torch.compile`` works here, else the reason it does not.

    Compiles and runs a one-line function, so a missing C++ compiler or an unsupported
    Python version shows up at start-up instead of at the first training step.
    """
    try:
        torch.compile(lambda x: x + 1)(torch.zeros(1))
    except Exception as error:  # noqa: BLE001 - any failure means: run eagerly
        return f"{type(error).__name__}: {error}"
    return None


def to_channels_last(batch: Any) -> None:
    """Convert ``batch["image"]`` (a 4-D tensor) to channels_last in place of the dict."""
    if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
        if batch["image"].ndim == 4:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)


class FastPaths(L.Callback):
    """Put the task's ``model`` in channels_last layout and/or compile it.

    Args:
        channels_last: store 4-D weights and image batches ``[B, 3, H, W]`` as NHWC.
        compile: compile ``pl_module.model`` in place (``nn.Module.compile``, so checkpoint
            keys do not change); where compilation is unsupported, warn with the reason and
            keep the eager model.

    The task must keep its network in ``pl_module.model`` and take batches as dicts with
    an ``"image"`` entry (:class:`segkit.tasks.semantic.SemanticSegmentationTask`).
    """

    def __init__(self, channels_last: bool = False, compile: bool = False) -> None:
        self.channels_last = channels_last
        self.compile = compile
        self._compiled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        model = getattr(pl_module, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                "FastPaths needs the task's network in `pl_module.model`; "
                f"{type(pl_module).__name__} has none. Remove callbacks.fast_paths."
            )
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile and not self._compiled:
            self._compiled = True  # setup runs again for validate/test: compile once
            reason = compile_supported()
            if reason is None:
                model.compile()  # in place: state_dict keys (checkpoints) stay unchanged
            else:
                rank_zero_warn(
                    f"callbacks.fast_paths.compile=true but torch.compile is unsupported "
                    f"here ({reason}); training the eager model. Set compile=false to "
                    "silence this."
                )

    def _batch(self, batch: Any) -> None:
        if self.channels_last:
            to_channels_last(batch)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch(batch)

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch(batch)

    def on_test_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch(batch)


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


class ResumeGuard(L.Callback):
    """Compare, apply or refuse config changes of a resumed run (see the module docstring).

    Added to every trainer by :func:`segkit.engine.runner.build_trainer`; does nothing in a fresh
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


# --- the console: one line per epoch and what the run trains --------------------------------

progress_log = logging.getLogger("segkit.progress")  # Hydra: console and <run>/train.log


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
            f"{(time.monotonic() - self._started) / 60:.1f} min",
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
    FLOPs.

    Args:
        config: the composed config (plain containers).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

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


class ValidationFigures(L.Callback):
    """Log pictures of the validation to every logger that takes images.

    After every ``every_n_epochs``-th training epoch's validation (epochs counted from 1;
    not the sanity check, not the scoring after fitting), at the step Lightning logs that
    validation's scalars with:

    * ``val/confusion_matrix``: the epoch's confusion matrix normalised by rows (rows =
      ground truth; each cell the % of the row's pixels), as a labelled heatmap
      (:func:`segkit.evaluation.figures.confusion_heatmap`).
    * ``val/samples``: ``num_images`` fixed validation images, evenly spaced in the split's
      order (:func:`segkit.evaluation.figures.sample_indices`), one row each: image | ground
      truth | prediction in the data's palette, with a legend
      (:func:`segkit.evaluation.figures.sample_panels`).
      Predictions are the task's ``class_scores`` (the weights and test-time inference that
      validation scores), run on rank 0 only; tasks without ``class_scores`` (Mask R-CNN)
      log the confusion matrix alone.

    Loggers that take images: TensorBoard, W&B and MLflow (:func:`segkit.engine.loggers.log_image`).
    With none of them (``logger=csv``, ``logger=none``) the callback does nothing, not even
    the forward passes.

    Args:
        every_n_epochs: log after every n-th epoch's validation; 0 turns the callback off.
        num_images: sample images per panel; 0 logs the confusion matrix only.
        max_size: longest side in pixels of each tile of the panels (keeps 1024x2048
            Cityscapes frames from filling the logs); ``None`` keeps the full size.
        palette: ``C`` RGB class colours (``${data.palette}``); ``None``: the VOC colour
            map, as predict.py uses.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_images: int = 4,
        max_size: int | None = 512,
        palette: list[list[int]] | None = None,
    ) -> None:
        for key, value in (("every_n_epochs", every_n_epochs), ("num_images", num_images)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"callbacks.validation_figures.{key} must be an integer >= 0 (0: off), "
                    f"got {value!r}"
                )
        if max_size is not None and max_size < 1:
            raise ValueError(
                f"callbacks.validation_figures.max_size must be >= 1 pixel or null (full "
                f"size), got {max_size}"
            )
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.max_size = max_size
        self.palette = None if palette is None else [tuple(map(int, c)) for c in palette]

    def _due(self, trainer: L.Trainer) -> bool:
        return (
            self.every_n_epochs > 0
            and trainer.is_global_zero
            and not trainer.sanity_checking
            and trainer.state.fn == TrainerFn.FITTING
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the task's on_validation_epoch_end (which keeps the epoch's matrix), still
        # in eval mode and without gradients
        loggers = [logger for logger in trainer.loggers if takes_images(logger)]
        if not loggers or not self._due(trainer):
            return
        figures = {}
        matrix = getattr(pl_module, "confusion_matrices", {}).get("val")
        if matrix is not None:
            figures["val/confusion_matrix"] = confusion_heatmap(
                matrix.numpy(), pl_module.class_names
            )
        if self.num_images and hasattr(pl_module, "class_scores"):
            figures["val/samples"] = self.samples(trainer, pl_module)
        # the step Lightning gives this validation's scalars (its logger connector's), so
        # pictures and curves line up in TensorBoard and W&B; global_step if it ever goes
        step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        for key, image in figures.items():
            for logger in loggers:
                log_image(logger, key, image, step)

    def samples(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        """The image | ground truth | prediction panels of the fixed validation images."""
        dataset = trainer.datamodule.build_dataset("val")  # the one validation reads
        num_classes = pl_module.num_classes
        palette = self.palette or [voc_colour(i) for i in range(num_classes)]
        panels, names = [], []
        for index in sample_indices(len(dataset), self.num_images):
            item = dataset[index]
            images = item["image"][None].to(pl_module.device)
            with trainer.precision_plugin.val_step_context():
                labels = pl_module.class_scores(images).argmax(1)[0].cpu().numpy()
            mask = item["mask"].numpy()
            image = dataset.load(index)[0]  # uint8, before normalisation
            if image.shape[:2] != mask.shape:  # an eval_transform that resizes
                size = (mask.shape[1], mask.shape[0])
                image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            panels.append((image, mask, labels))
            names.append(str(item["name"]))
        return sample_panels(panels, names, pl_module.class_names, palette, self.max_size)
