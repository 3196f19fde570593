"""Hydra callbacks (``hydra.callbacks`` in ``conf/``): they act around runs and jobs, not
training steps (those are Lightning's, in :mod:`segkit.callbacks`).

* :class:`DDPJobCallback`: each job of a multirun in its own DDP world and folder.
* :class:`KeepEarlierConfigs`: a run started again in its folder keeps the earlier
  ``.hydra`` files.
* :class:`SweepSummary`: a multirun ends with its folder and the leaderboard command.
* :class:`SweepCallback`: Optuna sweeps that survive failing trials (:mod:`segkit.sweeps`).
"""

from __future__ import annotations

import gc
import logging
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from segkit.runner import print_results
from segkit.sweeps import best_params_dict, check_optimized_metric, check_searched_keys, open_study

log = logging.getLogger(__name__)


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


class SweepCallback(HydraCallback):
    """Hydra callback (``hydra.callbacks``) for Optuna sweeps of train.py.

    * ``on_multirun_start``: validates ``optimized_metric`` and the searched keys (so a typo
      fails before the first trial), creates the sweep dir for the SQLite study and, when the
      study already has trials (a resumed sweep), sends new jobs to ``resume<K>/<num>``.
    * ``on_job_end``: after a failed trial, drops the frames its exception holds (they keep
      the model and batches alive, on the GPU after an out-of-memory error).
    * ``on_multirun_end``: writes ``best_params.yaml`` into the sweep dir.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_optimized_metric(config)
        check_searched_keys(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            done = len(open_study(config).trials)
        except KeyError:  # no such study yet: a fresh sweep
            return
        if done:
            log.info(
                "Resuming study with %d trials; new jobs in %s/resume%d", done, sweep_dir, done
            )
            with read_write(config.hydra), open_dict(config.hydra):
                # the launcher recomposes every job from these overrides
                config.hydra.overrides.hydra.append(
                    f"hydra.sweep.subdir=resume{done}/${{hydra.job.num}}"
                )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value  # the property would re-raise it
            log.warning("Trial failed (%s: %s)", type(error).__name__, error)
            traceback.clear_frames(error.__traceback__)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        result = best_params_dict(open_study(config))
        path = Path(config.hydra.sweep.dir) / "best_params.yaml"
        OmegaConf.save(OmegaConf.create(result), path)
        log.info("Best parameters written to %s", path)
