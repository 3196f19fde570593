"""Train and score a segmentation model: python train.py [model=...] [data=...] [key=value ...]

Instantiates the data module, model, loss, optimiser, schedule and Lightning trainer from
conf/, fits, scores the best checkpoint on the validation split (and the test split with
test=true), writes metrics.json, confusion_matrix.npy and per_class.csv into the run folder,
prints the per-class table, and returns cfg.optimized_metric for Hydra sweepers.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("SEGKIT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from segkit.runner import build_task, build_trainer, evaluate, resume_checkpoint  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    task = build_task(cfg, datamodule)  # also computes named loss.class_weights
    trainer = build_trainer(cfg)
    output_dir = Path(cfg.paths.output_dir)
    start = resume_checkpoint(cfg, task)  # ckpt_path=<file>|last, or resume=auto

    if cfg.train:
        trainer.fit(task, datamodule=datamodule, ckpt_path=start, weights_only=True)
    # Score the best checkpoint (by cfg.optimized_metric) when one was written.
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt_path = best or (None if cfg.train else start)

    evaluate(trainer, task, datamodule, "val", ckpt_path, output_dir)
    optimized = trainer.callback_metrics.get(cfg.optimized_metric)
    if cfg.test:
        evaluate(trainer, task, datamodule, "test", ckpt_path, output_dir / "test")
    return None if optimized is None else float(optimized)


if __name__ == "__main__":
    main()
