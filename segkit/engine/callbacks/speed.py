"""Speed: the switches that leave the results unchanged (``conf/callbacks/fast_paths.yaml``).

* :class:`FastPaths`: channels_last memory format and ``torch.compile``
  (``python train.py 'callbacks=[default,fast_paths]' callbacks.fast_paths.compile=true``).
  Mixed precision and cuDNN autotuning are Lightning trainer arguments already
  (``trainer.precision=bf16-mixed``, ``trainer.benchmark=true``). ``channels_last`` stores
  the model's 4-D weights and every image batch as NHWC, the layout that cuDNN tensor cores
  and oneDNN prefer; ``compile`` compiles the task's ``model``. Both give the same logits up
  to float rounding (``tests/engine/test_speed.py``).
* :func:`compile_supported`: whether ``torch.compile`` works here (also predict.py's
  backend choice, :mod:`segkit.deploy.backends`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn


def compile_supported() -> str | None:
    """``None`` if ``torch.compile`` works here, else the reason it does not.

    Compiles and runs a one-line function, so a missing C++ compiler or an unsupported
    Python version shows up at start-up instead of at the first training step.
    """
    try:
        torch.compile(lambda x: x + 1)(torch.zeros(1))
    except Exception as error:  # noqa: BLE001 - any failure means: run eagerly
        return f"{type(error).__name__}: {error}"
    return None


def to_channels_last(batch: Any) -> None:
    """Convert ``batch["image"]`` (a 4-D tensor) to channels_last in place of the dict."""
    if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
        if batch["image"].ndim == 4:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)


class FastPaths(L.Callback):
    """Put the task's ``model`` in channels_last layout and/or compile it.

    Args:
        channels_last: store 4-D weights and image batches ``[B, 3, H, W]`` as NHWC
            (the weight average ``ema_model`` too, which validation scores).
        compile: compile ``pl_module.model`` in place (``nn.Module.compile``, so checkpoint
            keys do not change); where compilation is unsupported, warn with the reason and
            keep the eager model.

    The task must keep its network in ``pl_module.model`` and take batches as dicts with
    an ``"image"`` entry (:class:`segkit.tasks.semantic.SemanticSegmentationTask`).
    """

    def __init__(self, channels_last: bool = False, compile: bool = False) -> None:
        self.channels_last = channels_last
        self.compile = compile
        self._compiled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        model = getattr(pl_module, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                "FastPaths needs the task's network in `pl_module.model`; "
                f"{type(pl_module).__name__} has none. Remove callbacks.fast_paths."
            )
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            ema = getattr(pl_module, "ema_model", None)  # the weights validation scores
            if isinstance(ema, torch.nn.Module):
                ema.to(memory_format=torch.channels_last)
        if self.compile and not self._compiled:
            self._compiled = True  # setup runs again for validate/test: compile once
            reason = compile_supported()
            if reason is None:
                model.compile()  # in place: state_dict keys (checkpoints) stay unchanged
            else:
                rank_zero_warn(
                    f"callbacks.fast_paths.compile=true but torch.compile is unsupported "
                    f"here ({reason}); training the eager model. Set compile=false to "
                    "silence this."
                )

    def _batch(self, batch: Any) -> None:
        if self.channels_last:
            to_channels_last(batch)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch(batch)

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch(batch)

    def on_test_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch(batch)
