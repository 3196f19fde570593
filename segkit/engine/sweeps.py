"""Optuna sweeps that survive failing trials: checks and study access for ``conf/hparams_search``.

``python train.py -m hparams_search=shapes_optuna`` runs the hydra-optuna-sweeper with

* the study in ``<sweep dir>/optuna.db`` (SQLite), so re-running the command with
  ``hydra.sweep.dir=<that dir>`` resumes the study (new jobs go to ``resume<K>/<num>``,
  K = trials already in the study, so earlier run dirs are never overwritten);
* ``max_failure_rate: 1.0``: a trial that raises (any exception, CUDA out of memory, or the
  ``NonFiniteLossError`` of ``callbacks.nonfinite_guard`` on a NaN/Inf loss) is told to
  Optuna as ``FAIL`` (Hydra catches the job's exception) and the sweep goes on;
* :class:`~segkit.engine.hydra_callbacks.SweepCallback`, which checks ``optimized_metric`` and the
  searched keys before the first trial and writes ``best_params.yaml`` into the sweep dir
  at the end.

SQLite with optuna 2.10 and SQLAlchemy >= 2: optuna's ``RDBStorage`` stamps its schema
version on a connection that SQLAlchemy 2 never commits, so a plain ``sqlite:///`` URL fails
(``AssertionError`` or ``database is locked``). The configs therefore build the storage with
``engine_kwargs: {isolation_level: AUTOCOMMIT}``, which commits every statement.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from segkit.tasks.semantic import HEADLINE_KEYS

if TYPE_CHECKING:  # optuna (with SQLAlchemy and alembic) loads only when a study is opened,
    import optuna  # not in every run that imports the Hydra callbacks

log = logging.getLogger(__name__)

SEMANTIC_TASK = "segkit.tasks.semantic.SemanticSegmentationTask"


def logged_metric_names(class_names: list[str]) -> list[str]:
    """Names ``SemanticSegmentationTask`` logs after each validation epoch.

    These are the values train.py can return to a sweeper: ``val/loss``,
    ``val/{PA,MPA,mIoU,FWIoU,mDice}`` and ``val/IoU/<class>``.
    """
    return [
        "val/loss",
        *(f"val/{key}" for key in HEADLINE_KEYS),
        *(f"val/IoU/{name}" for name in class_names),
    ]


def check_optimized_metric(config: DictConfig) -> None:
    """Raise ``ValueError`` unless ``config.optimized_metric`` is logged by the task.

    Also checks that the sweep direction suits the metric (``maximize`` for scores,
    ``minimize`` for ``val/loss``).
    """
    metric = config.get("optimized_metric")
    target = OmegaConf.select(config, "task._target_")
    if target != SEMANTIC_TASK:
        log.warning("optimized_metric %s not checked: unknown task %s", metric, target)
        return
    names = logged_metric_names(list(config.data.class_names))
    if metric not in names:
        raise ValueError(
            f"optimized_metric={metric!r} is not logged by {target}; use one of "
            f"{', '.join(names)} (set it on the command line or in conf/hparams_search)."
        )
    direction = OmegaConf.select(config, "hydra.sweeper.direction")
    wanted = "minimize" if metric == "val/loss" else "maximize"
    if isinstance(direction, str) and direction != wanted:
        raise ValueError(
            f"hydra.sweeper.direction={direction} for optimized_metric={metric}: "
            f"set hydra.sweeper.direction={wanted}."
        )


def check_searched_keys(config: DictConfig) -> None:
    """Raise ``ValueError`` for a ``hydra.sweeper.params`` key that names nothing in the config.

    A key is a config group (``loss``) or a dotted key that exists (``optimizer.lr``);
    ``+key`` (add a new key) is not checked.
    """
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    groups = config.hydra.runtime.choices  # group -> chosen option, for every group
    for key in params:
        if key.startswith("+") or key in groups:
            continue
        parent_key, _, last = key.lstrip("~").rpartition(".")
        parent = OmegaConf.select(config, parent_key) if parent_key else config
        if not OmegaConf.is_dict(parent) or last not in parent.keys():  # "???" counts
            raise ValueError(
                f"hydra.sweeper.params.{key}: there is no config key or group {key!r}; "
                "fix the name in conf/hparams_search (or prefix a new key with '+')."
            )


def open_study(config: DictConfig) -> optuna.Study:
    """Load the study named in ``config.hydra.sweeper`` from its storage."""
    import optuna

    sweeper = config.hydra.sweeper
    storage = sweeper.storage
    if OmegaConf.is_dict(storage):
        storage = hydra.utils.instantiate(storage)
    return optuna.load_study(study_name=sweeper.study_name, storage=storage)


def best_params_dict(study: optuna.Study) -> dict[str, Any]:
    """``best_params.yaml`` content: best value and parameters, and the trial counts."""
    import optuna

    states = [trial.state for trial in study.trials]
    result: dict[str, Any] = {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "n_trials": len(states),
        "n_complete": states.count(optuna.trial.TrialState.COMPLETE),
        "n_failed": states.count(optuna.trial.TrialState.FAIL),
    }
    if result["n_complete"]:
        best = study.best_trial
        result |= {"best_trial": best.number, "best_value": best.value, "best_params": best.params}
        # the same parameters as command-line overrides, ready to paste after train.py
        result["overrides"] = " ".join(f"{key}={value}" for key, value in best.params.items())
    return result
