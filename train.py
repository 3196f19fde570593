"""Train and score a segmentation model: python train.py [model=...] [data=...] [key=value ...]

Instantiates the data module, model, loss, optimiser, schedule and Lightning trainer from
conf/, fits, scores the best checkpoint on the validation split (and the test split with
test=true), writes metrics.json, confusion_matrix.npy and per_class.csv into the run folder,
prints the per-class table, and returns cfg.optimized_metric for Hydra sweepers.

Start-up checks stop a run before anything is trained: keys that are no argument of their
``_target_`` (``+optimizer.learning_rate``), a task, model and data of different kinds, a
checkpoint that does not fit, resumed-run changes the restored state cannot follow, a
training split without one full batch. Ctrl-C or SIGTERM saves ``last.ckpt`` and prints the
command that continues the run; the last line names the folder with the results.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("SEGKIT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from segkit.runner import (  # noqa: E402
    best_checkpoint,
    build_task,
    build_trainer,
    check_arguments,
    check_task_kinds,
    evaluate,
    fit,
    print_results,
    resume_checkpoint,
)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    check_arguments(cfg)  # before anything is built
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    task = build_task(cfg, datamodule)  # also computes named loss.class_weights
    check_task_kinds(task, datamodule)
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

    evaluate(trainer, task, datamodule, "val", ckpt_path, output_dir)
    optimized = trainer.callback_metrics.get(cfg.optimized_metric)
    if cfg.test:
        evaluate(trainer, task, datamodule, "test", ckpt_path, output_dir / "test")
    if trainer.is_global_zero:
        scored = f"scores of {Path(ckpt_path).name}" if ckpt_path else "scores"
        print_results(output_dir, f"{scored}: metrics.json, per_class.csv; checkpoints/")
    return None if optimized is None else float(optimized)


if __name__ == "__main__":
    main()
