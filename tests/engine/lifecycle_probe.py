"""A callback for subprocess runs of train.py in tests (``+callbacks.probe=...``): writes the
optimiser step reached to a file after every training step and then waits, so a test can
send a signal at a known point of the first epoch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L


class StepFile(L.Callback):
    """Write ``trainer.global_step`` to ``path`` after each training step, then sleep
    ``delay`` seconds (the window in which the test interrupts)."""

    def __init__(self, path: str, delay: float = 1.0) -> None:
        self.path, self.delay = Path(path), delay

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.path.write_text(str(trainer.global_step))
        time.sleep(self.delay)
