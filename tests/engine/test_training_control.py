"""Training control from the configs: ``scheduler=plateau`` lowers the rate after each
validation without improvement, ``callbacks=[default,early_stopping]`` stops a run whose
score stalls, ``debug=profiler`` leaves its report in the run folder."""

from __future__ import annotations

import hydra
import lightning as L
import torch
from torch.utils.data import DataLoader

from segkit.tasks.schedulers import lightning_schedule

from ..helpers import compose


class StalledTask(L.LightningModule):
    """One weight, a training loss that falls, and a validation score that never moves
    (``val/mIoU`` = 0.5 every epoch): the stalled run the controls act on."""

    def __init__(self, scheduler=None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.scheduler = scheduler
        self.rates: list[float] = []  # the learning rate at the start of each epoch

    def training_step(self, batch, batch_idx):
        return (self.weight - 1) ** 2

    def validation_step(self, batch, batch_idx):
        self.log("val/mIoU", 0.5)

    def on_train_epoch_start(self) -> None:
        self.rates.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
        total = int(self.trainer.estimated_stepping_batches)
        return lightning_schedule(optimizer, self.scheduler, total_steps=total)


def fit(task: L.LightningModule, max_epochs: int, **trainer_options) -> L.Trainer:
    data = DataLoader([torch.zeros(1)] * 2, batch_size=1)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=max_epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        **trainer_options,
    )  # fmt: skip
    trainer.fit(task, data, data)
    return trainer


def test_plateau_schedule_divides_the_rate_after_each_stalled_validation(tmp_path):
    cfg = compose(tmp_path, ["scheduler=plateau", "scheduler.patience=1", "scheduler.factor=0.5"])
    assert cfg.scheduler.monitor == "val/mIoU"  # follows optimized_metric
    task = StalledTask(hydra.utils.instantiate(cfg.scheduler))
    fit(task, max_epochs=5)
    # epoch 1 sets the best; each later validation without improvement counts one bad
    # epoch, and more than patience=1 of them halves the rate (then the count restarts)
    assert task.rates == [1.0, 1.0, 1.0, 0.5, 0.5]
    assert task.trainer.optimizers[0].param_groups[0]["lr"] == 0.25


def test_early_stopping_stops_a_run_whose_score_stalls(tmp_path):
    cfg = compose(tmp_path, ["callbacks=[default,early_stopping]"])
    node = cfg.callbacks.early_stopping
    assert node.monitor == "val/mIoU" and node.mode == "max"
    stopper = hydra.utils.instantiate(node, patience=2)
    trainer = fit(StalledTask(), max_epochs=10, callbacks=[stopper])
    # best at epoch 1, then 2 validations without improvement: stopped after epoch 3
    assert trainer.current_epoch == 3 and stopper.stopped_epoch == 2


def test_debug_profiler_writes_its_report_into_the_run_folder(tmp_path):
    cfg = compose(tmp_path, ["debug=profiler"])
    trainer = hydra.utils.instantiate(
        cfg.trainer, accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, num_sanity_val_steps=0,
    )  # fmt: skip
    data = DataLoader([torch.zeros(1)] * 2, batch_size=1)
    trainer.fit(StalledTask(), data, data)
    reports = list((tmp_path / "run").glob("*profile*.txt"))
    assert reports, sorted(p.name for p in (tmp_path / "run").iterdir())
    text = reports[0].read_text()
    assert "run_training_epoch" in text and "training_step" in text
