"""Which callbacks a run has: those that ``conf/callbacks/`` composes (``default.yaml``: one
file per callback) and one of each :data:`segkit.engine.callbacks.EVERY_RUN` class, whatever
the group says; the run overview prints both lists."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from segkit.engine.callbacks import EVERY_RUN
from segkit.engine.callbacks.checkpointing import ConfigInCheckpoint, LastCheckpoint, ResumeGuard
from segkit.engine.callbacks.console import EpochLines, RunOverview
from segkit.engine.callbacks.figures import ValidationFigures
from segkit.engine.callbacks.guards import NonFiniteGuard, TrainingBatchesCheck
from segkit.engine.runner import build_trainer

from ..helpers import CONF, compose_job

# Written by hand from conf/callbacks/default.yaml: key -> class, in the file's order.
DEFAULT = {
    "model_checkpoint": ModelCheckpoint,
    "last_checkpoint": LastCheckpoint,
    "nonfinite_guard": NonFiniteGuard,
    "learning_rate_monitor": LearningRateMonitor,
    "validation_figures": ValidationFigures,
}
ALWAYS = [ConfigInCheckpoint, ResumeGuard, TrainingBatchesCheck, RunOverview, EpochLines]


def test_default_composes_one_file_per_callback():
    assert list(EVERY_RUN) == ALWAYS
    for name in DEFAULT:
        assert (CONF / "callbacks" / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize(
    ("overrides", "configured"),
    [
        ([], list(DEFAULT)),
        (["logger=none"], [n for n in DEFAULT if n != "learning_rate_monitor"]),
        (["callbacks=none"], []),
    ],
    ids=["default", "no-logger", "no-callbacks"],
)
def test_a_run_has_its_configured_callbacks_and_every_run_ones(
    tmp_path, caplog, overrides, configured
):
    cfg = compose_job("train", tmp_path, tmp_path / "run", ["trainer.accelerator=cpu", *overrides])
    trainer = build_trainer(cfg)
    kinds = [type(c) for c in trainer.callbacks]
    for name, kind in DEFAULT.items():
        if kind is not ModelCheckpoint:  # Lightning adds its own without callbacks
            assert kinds.count(kind) == (name in configured), name
    assert [k for k in kinds if k in ALWAYS] == ALWAYS

    class Task(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Conv2d(3, 2, 1)

    overview = next(c for c in trainer.callbacks if isinstance(c, RunOverview))
    caplog.set_level(logging.INFO, logger="segkit.progress")
    overview.on_fit_start(trainer, Task())
    assert caplog.messages[-1] == (
        f"callbacks: {', '.join(configured) or 'none'} (conf/callbacks) | every run: "
        "ConfigInCheckpoint, ResumeGuard, TrainingBatchesCheck, RunOverview, EpochLines"
    )
