"""``python train.py [model=...] [data=...] [key=value ...]`` (or ``python -m segkit.cli.train``):
fit and score a model, :func:`segkit.engine.train.train`. docs/getting-started.md."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segkit.config import CONF_DIR
from segkit.engine.train import optimized_value, train


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    """The Hydra app: :func:`~segkit.engine.train.train`, returning the value of
    ``cfg.optimized_metric`` to Hydra's sweepers."""
    return optimized_value(train(cfg), cfg.optimized_metric)


if __name__ == "__main__":
    main()
