"""``python eval.py ckpt_path=<.ckpt|model.pt> [split=test] [inference=slide]`` (or
``python -m segkit.cli.eval``): score a trained checkpoint, or an ensemble
(``ckpt_path=[a.ckpt,b.ckpt]``), on a split; :func:`segkit.engine.evaluate.evaluate_checkpoint`.
docs/evaluation.md."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segkit.config import CONF_DIR
from segkit.engine.evaluate import evaluate_checkpoint


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def main(cfg: DictConfig) -> float | None:
    """The Hydra app: returns the mIoU (an instance model's mask AP) to Hydra."""
    return evaluate_checkpoint(cfg)["score"]


if __name__ == "__main__":
    main()
