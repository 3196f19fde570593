"""Score a trained checkpoint: python eval.py ckpt_path=<.ckpt> [split=test] [inference=slide]

Rebuilds the data module and the task from the config stored in the checkpoint (see
:class:`segkit.callbacks.ConfigInCheckpoint`), scores the weights on a split and writes
``metrics.json``, ``confusion_matrix.npy`` and ``per_class.csv`` into the run folder
(``logs/eval/runs/<time>``), exactly as train.py does, plus the per-class console table.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("SEGKIT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from segkit.inference import load_checkpoint, task_from_checkpoint  # noqa: E402
from segkit.runner import evaluate  # noqa: E402
from segkit.tasks.instance import InstanceSegmentationTask  # noqa: E402
from segkit.tasks.semantic import SemanticSegmentationTask  # noqa: E402


def stored_overrides(cfg: DictConfig) -> dict:
    """The ``data`` and ``task`` keys given on the command line, to merge over the stored ones."""
    return {key: cfg[key] for key in ("data", "task") if cfg.get(key)}


def evaluate_task(
    cfg: DictConfig, stored: DictConfig, task: L.LightningModule, epoch: int | None
) -> dict:
    """Confusion-matrix scores (and COCO AP for instance tasks) of ``task``, which already
    holds the checkpoint's weights, on ``cfg.split``; writes the report files."""
    if cfg.split not in ("val", "test"):
        raise ValueError(
            f"split={cfg.split} must be val or test; to score another split name set "
            f"+data.val_split=<name> (the stored val split is {stored.data.val_split!r})."
        )
    datamodule = hydra.utils.instantiate(stored.data)
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        precision=cfg.precision,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=cfg.paths.output_dir,
    )
    loaded = (cfg.ckpt_path, epoch)
    return evaluate(trainer, task, datamodule, cfg.split, None, cfg.paths.output_dir, loaded)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    checkpoint = load_checkpoint(cfg.ckpt_path)  # the one read of the file
    stored, task = task_from_checkpoint(checkpoint, stored_overrides(cfg))
    inference = OmegaConf.select(stored, "task.inference")
    print(f"evaluating {cfg.ckpt_path} on split {cfg.split}, inference: {inference or 'whole'}")
    if not isinstance(task, SemanticSegmentationTask | InstanceSegmentationTask):
        raise TypeError(f"eval.py cannot score a {type(task).__name__} checkpoint yet.")
    epoch = checkpoint.get("epoch")
    del checkpoint  # the task holds the weights; free the second copy before scoring
    metrics = evaluate_task(cfg, stored, task, epoch)
    # instance tasks: the same report, plus COCO AP in metrics.json
    key = "mask_AP" if isinstance(task, InstanceSegmentationTask) else "mIoU"
    return metrics.get(key)


if __name__ == "__main__":
    main()
