"""What a resumed run may change, and how the restored state is made to fit the new run.

A run resumed with ``ckpt_path=<file>|last`` or ``resume=auto`` restores weights, optimiser,
schedule, loop position and callback states from the checkpoint, so some config changes
would silently do nothing or make that state wrong. :class:`ResumeGuard` compares the
config stored in the checkpoint (:class:`~segkit.callbacks.ConfigInCheckpoint`) with this
run's and prints every difference, ``old -> new``. Then:

* **applied**: a new run length (``trainer.max_epochs``, ``trainer.max_steps``). The
  step-counted schedule (poly, cosine, multistep) is given the new total
  (:func:`segkit.schedulers.set_total_steps`): from the restored step on, the learning
  rate is the one a run of the new length has at that step. Without this, a finished poly
  schedule would train every extra step at learning rate 0.
* **refused** (:class:`ResumeError`, before the first step): ``optimizer.*``,
  ``scheduler.*`` and the task's learning-rate multipliers and weight-decay switch (the
  restored optimiser and schedule hold the old values, so the new ones would be ignored),
  and a different number of optimiser steps per epoch (training data, ``data.batch_size``,
  ``trainer.accumulate_grad_batches``, ``trainer.devices``, ...: the restored epoch, step and
  schedule positions would no longer line up). To train on with such changes, start a new
  run from the checkpoint's weights: ``model.weights_path=<ckpt>``.
* **accepted**: everything else (``data.num_workers``, ``test``, callbacks, logger, ...).

Checkpoints of ``ModelCheckpoint`` (``best_epoch*.ckpt``) that the restored state does not
know come from the interrupted part of the earlier run, after the checkpoint resumed from;
they are moved to ``checkpoints/superseded/`` (nothing is deleted), so the folder holds only
the resumed run's best checkpoint.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from segkit.schedulers import scheduled_total_steps, set_total_steps

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


def _describe(changes: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)


def _new_run_hint(ckpt_path: str | None) -> str:
    return (
        "Resume with the checkpoint's values, or start a new run from its weights: "
        f"python train.py <new settings> model.weights_path={ckpt_path or '<ckpt>'}"
    )


class ResumeGuard(L.Callback):
    """Compare, apply or refuse config changes of a resumed run (see the module docstring).

    Added to every trainer by :func:`segkit.runner.build_trainer`; does nothing in a fresh
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
        self.stored_config = checkpoint.get("config")
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
