"""Hydra multirun and Optuna sweeps of train.py: run dirs, failed trials, SQLite study, resume.

:func:`~tests.helpers.tiny_optuna_sweep` is the one tiny sweep shared with
tests/cli/test_leaderboard.py and tests/test_notebook.py: it is made once per pytest session
(kept under the session's base temp folder) and reused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import optuna
import pytest
from omegaconf import OmegaConf, open_dict, read_write

from segkit.engine.hydra_callbacks import SweepCallback
from segkit.engine.sweeps import check_optimized_metric, check_searched_keys

from ..helpers import PROJECT_ROOT, SWEEP_TINY, check_report, run_multirun

CLASS_NAMES = ["background", "circle", "square", "triangle", "star"]


def load_study(sweep_dir: Path) -> optuna.Study:
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{sweep_dir / 'optuna.db'}", engine_kwargs={"isolation_level": "AUTOCOMMIT"}
    )
    return optuna.load_study(study_name="shapes_unet", storage=storage)


@pytest.mark.slow
def test_multirun_gives_one_complete_run_dir_per_value(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_multirun(tmp_path, sweep_dir, *SWEEP_TINY, "loss=ce,dice")
    losses = {}
    for job in ("0", "1"):
        run_dir = sweep_dir / job
        overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
        losses[job] = [o for o in overrides if o.startswith("loss=")]
        config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        losses[job].append(config.loss._target_)
        assert len(list((run_dir / "checkpoints").glob("best_epoch*.ckpt"))) == 1
        assert (run_dir / "csv" / "metrics.csv").is_file()
        check_report(run_dir, CLASS_NAMES, "val")
    assert losses == {
        "0": ["loss=ce", "segkit.tasks.losses.CrossEntropyLoss"],
        "1": ["loss=dice", "segkit.tasks.losses.DiceLoss"],
    }
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]


@pytest.mark.slow
def test_optuna_sweep_survives_a_failing_trial_and_saves_best_params(optuna_sweep):
    study = load_study(optuna_sweep)
    trials = study.trials
    assert len(trials) == 4  # 3, then 1 more after resuming
    states = [t.state for t in trials]
    weights = [t.params["loss.weights.ce"] for t in trials]
    # exactly the trials with a -inf loss weight failed; the sweep went on after them
    assert [w == -math.inf for w in weights] == [s == optuna.trial.TrialState.FAIL for s in states]
    assert states[:3].count(optuna.trial.TrialState.FAIL) == 1
    assert states[2] == optuna.trial.TrialState.COMPLETE

    job_dirs = [optuna_sweep / str(i) for i in range(3)] + [optuna_sweep / "resume3" / "0"]
    for trial, run_dir in zip(trials, job_dirs, strict=True):
        overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
        assert f"optimizer.lr={trial.params['optimizer.lr']}" in overrides
        if trial.state == optuna.trial.TrialState.FAIL:
            assert not (run_dir / "metrics.json").exists()
        else:  # the value told to Optuna is the run's val mIoU (float32 when logged)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            assert trial.value == pytest.approx(metrics["mIoU"], rel=1e-6)
    log = (optuna_sweep / "log.txt").read_text()
    # logged by SweepCallback: the -inf weight stops its trial at start-up (check_config)
    assert "Trial failed (ConfigError: loss.weights.ce=-inf" in log

    for name, n_trials in (("best_params_first.yaml", 3), ("best_params.yaml", 4)):
        best = OmegaConf.to_container(OmegaConf.load(optuna_sweep / name))
        done = [t for t in trials[:n_trials] if t.state == optuna.trial.TrialState.COMPLETE]
        top = max(done, key=lambda t: t.value)
        assert best["n_trials"] == n_trials and best["n_failed"] == n_trials - len(done)
        assert best["best_value"] == top.value and best["best_params"] == top.params
        assert best["overrides"].split() == [f"{k}={v}" for k, v in top.params.items()]


def compose_sweep(tmp_path: Path, *overrides: str, search: str = "shapes_optuna"):
    with hydra.initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return hydra.compose(
            "train",
            overrides=[f"paths.root_dir={tmp_path}", f"hparams_search={search}", *overrides],
            return_hydra_config=True,
        )


def test_metric_and_searched_keys_are_checked(tmp_path):
    check_optimized_metric(compose_sweep(tmp_path))
    check_searched_keys(compose_sweep(tmp_path))
    check_optimized_metric(compose_sweep(tmp_path, "optimized_metric=val/IoU/star"))
    with pytest.raises(ValueError, match=r"optimized_metric='val/miou' is not logged.*val/mIoU"):
        check_optimized_metric(compose_sweep(tmp_path, "optimized_metric=val/miou"))
    with pytest.raises(ValueError, match=r"hydra.sweeper.direction=minimize"):
        check_optimized_metric(compose_sweep(tmp_path, "optimized_metric=val/loss"))
    check_optimized_metric(
        compose_sweep(tmp_path, "optimized_metric=val/loss", "hydra.sweeper.direction=minimize")
    )
    cfg = compose_sweep(tmp_path)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.sweeper.params["optimizer.learning_rate"] = "interval(1e-4, 1e-2)"
    with pytest.raises(ValueError, match=r"hydra.sweeper.params.optimizer.learning_rate"):
        check_searched_keys(cfg)


def test_bad_metric_stops_the_sweep_before_the_first_trial(tmp_path):
    cfg = compose_sweep(tmp_path, "optimized_metric=val/IoU/hexagon")
    # SystemExit: Hydra would turn an exception of a callback into a warning and launch
    with pytest.raises(SystemExit, match="ValueError: .*val/IoU/hexagon"):
        SweepCallback().on_multirun_start(config=cfg)
    assert not Path(cfg.hydra.sweep.dir).exists()  # no study, no trial was started
    assert Path(cfg.hydra.sweep.dir).is_relative_to(tmp_path)


def test_camvid_search_names_existing_keys(tmp_path):
    cfg = compose_sweep(tmp_path, search="camvid_optuna")
    assert cfg.data.train_transform.transforms[1]._target_ == "albumentations.RandomCrop"
    check_searched_keys(cfg)
    check_optimized_metric(cfg)
    # the same crop keys on shapes data (no RandomCrop) are caught
    with pytest.raises(ValueError, match=r"transforms.1.height"):
        check_searched_keys(compose_sweep(tmp_path, "data=shapes", search="camvid_optuna"))
