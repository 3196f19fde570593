"""Cluster launch: the submitit launchers (hydra-submitit-launcher), the resume=auto rule and
the requeue signal that saves last.ckpt before submitit requeues (segkit.engine.hydra_callbacks)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from omegaconf import read_write
from submitit.core.utils import DelayedSubmission

from segkit.cli.leaderboard import main as leaderboard
from segkit.config import ConfigError
from segkit.engine.hydra_callbacks import (
    RequeueAfterSave,
    SubmititJob,
    check_requeue_resumes,
    check_slurm_counts,
)
from segkit.engine.train import train

from ..helpers import ENV, FAST, PROJECT_ROOT, check_report, compose, compose_job, load

LAUNCHERS = "hydra_plugins.hydra_submitit_launcher.submitit_launcher"
# segkit.config silences it for train.py; pytest resets warning filters per test
pytestmark = pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema")


class SignalAtStep(L.Callback):
    """Send ``signum`` to this process after optimiser step ``step`` (``+callbacks.probe``)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.slow
def test_two_job_multirun_through_submitit_local_writes_both_reports_and_the_leaderboard(
    tmp_path,
):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        str(PROJECT_ROOT / "train.py"),
        "-m",
        "hydra/launcher=submitit_local",
        "resume=auto",  # the local launcher may requeue, so it is required
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.sweep.dir={sweep}",
        *FAST,
        "data.prepare.num_train=8",
        "data.prepare.num_val=4",
        "data.prepare.size=32",
        "trainer.max_epochs=1",
        "seed=1,2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "validated against ConfigStore schema" not in result.stderr  # silenced, see config.py
    jobs = [sweep / "0", sweep / "1"]
    for job in jobs:
        metrics = check_report(job, ["background", "circle", "square", "triangle", "star"], "val")
        assert metrics["epoch"] == 0
    # each job ran in a process of its own, started by submitit
    logs = sorted(sweep.glob(".submitit/*/*_0_log.out"))
    assert len(logs) == 2 and len({log.parent.name for log in logs}) == 2

    assert leaderboard([str(sweep)]) == 0
    with open(sweep / "leaderboard.csv") as handle:
        rows = {Path(row["path"]).resolve(): row for row in csv.DictReader(handle)}
    assert set(rows) == {job.resolve() for job in jobs}
    for job in jobs:
        expected = json.loads((job / "metrics.json").read_text())["mIoU"]
        assert float(rows[job.resolve()]["mIoU"]) == pytest.approx(expected)


def launcher_config(tmp_path, *overrides: str):
    return compose(tmp_path, list(overrides))


def test_slurm_launcher_asks_sbatch_for_the_trainers_tasks_gpus_and_nodes(tmp_path, monkeypatch):
    import hydra
    import submitit
    from hydra.types import HydraContext

    # stand-ins for SLURM's commands: sbatch keeps the script it is given
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {tmp_path / "job.sh"}\necho Submitted batch job 4242\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(submitit.slurm.slurm.SlurmJob, "results", lambda job: ["not run"])

    cfg = launcher_config(
        tmp_path,
        "hydra/launcher=submitit_slurm",
        "trainer=slurm",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        "resume=auto",
    )
    assert cfg.hydra.launcher._target_ == f"{LAUNCHERS}.SlurmLauncher"
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    context = HydraContext(config_loader=None, callbacks=None)
    launcher.setup(hydra_context=context, task_function=print, config=cfg)
    assert launcher.launch([["seed=1"]], initial_job_idx=0) == ["not run"]
    options = {
        line.split()[1]
        for line in (tmp_path / "job.sh").read_text().splitlines()
        if line.startswith("#SBATCH")
    }
    expected = {
        "--partition=gpu",
        "--nodes=2",
        "--ntasks-per-node=4",  # one process per GPU, as Lightning expects on SLURM
        "--gpus-per-node=4",
        "--cpus-per-task=8",
        "--mem=64GB",
        "--time=240",
        "--signal=USR2@300",  # 5 min before the limit: last.ckpt, then requeue
    }
    assert expected <= options, sorted(options)


