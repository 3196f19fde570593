"""LightningModule for instance segmentation (Mask R-CNN): losses, COCO AP, semantic view.

The model follows torchvision's detection contract (see :mod:`segkit.models.maskrcnn`): in
training it returns its own losses (RPN objectness and box, classifier, box regression,
mask), logged one by one as ``train/loss_<name>`` and summed into ``train/loss``; in eval
mode it returns per-image detections.

Scores of each val/test epoch:

* COCO AP from torchmetrics ``MeanAveragePrecision(iou_type=("bbox", "segm"))`` (pycocotools
  backend; a batch's ``crowd`` regions are passed as ``iscrowd`` ground truth):
  ``<split>/{box,mask}_{AP,AP50,AP75,APs,APm,APl}`` and per class
  ``<split>/{box,mask}_AP/<class>``. The last epoch's values are kept in
  ``extra_scores[split]`` (``None`` where COCOeval reports -1: nothing to score), which
  :func:`segkit.engine.runner.evaluate` adds to ``metrics.json``.
* The semantic view: detections scoring at least ``score_threshold`` are pasted into a class
  map (:func:`paste_instances`, higher scores on top) and counted in the same
  :class:`~segkit.evaluation.metrics.ConfusionMatrix` as the semantic models, so
  ``<split>/mIoU`` and ``confusion_matrices[split]`` mean exactly what they mean there.

:func:`draw_instances` renders detections for predict.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from segkit.evaluation.metrics import ConfusionMatrix
from segkit.tasks.base import SegmentationTask, per_split

AP_KEYS = {  # torchmetrics name -> segkit name
    "map": "AP",
    "map_50": "AP50",
    "map_75": "AP75",
    "map_small": "APs",
    "map_medium": "APm",
    "map_large": "APl",
}
IOU_TYPES = {"bbox": "box", "segm": "mask"}


def paste_instances(
    masks: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    size: tuple[int, int],
    score_threshold: float = 0.5,
) -> torch.Tensor:
    """Class map of detections: background 0, where instances overlap the higher score wins.

    Args:
        masks: bool ``[N, H, W]`` instance masks.
        labels: int64 ``[N]`` classes.
        scores: ``[N]`` confidences.
        size: ``(H, W)``, used when ``N = 0``.
        score_threshold: detections scoring below this are left out.

    Returns:
        int64 ``[H, W]``.
    """
    class_map = torch.zeros(size, dtype=torch.int64, device=labels.device)
    keep = scores >= score_threshold
    masks, labels, scores = masks[keep], labels[keep], scores[keep]
    for index in scores.argsort():  # ascending: the best detection is painted last
        class_map[masks[index]] = labels[index]
    return class_map


def draw_instances(
    image: np.ndarray,
    detections: dict[str, torch.Tensor],
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    score_threshold: float = 0.5,
    alpha: float = 0.5,
) -> Image.Image:
    """Detections drawn over an image: mask tints, boxes, and ``"<class> <score>"`` labels.

    Args:
        image: uint8 RGB ``[H, W, 3]``.
        detections: ``boxes [K, 4]`` xyxy, ``labels [K]``, ``scores [K]``, bool
            ``masks [K, H, W]`` (as :meth:`InstanceSegmentationTask.forward` returns).
        class_names: names by class index.
        palette: one RGB colour per class.
        score_threshold: detections scoring below this are not drawn.
        alpha: mask opacity.

    Returns:
        the RGB picture (lower scores drawn first, so the best detection is on top).
    """
    canvas = image.astype(np.float32)
    keep = (detections["scores"] >= score_threshold).nonzero().flatten()
    order = keep[detections["scores"][keep].argsort()].tolist()
    for index in order:
        mask = detections["masks"][index].cpu().numpy()
        colour = np.asarray(palette[int(detections["labels"][index])], np.float32)
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
    picture = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for index in order:
        label = int(detections["labels"][index])
        colour = tuple(int(v) for v in palette[label])
        x0, y0, x1, y1 = detections["boxes"][index].tolist()
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour)
        text = f"{class_names[label]} {float(detections['scores'][index]):.2f}"
        draw.text((x0 + 1, y0 + 1), text, fill=colour)
    return picture


def ap_target(
    objects: dict[str, torch.Tensor], crowd: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """One image's ground truth for ``MeanAveragePrecision``: the objects, then the crowd
    regions (if any) flagged ``iscrowd=1``, which COCOeval matches to detections without
    counting them as hits or misses. Each input holds ``boxes [N, 4]``, ``labels [N]``,
    ``masks [N, H, W]``."""
    parts = [objects] if crowd is None else [objects, crowd]
    flags = [torch.full_like(p["labels"], i) for i, p in enumerate(parts)]
    return {
        "boxes": torch.cat([p["boxes"] for p in parts]),
        "labels": torch.cat([p["labels"] for p in parts]),
        "masks": torch.cat([p["masks"] for p in parts]).bool(),
        "iscrowd": torch.cat(flags),
    }


def gather_ap_states(metric: MeanAveragePrecision) -> None:
    """Give every process the per-image states of all processes, in rank order.

    One ``all_gather_object`` per call, whatever each rank holds, so ranks that scored
    different numbers of images (:class:`~segkit.data.datamodule.UnpaddedDistributedSampler`)
    stay in step; the metric then computes on the whole split locally (built with
    ``sync_on_compute=False``). A no-op outside distributed runs.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_world_size() == 1:
        return
    local = {
        name: [t.cpu() if torch.is_tensor(t) else t for t in value]
        for name, value in metric.metric_state.items()
    }
    gathered: list[dict[str, list]] = [{} for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather_object(gathered, local)
    for name in local:
        setattr(metric, name, [entry for rank in gathered for entry in rank[name]])


def _number(value: torch.Tensor) -> float | None:
    """COCOeval's -1 (nothing to score, e.g. no large objects) as ``None`` (JSON null)."""
    value = float(value)
    return None if value < 0 else value


class InstanceSegmentationTask(SegmentationTask):
    """Train and score an instance segmentation model (torchvision detection contract;
    :class:`segkit.tasks.base.SegmentationTask`).

    Args:
        model: e.g. :func:`segkit.models.maskrcnn.mask_rcnn`; ``model(images, targets)``
            returns a loss dict in train mode, ``model(images)`` detections in eval mode.
        optimizer: partial ``optimizer(params) -> torch.optim.Optimizer``.
        scheduler: partial ``scheduler(optimizer, total_steps=N)`` stepped per optimiser step,
            or ``None``.
        num_classes: ``C`` including background.
        class_names: ``C`` names.
        ignore_index: semantic-mask value excluded from the semantic view.
        score_threshold: minimum detection score pasted into the semantic view.
        mask_threshold: mask probability above which a pixel belongs to a detection.
        backbone_lr_mult: learning rate of ``model.backbone`` (ResNet + FPN) = lr * this.
        head_lr_mult: learning rate of the RPN and RoI heads = lr * this.
        no_decay_norm_bias: weight decay 0 on norm-layer weights and biases
            (:func:`segkit.tasks.optim.parameter_groups`).

    Raises:
        ValueError: ``class_names`` does not hold ``num_classes`` names.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
        num_classes: int,
        class_names: Sequence[str],
        ignore_index: int = 255,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        backbone_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
        no_decay_norm_bias: bool = True,
    ) -> None:
        super().__init__(model, num_classes, class_names, ignore_index, optimizer, scheduler)
        self.set_parameter_groups(backbone_lr_mult, head_lr_mult, no_decay_norm_bias)
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.confusion = per_split(lambda: ConfusionMatrix(num_classes, ignore_index))
        # synchronised by gather_ap_states: torchmetrics' own sync issues one collective per
        # list entry, which mismatches (and crashes gloo) when ranks scored different numbers
        # of images, as the unpadded sampler makes them
        self.average_precision = per_split(
            lambda: MeanAveragePrecision(
                iou_type=tuple(IOU_TYPES), class_metrics=True, sync_on_compute=False
            )
        )

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections per image: ``boxes [K, 4]``, ``labels [K]``, ``scores [K]``, ``masks``
        bool ``[K, H, W]`` (thresholded at ``mask_threshold``)."""
        outputs = self.model(images)
        for output in outputs:
            output["masks"] = output["masks"][:, 0] > self.mask_threshold
        return outputs

    def semantic_map(self, output: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """The class map ``[H, W]`` of one image's detections (see :func:`paste_instances`)."""
        return paste_instances(
            output["masks"], output["labels"], output["scores"], size, self.score_threshold
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.model(batch["image"], batch["target"])
        size = len(batch["image"])
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True, batch_size=size)
        loss = sum(losses.values())
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        return loss

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        outputs = self(batch["image"])
        crowds = batch.get("crowd") or [None] * len(batch["target"])
        targets = [
            ap_target(objects, crowd)
            for objects, crowd in zip(batch["target"], crowds, strict=True)
        ]
        self.average_precision[split].update(outputs, targets)
        for output, mask in zip(outputs, batch["mask"], strict=True):
            predicted = self.semantic_map(output, tuple(mask.shape))
            self.confusion[split].update(predicted, mask)

    def _eval_epoch_end(self, split: str) -> None:
        confusion, average_precision = self.confusion[split], self.average_precision[split]
        confmat = confusion.compute_confmat()
        gather_ap_states(average_precision)
        result = average_precision.compute()
        confusion.reset()
        average_precision.reset()
        if self.trainer.sanity_checking:
            return
        self._log_semantic_scores(split, confmat)
        extra: dict[str, Any] = {}
        classes = result["classes"].reshape(-1).tolist()
        for iou_type, prefix in IOU_TYPES.items():
            for key, name in AP_KEYS.items():
                extra[f"{prefix}_{name}"] = _number(result[f"{iou_type}_{key}"])
            per_class = result[f"{iou_type}_map_per_class"].reshape(-1).tolist()
            extra[f"{prefix}_AP_per_class"] = {
                self.class_names[c]: _number(v) for c, v in zip(classes, per_class, strict=True)
            }
        self.extra_scores[split] = extra
        logged = {f"{split}/{key}": value for key, value in extra.items()}
        for iou_type in IOU_TYPES.values():
            for name, value in logged.pop(f"{split}/{iou_type}_AP_per_class").items():
                logged[f"{split}/{iou_type}_AP/{name}"] = value
        for key, value in logged.items():
            if value is not None:
                self.log(key, value, prog_bar=key == f"{split}/mask_AP")

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The base's groups without the layers frozen by ``trainable_layers`` (they stay out
        of the optimiser), and without groups left empty."""
        groups = super().optimizer_groups()
        for group in groups:
            group["params"] = [p for p in group["params"] if p.requires_grad]
        return [g for g in groups if g["params"]]
