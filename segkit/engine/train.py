"""train.py's run as a function: :func:`train` fits ``cfg`` (a composed ``conf/train.yaml``),
scores its best checkpoint on the validation split (and the test split with ``test=true``),
writes ``metrics.json``, ``confusion_matrix.npy`` and ``per_class.csv`` into the run folder
and prints the per-class table; :func:`optimized_value` is what the Hydra app returns to
sweepers. The command and what a run leaves behind: docs/getting-started.md.

Start-up checks stop a run before anything is trained: keys that are no argument of their
``_target_`` (``+optimizer.learning_rate``), a task, model and data of different kinds, a
checkpoint that does not fit, resumed-run changes the restored state cannot follow, a
training split without one full batch. Ctrl-C or SIGTERM saves ``last.ckpt`` and prints the
command that continues the run; the last line names the folder with the results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from segkit.config_values import check_config
from segkit.engine.checkpoints import best_checkpoint, check_run_folder, resume_checkpoint
from segkit.engine.runner import (
    build_trainer,
    check_splits,
    check_task_kinds,
    evaluate,
    fit,
    print_results,
    resolve_loss_weights,
)
from segkit.tasks import build_task


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit ``cfg`` (a composed ``conf/train.yaml``) and score its best checkpoint.

    The whole of ``python train.py``, callable in-process: compose the config with
    :func:`segkit.config.compose` and give ``paths.output_dir=<folder>`` (outside a Hydra
    app ``${hydra:runtime.output_dir}`` does not resolve).

    Returns:
        ``{"metrics": the val metrics.json dict ({} on DDP ranks > 0), "test_metrics": the
        test one (None with test=false), "optimized": float value of cfg.optimized_metric
        (None when it was never logged), "ckpt_path": the scored checkpoint (None: the
        weights in memory), "trainer", "task", "datamodule"}``.
    """
    datamodule, task = start_run(cfg)
    trainer = build_trainer(cfg)
    output_dir = Path(cfg.paths.output_dir)
    start = resume_checkpoint(cfg, task)  # ckpt_path=<file>|last, or resume=auto

    if cfg.train:
        fit(cfg, trainer, task, datamodule, start)  # prints how to continue if interrupted
        if trainer.global_step == 0:
            raise RuntimeError(
                f"training ran no optimiser step (trainer.max_epochs={cfg.trainer.max_epochs}, "
                f"trainer.max_steps={cfg.trainer.get('max_steps', -1)}), so there is no trained "
                "model to score; use train=false to score the initial weights on purpose."
            )
    # Score the best checkpoint (by cfg.optimized_metric) when one was written.
    ckpt_path = best_checkpoint(trainer) or (None if cfg.train else start)

    metrics = evaluate(trainer, task, datamodule, "val", ckpt_path, output_dir)
    optimized = trainer.callback_metrics.get(cfg.optimized_metric)
    test_metrics = None
    if cfg.test:
        test_metrics = evaluate(trainer, task, datamodule, "test", ckpt_path, output_dir / "test")
    if trainer.is_global_zero:
        scored = f"scores of {Path(ckpt_path).name}" if ckpt_path else "scores"
        print_results(output_dir, f"{scored}: metrics.json, per_class.csv; checkpoints/")
    return {
        "metrics": metrics,
        "test_metrics": test_metrics,
        "optimized": None if optimized is None else float(optimized),
        "ckpt_path": ckpt_path,
        "trainer": trainer,
        "task": task,
        "datamodule": datamodule,
    }


def start_run(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The start-up of :func:`train`: the input contract's checks, in the order that reads
    the least first, then the data module and the task (no trainer, nothing trained).

    The config's keys and values (:func:`segkit.config_values.check_config`), the run
    folder (a fresh run never writes over an earlier one's files), every split the run will
    use (train, val, and test with ``test=true``: :func:`segkit.engine.runner.check_splits`,
    check_data's checks), the class weights named in ``loss``, then the task built and
    checked against the data's kind.

    Raises:
        ConfigError, DataError: naming the key or file and the fix.
    """
    check_config(cfg)  # keys and values, before anything is read or built
    check_run_folder(cfg)  # a fresh run never writes over an earlier run's files
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    # every split the run will use, checked before a model is built or a step is taken
    check_splits(datamodule, ("train", "val", "test") if cfg.test else ("train", "val"))
    resolve_loss_weights(cfg, datamodule)  # named loss.class_weights -> numbers, printed
    task = build_task(cfg)  # builds only: reads no data, changes no config
    check_task_kinds(task, datamodule)
    return datamodule, task


def optimized_value(result: dict[str, Any], metric: str) -> float:
    """The value of ``metric`` (``cfg.optimized_metric``) that :func:`train` returned, for
    Hydra's sweepers.

    Raises:
        KeyError: it was never logged, naming the metrics that were.
    """
    if result["optimized"] is None:
        logged = sorted(result["trainer"].callback_metrics)
        raise KeyError(
            f"optimized_metric={metric} was never logged, so a sweeper would get "
            f"no value; logged metrics: {', '.join(logged)}. Set optimized_metric to one of them."
        )
    return result["optimized"]
