"""Loggers for train.py: Lightning's CSV logger, made safe for resumed runs.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its writer starts, so a
run resumed in its own folder (``ckpt_path=last``) loses the rows of every earlier epoch.
:class:`CSVLogger` appends to the file instead: the rows written before the interruption
stay, the resumed run's rows follow (a step between the checkpoint and the interruption
appears twice, first as the interrupted run logged it), and new columns extend the header
of the old rows.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingExperimentWriter(ExperimentWriter):
    """``ExperimentWriter`` that keeps an existing ``metrics.csv`` and its columns."""

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(next(csv.reader(file), []))


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger`` (same arguments, same ``<save_dir>/<name>/<version>/
    metrics.csv``), appending to an existing ``metrics.csv`` instead of deleting it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
