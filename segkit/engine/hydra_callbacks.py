"""Hydra callbacks (``hydra.callbacks`` in ``conf/``): they act around runs and jobs, not
training steps (those are Lightning's, in :mod:`segkit.engine.callbacks`).

* :class:`DDPJobCallback`: each job of a multirun in its own DDP world and folder.
* :class:`KeepEarlierConfigs`: a run started again in its folder keeps the earlier
  ``.hydra`` files.
* :class:`SweepSummary`: a multirun ends with its folder and the leaderboard command.
* :class:`SweepCallback`: Optuna sweeps that survive failing trials (:mod:`segkit.engine.sweeps`).
* :class:`SubmititJob`: jobs of ``hydra/launcher=submitit_slurm`` (or ``submitit_local``)
  save ``last.ckpt`` before submitit requeues them, and continue with ``resume=auto``.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from segkit.config import ConfigError
from segkit.engine.callbacks.checkpointing import LastCheckpoint
from segkit.engine.runner import print_results
from segkit.engine.sweeps import (
    best_params_dict,
    check_optimized_metric,
    check_searched_keys,
    open_study,
)

log = logging.getLogger(__name__)


def stop_launch_on_error(*checks: Callable[[DictConfig], None], config: DictConfig) -> None:
    """Run a callback's launch checks on ``config``; a failed one stops the launch.

    Hydra (1.3) turns an exception raised in a callback into a warning and launches anyway,
    so the error (a :class:`ConfigError` or another ``ValueError``) leaves as ``SystemExit``
    (its type and message, exit status 1), before any job runs.
    """
    try:
        for check in checks:
            check(config)
    except ValueError as error:
        raise SystemExit(f"{type(error).__name__}: {error}") from error


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
        print(
            f"Leaderboard: python -m segkit.cli.leaderboard {shlex.quote(str(sweep))}", flush=True
        )


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
        stop_launch_on_error(check_optimized_metric, check_searched_keys, config=config)
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


# --- cluster jobs (hydra-submitit-launcher) -------------------------------------------------

# Requeues after the time limit when the launcher config has no max_num_timeout key: the
# plugin's local launcher has none, and submitit's LocalExecutor then allows 3.
DEFAULT_MAX_NUM_TIMEOUT = {"LocalLauncher": 3}


def check_requeue_resumes(config: DictConfig) -> None:
    """Refuse a submitit launch whose requeued jobs would start over.

    Raises:
        ConfigError: the launcher may requeue (``max_num_timeout > 0``) and ``resume`` is
            not ``auto``.
    """
    launcher = config.hydra.launcher
    kind = str(launcher.get("_target_", "")).rsplit(".", 1)[-1]
    requeues = launcher.get("max_num_timeout", DEFAULT_MAX_NUM_TIMEOUT.get(kind, 0))
    if requeues > 0 and config.get("resume") != "auto":
        fix = (
            "or set hydra.launcher.max_num_timeout=0 to end jobs at the limit"
            if "max_num_timeout" in launcher
            else "the local launcher always allows submitit's 3 requeues"
        )
        raise ConfigError(
            f"hydra.launcher ({kind}) requeues a job that reaches its time limit up to "
            f"{requeues} times, but resume={config.get('resume')}: a requeued job would "
            "start over in its folder. Add resume=auto (it continues from <job folder>/"
            f"checkpoints/last.ckpt); {fix}."
        )


# sbatch's counts of a SLURM job and the Lightning trainer keys that must equal them
SLURM_COUNTS = {"nodes": "trainer.num_nodes", "tasks_per_node": "trainer.devices"}


def check_slurm_counts(config: DictConfig) -> None:
    """Refuse a SLURM launch whose node or task count is not the trainer's.

    ``conf/hydra/launcher/submitit_slurm.yaml`` reads ``hydra.launcher.nodes`` and
    ``tasks_per_node`` from ``trainer.num_nodes`` and ``trainer.devices``, the one place to
    set them (Lightning needs them in every run, with any launcher). A launcher key given
    on the command line, or a swept trainer count (the launcher sizes every job of a sweep
    from the values outside it), would queue jobs whose processes Lightning cannot connect:
    it stops at the job's start, after the queue, with "does not match".

    Raises:
        ConfigError: naming the launcher key, the trainer key and the override to give.
    """
    launcher = config.hydra.launcher
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return
    parser = OverridesParser.create()
    overrides = parser.parse_overrides(list(config.hydra.overrides.get("task", [])))
    swept = {o.key_or_group for o in overrides if o.is_sweep_override()}
    for launcher_key, trainer_key in SLURM_COUNTS.items():
        if trainer_key in swept:
            raise ConfigError(
                f"{trainer_key} is swept, but hydra.launcher.{launcher_key} sizes every SLURM "
                f"job of the sweep from one value: launch one sweep per {trainer_key}."
            )
        wanted, asked = OmegaConf.select(config, trainer_key, default=1), launcher[launcher_key]
        if asked != wanted:
            raise ConfigError(
                f"hydra.launcher.{launcher_key}={asked} but {trainer_key}={wanted}: SLURM would "
                f"start a job that Lightning cannot connect. Set {trainer_key}={asked} instead "
                f"(hydra.launcher.{launcher_key} follows it) and leave "
                f"hydra.launcher.{launcher_key} out."
            )


class RequeueAfterSave:
    """Inside a submitit job: a requeue signal saves ``last.ckpt`` before submitit requeues.

    A context manager. On entry it takes over ``signums`` and keeps the first one's handler,
    submitit's (it requeues the job and exits at once, mid-step). A signal that arrives while
    :class:`~segkit.engine.callbacks.checkpointing.LastCheckpoint` holds ``SIGTERM`` (the
    training loop) goes to ``LastCheckpoint``: ``last.ckpt`` at the end of the step in
    progress, then the run stops (``SystemExit``); :meth:`after_stop` then calls submitit's
    handler. At any other time (data preparation, final scoring) submitit's handler runs at
    once.

    Args:
        signums: the signals to take over; submitit's requeue signal first.
    """

    def __init__(self, signums: Sequence[int]) -> None:
        self.signums = tuple(dict.fromkeys(signums))
        self.submitit_handler: Any = None
        self.received: int | None = None  # the requeue signal, once one arrived
        self.forwarded = False  # submitit's handler has run
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> RequeueAfterSave:
        self.submitit_handler = signal.getsignal(self.signums[0])
        for signum in self.signums:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        term = signal.getsignal(signal.SIGTERM)
        if isinstance(getattr(term, "__self__", None), LastCheckpoint):
            term(signum, frame)  # saves at the end of this step, then stops the run
        else:
            self._forward(signum, frame)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.forwarded = True
        if callable(self.submitit_handler):
            self.submitit_handler(signum, frame)  # requeue and exit, or end the job

    def after_stop(self) -> None:
        """The job stopped (``SystemExit``): hand the signal that stopped it to submitit."""
        if self.received is not None and not self.forwarded:
            self._forward(self.received, None)


class SubmititJob(HydraCallback):
    """Hydra callback for the jobs of the submitit launchers (``conf/hydra/launcher/``).

    * ``on_multirun_start`` (where the sweep is submitted): a launcher that may requeue a
      job needs ``resume=auto`` (:func:`check_requeue_resumes`); SLURM's node and task
      counts must be the trainer's (:func:`check_slurm_counts`). Either stops the launch
      (``SystemExit``: Hydra would only warn about an exception) before anything is queued.
    * ``on_job_start`` (inside a submitit job only): submitit's requeue signal
      (``SIGUSR2``, or ``$SUBMITIT_PREEMPT_SIGNAL``) and ``SIGUSR1`` (Lightning's) go to
      :class:`RequeueAfterSave`, so ``last.ckpt`` is written before the job is requeued;
      since ``SIGUSR1`` is taken, Lightning's own SLURM auto-requeue (``hpc_ckpt_<n>.ckpt``)
      never installs. ``sys.argv[0]`` (submitit's runner) becomes train.py again, for
      Lightning's DDP launcher and the command printed after an interrupt.
    * A job stopped by the signal ends with ``SystemExit``, which Hydra's ``run_job`` lets
      through without ``on_job_end``; the requeue then runs at process exit (``atexit``),
      after ``last.ckpt`` is on disk. The requeued job has the same overrides and folder
      (``<sweep dir>/<job number>``), so ``resume=auto`` continues it.
    """

    def __init__(self) -> None:
        self._requeue: RequeueAfterSave | None = None
        self._finished = False
        self._script: str | None = None  # the submitting script, pickled into every job

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "submitit" in str(config.hydra.launcher.get("_target_", "")):
            stop_launch_on_error(check_requeue_resumes, check_slurm_counts, config=config)
            if sys.argv and sys.argv[0].endswith(".py"):
                self._script = os.path.abspath(sys.argv[0])

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not os.environ.get("SUBMITIT_EXECUTOR"):
            return  # not a submitit job
        import submitit

        if self._script and sys.argv:
            sys.argv[0] = self._script  # was submitit's runner, submitit/core/_submit.py
        requeue_signal = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        self._requeue = RequeueAfterSave((requeue_signal, signal.SIGUSR1)).__enter__()
        self._finished = False
        atexit.register(self._requeue_at_exit)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        # the job finished or failed: nothing to requeue
        self._finished = True
        if self._requeue is not None:
            self._requeue.__exit__()

    def _requeue_at_exit(self) -> None:
        if self._finished or self._requeue is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            self._requeue.after_stop()
        except SystemExit as stop:  # submitit's local requeue is an exit status
            sys.stdout.flush()
            sys.stderr.flush()
            # an exit status set inside atexit is ignored; the local executor reads it
            os._exit(stop.code if isinstance(stop.code, int) else 1)
