"""Lightning callbacks used by train.py."""

from __future__ import annotations

from typing import Any

import lightning as L


class ConfigInCheckpoint(L.Callback):
    """Store the composed (resolved) Hydra config in every checkpoint under ``"config"``.

    ``hydra.utils.instantiate(checkpoint["config"]["model"])`` then rebuilds the model, so
    eval.py and predict.py need nothing but the checkpoint.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["config"] = self.config
