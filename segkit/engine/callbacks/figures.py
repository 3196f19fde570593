"""Pictures of the validation for the loggers that take images
(``conf/callbacks/validation_figures.yaml``).

* :class:`ValidationFigures`: every ``n`` epochs, the validation confusion matrix as a
  heatmap and ``k`` fixed validation images as image | ground truth | prediction panels, to
  the loggers that take images (TensorBoard, W&B, MLflow).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image

from segkit.data.voc import voc_colour
from segkit.engine.loggers import log_image, takes_images
from segkit.evaluation.figures import confusion_heatmap, sample_indices, sample_panels


class ValidationFigures(L.Callback):
    """Log pictures of the validation to every logger that takes images.

    After every ``every_n_epochs``-th training epoch's validation (epochs counted from 1;
    not the sanity check, not the scoring after fitting), at the step Lightning logs that
    validation's scalars with:

    * ``val/confusion_matrix``: the epoch's confusion matrix normalised by rows (rows =
      ground truth; each cell the % of the row's pixels), as a labelled heatmap
      (:func:`segkit.evaluation.figures.confusion_heatmap`).
    * ``val/samples``: ``num_images`` fixed validation images, evenly spaced in the split's
      order (:func:`segkit.evaluation.figures.sample_indices`), one row each: image | ground
      truth | prediction in the data's palette, with a legend
      (:func:`segkit.evaluation.figures.sample_panels`).
      Predictions are the task's ``class_scores`` (the weights and test-time inference that
      validation scores), run on rank 0 only; tasks without ``class_scores`` (Mask R-CNN)
      log the confusion matrix alone.

    Loggers that take images: TensorBoard, W&B and MLflow (:func:`segkit.engine.loggers.log_image`).
    With none of them (``logger=csv``, ``logger=none``) the callback does nothing, not even
    the forward passes.

    Args:
        every_n_epochs: log after every n-th epoch's validation; 0 turns the callback off.
        num_images: sample images per panel; 0 logs the confusion matrix only.
        max_size: longest side in pixels of each tile of the panels (keeps 1024x2048
            Cityscapes frames from filling the logs); ``None`` keeps the full size.
        palette: ``C`` RGB class colours (``${data.palette}``); ``None``: the VOC colour
            map, as predict.py uses.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_images: int = 4,
        max_size: int | None = 512,
        palette: list[list[int]] | None = None,
    ) -> None:
        for key, value in (("every_n_epochs", every_n_epochs), ("num_images", num_images)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"callbacks.validation_figures.{key} must be an integer >= 0 (0: off), "
                    f"got {value!r}"
                )
        if max_size is not None and max_size < 1:
            raise ValueError(
                f"callbacks.validation_figures.max_size must be >= 1 pixel or null (full "
                f"size), got {max_size}"
            )
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.max_size = max_size
        self.palette = None if palette is None else [tuple(map(int, c)) for c in palette]

    def _due(self, trainer: L.Trainer) -> bool:
        return (
            self.every_n_epochs > 0
            and trainer.is_global_zero
            and not trainer.sanity_checking
            and trainer.state.fn == TrainerFn.FITTING
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the task's on_validation_epoch_end (which keeps the epoch's matrix), still
        # in eval mode and without gradients
        loggers = [logger for logger in trainer.loggers if takes_images(logger)]
        if not loggers or not self._due(trainer):
            return
        figures = {}
        matrix = getattr(pl_module, "confusion_matrices", {}).get("val")
        if matrix is not None:
            figures["val/confusion_matrix"] = confusion_heatmap(
                matrix.numpy(), pl_module.class_names
            )
        if self.num_images and hasattr(pl_module, "class_scores"):
            figures["val/samples"] = self.samples(trainer, pl_module)
        # the step Lightning gives this validation's scalars (its logger connector's), so
        # pictures and curves line up in TensorBoard and W&B; global_step if it ever goes
        step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        for key, image in figures.items():
            for logger in loggers:
                log_image(logger, key, image, step)

    def samples(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        """The image | ground truth | prediction panels of the fixed validation images."""
        dataset = trainer.datamodule.build_dataset("val")  # the one validation reads
        num_classes = pl_module.num_classes
        palette = self.palette or [voc_colour(i) for i in range(num_classes)]
        panels, names = [], []
        for index in sample_indices(len(dataset), self.num_images):
            item = dataset[index]
            images = item["image"][None].to(pl_module.device)
            with trainer.precision_plugin.val_step_context():
                labels = pl_module.class_scores(images).argmax(1)[0].cpu().numpy()
            mask = item["mask"].numpy()
            image = dataset.load(index)[0]  # uint8, before normalisation
            if image.shape[:2] != mask.shape:  # an eval_transform that resizes
                size = (mask.shape[1], mask.shape[0])
                image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            panels.append((image, mask, labels))
            names.append(str(item["name"]))
        return sample_panels(panels, names, pl_module.class_names, palette, self.max_size)