def test_slurm_node_and_task_counts_have_one_source_the_trainers(tmp_path):
    # trainer.num_nodes and trainer.devices are set once; the launcher's sbatch counts
    # follow them (conf/hydra/launcher/submitit_slurm.yaml), so the two cannot disagree
    slurm = ["hydra/launcher=submitit_slurm", "trainer=slurm", "resume=auto"]
    cfg = launcher_config(tmp_path, *slurm, "trainer.num_nodes=3", "trainer.devices=2")
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (3, 2)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (3, 2, 2)
    SubmititJob().on_multirun_start(cfg)
    # the launcher's own key given instead of the trainer's
    cases = {
        "hydra.launcher.nodes=3": r"hydra.launcher.nodes=3 but trainer.num_nodes=1.*"
        r"Set trainer.num_nodes=3 instead",
        "hydra.launcher.tasks_per_node=2": r"hydra.launcher.tasks_per_node=2 but "
        r"trainer.devices=1.*Set trainer.devices=2 instead",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            check_slurm_counts(launcher_config(tmp_path, *slurm, override))
    # a swept trainer count: the launcher would size every job from the unswept value
    cfg = launcher_config(tmp_path, *slurm)
    with read_write(cfg.hydra):  # what Hydra records for `-m trainer.devices=2,4`
        cfg.hydra.overrides.task.append("trainer.devices=2,4")
    with pytest.raises(ConfigError, match="trainer.devices is swept"):
        check_slurm_counts(cfg)


@pytest.mark.slow
def test_a_refused_launch_stops_before_anything_is_queued(tmp_path):
    # Hydra only warns when a callback raises an Exception; SubmititJob exits instead
    sweep = tmp_path / "sweep"
    base = [
        sys.executable,
        str(PROJECT_ROOT / "train.py"),
        "-m",
        "hydra/launcher=submitit_slurm",
        "trainer=slurm",
        "hydra.launcher.partition=gpu",
        f"hydra.sweep.dir={sweep}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    refused = {
        "hydra.launcher.nodes=2 resume=auto": "hydra.launcher.nodes=2 but trainer.num_nodes=1",
        "trainer.num_nodes=2": "resume=auto",  # the requeue check, through the same exit
    }
    for overrides, message in refused.items():
        command = [*base, *overrides.split()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
        assert result.returncode == 1, result.stderr[-3000:]
        assert "ConfigError: " in result.stderr and message in result.stderr, result.stderr
        assert "srun" not in result.stderr  # submitit never ran (there is no SLURM here)
        assert not (sweep / ".submitit").exists()


def test_a_launch_that_may_requeue_needs_resume_auto(tmp_path):
    check = check_requeue_resumes
    slurm = launcher_config(tmp_path, "hydra/launcher=submitit_slurm")
    with pytest.raises(ConfigError, match=r"resume=auto.*hydra.launcher.max_num_timeout=0"):
        check(slurm)
    check(launcher_config(tmp_path, "hydra/launcher=submitit_slurm", "resume=auto"))
    check(
        launcher_config(
            tmp_path, "hydra/launcher=submitit_slurm", "hydra.launcher.max_num_timeout=0"
        )
    )
    with pytest.raises(ConfigError, match="up to 3 times"):  # submitit's local default
        check(launcher_config(tmp_path, "hydra/launcher=submitit_local"))
    check(compose(tmp_path, []))  # Hydra's basic launcher: nothing to check


def test_requeue_signal_saves_last_ckpt_then_hands_over_to_submitit(tmp_path):
    calls: list[tuple[int, int | None]] = []
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"

    def submitit_handler(signum, frame):  # stands in for submitit's requeue
        calls.append((signum, load(last)["global_step"] if last.is_file() else None))

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        cfg = compose_job(
            "train",
            tmp_path,
            tmp_path / "run",
            [
                *FAST,
                "data.prepare.num_train=16",  # 4 steps per epoch
                "trainer.max_epochs=2",
                "callbacks.last_checkpoint.every_n_train_steps=0",
                "+callbacks.probe._target_=tests.engine.test_cluster.SignalAtStep",
                "+callbacks.probe.step=2",
                f"+callbacks.probe.signum={int(signal.SIGUSR2)}",
            ],
        )
        with RequeueAfterSave((signal.SIGUSR2, signal.SIGUSR1)) as requeue:
            with pytest.raises(SystemExit) as stopped:
                train(cfg)
            assert calls == []  # not during the step: submitit would requeue mid-step
            requeue.after_stop()
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # restored
        # outside the training loop the handler runs at once
        with RequeueAfterSave((signal.SIGUSR2,)):
            os.kill(os.getpid(), signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stopped.value.code == 128 + signal.SIGUSR2
    assert calls == [(signal.SIGUSR2, 2), (signal.SIGUSR2, 2)]  # last.ckpt held step 2 first


def test_job_stopped_by_the_signal_is_requeued_at_exit_with_submitit_status(monkeypatch):
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)

    def local_requeue(signum, frame):  # submitit's local executor requeues by exit status
        raise SystemExit(144)

    job = SubmititJob()
    job._requeue = RequeueAfterSave((signal.SIGUSR2,))
    job._requeue.submitit_handler, job._requeue.received = local_requeue, signal.SIGUSR2
    job._requeue_at_exit()
    assert exits == [144]
    job._finished, exits[:] = True, []  # a finished (or failed) job is never requeued
    job._requeue.forwarded = False
    job._requeue_at_exit()
    assert exits == []


def test_requeued_submitit_job_keeps_its_overrides_and_folder(tmp_path):
    # submitit requeues the launcher call that the plugin's checkpoint() returns: the same
    # overrides and job number, hence the same <sweep dir>/<num> folder for resume=auto
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    launcher = SlurmLauncher(submitit_folder=str(tmp_path))
    args = (["seed=1"], "hydra.sweep.dir", 3, "job_id_for_3", {})
    again = launcher.checkpoint(*args)
    assert isinstance(again, DelayedSubmission) and again.args == args
