"""Loggers for train.py: an appending CSV logger, the experiment trackers, and images.

* :class:`CSVLogger`: Lightning's CSV logger, made safe for resumed runs. Lightning's
  ``CSVLogger`` deletes an existing ``metrics.csv`` when its writer starts, so a run resumed
  in its own folder (``ckpt_path=last``) loses the rows of every earlier epoch. This one
  appends to the file instead: the rows written before the interruption stay, the resumed
  run's rows follow (a step between the checkpoint and the interruption appears twice,
  first as the interrupted run logged it), and new columns extend the header of the old
  rows.
* :func:`wandb_logger`, :func:`mlflow_logger`: Lightning's ``WandbLogger`` and
  ``MLFlowLogger`` behind a check that the package is installed. A missing package stops
  the run at start-up with the command that installs it (the ``tracking`` extra), or, with
  ``required=False`` (``logger=many``), leaves that tracker out with a warning.
  "Installed" means importable (``importlib.util.find_spec``): no registry is asked.
* :func:`flat_config`: the composed config as the flat ``{"optimizer.lr": 0.002, ...}``
  hyperparameters every logger receives
  (:class:`segkit.engine.callbacks.checkpointing.ConfigInCheckpoint`).
* :func:`log_image`: one picture to any logger that takes images (TensorBoard, Weights &
  Biases, MLflow); the others (CSV) are skipped.
"""

from __future__ import annotations

import csv
import importlib.util
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import DummyLogger, rank_zero_experiment

INSTALL = "pip install -e '.[tracking]'"  # the optional extra with wandb and mlflow-skinny


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


class MissingTrackerError(ModuleNotFoundError):
    """``logger=wandb`` or ``logger=mlflow`` without the package installed."""


def _installed(module: str, key: str, required: bool) -> bool:
    """Whether ``module`` imports; if not, raise (``required``) or warn that it is left out."""
    if importlib.util.find_spec(module) is not None:
        return True
    message = f"logger.{key} needs the {module} package, which is not installed: {INSTALL}"
    if required:
        raise MissingTrackerError(f"{message} (or choose another logger, e.g. logger=default).")
    warnings.warn(f"{message}; this run logs without it.", stacklevel=3)
    return False


def wandb_logger(
    save_dir: str,
    project: str = "segkit",
    name: str | None = None,
    offline: bool = True,
    log_model: bool = False,
    tags: list[str] | None = None,
    required: bool = True,
) -> Logger:
    """Lightning's ``WandbLogger`` writing into ``<save_dir>/wandb/``.

    Args:
        save_dir: folder under which wandb writes ``wandb/<offline-run-...>/`` (the run dir).
        project: the W&B project.
        name: display name of the run (``None``: wandb picks one).
        offline: write the run locally only (``wandb sync <folder>`` uploads it later);
            ``False`` streams it to the W&B server (needs ``wandb login``).
        log_model: upload checkpoints as artifacts (online only).
        tags: W&B tags of the run.
        required: a missing wandb package stops the run (``True``) or leaves the logger out
            with a warning (``False``: a :class:`DummyLogger` stands in).

    A wandb run still open in this process (an earlier job of a ``-m`` sweep, which the
    basic launcher runs in one process) is finished first; Lightning would otherwise log
    this job into it.
    """
    if not _installed("wandb", "wandb", required):
        return DummyLogger()
    import wandb

    if wandb.run is not None:
        wandb.finish()
    return WandbLogger(
        name=name,
        save_dir=save_dir,
        project=project,
        offline=offline,
        log_model=log_model,
        tags=tags,
    )


def mlflow_logger(
    tracking_uri: str,
    experiment_name: str = "segkit",
    run_name: str | None = None,
    artifact_location: str | None = None,
    tags: dict[str, Any] | None = None,
    required: bool = True,
) -> Logger:
    """Lightning's ``MLFlowLogger``.

    Args:
        tracking_uri: the MLflow store: ``sqlite:///<file>`` (local, the default),
            ``file:<folder>``, or a tracking server ``http://host:5000``.
        experiment_name: the MLflow experiment (created on first use).
        run_name: name of the run (``None``: MLflow picks one).
        artifact_location: where a *new* experiment stores artifacts (images, files);
            ``None`` lets the store decide (a server's own artifact store; for a local
            SQLite store, ``./mlruns`` of the working directory).
        tags: MLflow tags of the run.
        required: as for :func:`wandb_logger`.
    """
    if not _installed("mlflow", "mlflow", required):
        return DummyLogger()
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=tracking_uri,
        tags=tags,
        artifact_location=artifact_location,
    )


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A resolved config as flat hyperparameters: ``{"model.encoder_name": ..., ...}``.

    Nested keys are joined with ``.`` as in a command-line override, so a value read in a
    tracker can be pasted back (``optimizer.lr=0.002``). A list of plain values stays one
    value (``data.mean``, ``data.palette``); a list holding mappings is numbered
    (``data.train_transform.transforms.0._target_``). Hydra's own node (``hydra``) is left
    out: it configures the launcher, not the run.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if not prefix and key == "hydra":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value):
            flat.update(flat_config({str(i): v for i, v in enumerate(value)}, f"{name}."))
        else:
            flat[name] = value
    return flat


def takes_images(logger: Logger) -> bool:
    """Whether :func:`log_image` draws into ``logger`` (TensorBoard, W&B, MLflow)."""
    return isinstance(logger, TensorBoardLogger | WandbLogger | MLFlowLogger)


def log_image(logger: Logger, key: str, image: np.ndarray, step: int) -> None:
    """Log the uint8 RGB picture ``image [H, W, 3]`` as ``key`` at ``step`` (global step).

    TensorBoard: an image summary ``key``. W&B: a ``wandb.Image`` under ``key`` (with
    ``trainer/global_step`` = ``step``; the file lands in the run's ``files/media/images/``).
    MLflow: a time-stepped image ``key`` (``/`` becomes ``~`` in its file name under the
    run's ``images/`` artifacts). Other loggers are skipped (:func:`takes_images`).
    """
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, image, global_step=step, dataformats="HWC")
    elif isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=[image], step=step)
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_image(logger.run_id, image, key=key, step=step)
