"""``python predict.py ckpt_path=<.ckpt|model.pt|.onnx> input=<image or folder> output=<folder>``
(or ``python -m segkit.cli.predict``): segment images with a trained model;
:func:`segkit.deploy.predictor.predict`. docs/evaluation.md."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segkit.config import CONF_DIR
from segkit.deploy.predictor import predict


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    """The Hydra app."""
    predict(cfg)


if __name__ == "__main__":
    main()
