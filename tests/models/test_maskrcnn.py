"""Mask R-CNN: model contract, offline weights, the task's AP against pycocotools' COCOeval,
the semantic view, the multistep schedule, and an end-to-end train.py run that learns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from lightning import Trainer
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader
from torchvision.ops import FrozenBatchNorm2d

from segkit.data.instances import collate_instances, masks_to_boxes
from segkit.evaluation.metrics import confusion_matrix, scores
from segkit.models.maskrcnn import mask_rcnn
from segkit.models.weights import WeightsError, build_model, cached_weights_file
from segkit.tasks.instance import InstanceSegmentationTask, paste_instances
from segkit.tasks.schedulers import multistep_lr

from ..helpers import check_report, run_train

LIGHT = {  # a few-MB Mask R-CNN for CPU tests
    "backbone": "resnet18",
    "min_size": 64,
    "max_size": 64,
    "fpn_channels": 32,
    "box_head_width": 64,
    "mask_head_layers": (32,),
    "anchor_sizes": (16, 32, 64, 128, 256),
    "rpn_proposals_train": 64,
    "rpn_proposals_test": 32,
    "box_batch_size_per_image": 32,
}


def with_weights(**arguments: object) -> torch.nn.Module:
    """A light Mask R-CNN built by :func:`build_model`, which loads ``weights_path``."""
    return build_model({"_target_": "segkit.models.maskrcnn.mask_rcnn", **LIGHT, **arguments})


LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def square_target(height: int, width: int) -> dict[str, torch.Tensor]:
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 4:20, 6:30] = 1
    masks[1, 24:40, 30:50] = 1
    boxes = torch.from_numpy(masks_to_boxes(masks.numpy()))
    return {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_contract_losses_and_detections_at_input_size(variant):
    torch.manual_seed(0)
    model = mask_rcnn(num_classes=3, variant=variant, box_score_threshold=0.0, **LIGHT)
    images = [torch.randn(3, 48, 56), torch.randn(3, 40, 64)]
    targets = [square_target(48, 56), square_target(40, 64)]
    targets[1] = {k: v[:0] for k, v in targets[1].items()}  # an image without objects
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSSES and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is not None
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for image, output in zip(images, outputs, strict=True):
        count = len(output["scores"])
        assert output["masks"].shape == (count, 1, *image.shape[1:])  # back at input size
        assert output["boxes"].shape == (count, 4) and output["labels"].max() < 3


def test_trainable_layers_freeze_the_bottom_stages():
    model = mask_rcnn(num_classes=3, trainable_layers=2, **LIGHT)
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.layer2.parameters())
    assert not body.conv1.weight.requires_grad
    assert all(p.requires_grad for p in body.layer3.parameters())
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())


def test_unavailable_pretrained_weights_fail_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # an empty cache
    with pytest.raises(WeightsError, match=r"encoder_weights='IMAGENET1K_V1' needs resnet18"):
        mask_rcnn(num_classes=3, encoder_weights="IMAGENET1K_V1", **LIGHT)
    with pytest.raises(WeightsError, match="is not one of torchvision's resnet18 weights"):
        mask_rcnn(num_classes=3, encoder_weights="IMAGENET9K", **LIGHT)
    with pytest.raises(WeightsError, match=r"resnet18.pth does not exist"):
        mask_rcnn(num_classes=3, encoder_weights=str(tmp_path / "resnet18.pth"), **LIGHT)
    with pytest.raises(WeightsError, match=r"coco.pth does not exist"):
        with_weights(num_classes=3, weights_path=str(tmp_path / "coco.pth"))


@pytest.mark.parametrize("from_cache", [True, False])
def test_backbone_weights_come_from_the_hub_cache_or_a_file(tmp_path, monkeypatch, from_cache):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    path = cached_weights_file(url) if from_cache else tmp_path / "my_resnet18.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), path)
    encoder_weights = "IMAGENET1K_V1" if from_cache else str(path)
    model = mask_rcnn(num_classes=3, encoder_weights=encoder_weights, **LIGHT)
    body = model.backbone.body
    assert torch.equal(body.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert isinstance(body.bn1, FrozenBatchNorm2d)  # v1 keeps pretrained statistics
    assert torch.equal(body.bn1.running_mean, reference.bn1.running_mean)


def test_weights_path_round_trip(tmp_path):
    torch.manual_seed(2)
    saved = mask_rcnn(num_classes=3, **LIGHT)
    torch.save(saved.state_dict(), tmp_path / "maskrcnn.pth")
    loaded = with_weights(num_classes=3, weights_path=str(tmp_path / "maskrcnn.pth"))
    for (name, a), b in zip(saved.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_coco_style_weights_for_another_class_count_keep_the_predictors(tmp_path):
    # torchvision's COCO file loads the same way (91 classes): everything but the
    # class-specific predictors, found here by comparing two freshly built models
    torch.manual_seed(3)
    saved = mask_rcnn(num_classes=5, **LIGHT)
    torch.save(saved.state_dict(), tmp_path / "coco_like.pth")
    with torch.device("meta"):
        five = mask_rcnn(num_classes=5, **LIGHT).state_dict()
        three = mask_rcnn(num_classes=3, **LIGHT).state_dict()
    expected = {k for k in three if three[k].shape != five[k].shape}
    assert expected and all(k.startswith("roi_heads.") and "predictor" in k for k in expected)
    path = str(tmp_path / "coco_like.pth")
    with pytest.raises(WeightsError, match=r"shape mismatches.*model.weights_strict=false"):
        with_weights(num_classes=3, weights_path=path)
    torch.manual_seed(4)
    initial = mask_rcnn(num_classes=3, **LIGHT).state_dict()
    torch.manual_seed(4)
    with pytest.warns(UserWarning, match=f"kept as initialised \\({len(expected)}\\)"):
        model = with_weights(num_classes=3, weights_path=path, weights_strict=False)
    for key, value in model.state_dict().items():
        source = initial if key in expected else saved.state_dict()
        assert torch.equal(value, source[key]), key


def test_coco_weights_with_frozen_batch_norm_load_into_a_model_from_scratch(tmp_path):
    # torchvision's COCO file has frozen batch norms (no num_batches_tracked): it loads
    # strictly into the trainable-BatchNorm model built without encoder_weights
    torch.manual_seed(5)
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    frozen = mask_rcnn(num_classes=3, encoder_weights=str(resnet), **LIGHT)
    assert isinstance(frozen.backbone.body.bn1, FrozenBatchNorm2d)
    torch.save(frozen.state_dict(), tmp_path / "frozen.pth")
    plain = with_weights(num_classes=3, weights_path=str(tmp_path / "frozen.pth"))
    assert isinstance(plain.backbone.body.bn1, torch.nn.BatchNorm2d)
    for key, value in frozen.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value), key


def test_paste_instances_by_score():
    masks = torch.tensor([[[1, 1, 1, 0]], [[0, 1, 1, 1]], [[1, 0, 0, 0]]], dtype=torch.bool)
    labels = torch.tensor([1, 2, 3])
    # the overlap (columns 1-2) goes to the higher score; the 0.2 detection is below threshold
    got = paste_instances(masks, labels, torch.tensor([0.9, 0.6, 0.2]), (1, 4), 0.5)
    assert got.tolist() == [[1, 1, 1, 2]]
    got = paste_instances(masks, labels, torch.tensor([0.6, 0.9, 0.2]), (1, 4), 0.5)
    assert got.tolist() == [[1, 2, 2, 2]]
    empty = paste_instances(masks[:0], labels[:0], torch.zeros(0), (2, 3))
    assert empty.tolist() == [[0, 0, 0], [0, 0, 0]]


def test_perfect_instances_give_miou_one():
    target = square_target(48, 56)
    semantic = (target["masks"] * target["labels"][:, None, None]).sum(0)
    pasted = paste_instances(target["masks"].bool(), target["labels"], torch.ones(2), (48, 56))
    result = scores(confusion_matrix(pasted, semantic, num_classes=3))
    assert result["mIoU"].item() == 1.0


def test_multistep_schedule_factors():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = multistep_lr(optimizer, 100, [0.5, 0.8], 0.1, warmup_steps=10, warmup_factor=0.01)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    # warm-up from 0.01 to 1 over 10 steps, x0.1 at step 50 and at step 80
    assert rates[0] == pytest.approx(0.01) and rates[5] == pytest.approx(0.505)
    assert rates[10] == rates[49] == pytest.approx(1.0)
    assert rates[50] == pytest.approx(0.1) and rates[80] == pytest.approx(0.01)


# --- the task's AP against pycocotools' COCOeval -------------------------------------------

SIZE = 16


def box_mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


# per image: ground truth (label, mask) and predictions (label, mask, score)
GROUND_TRUTH = [
    [(1, box_mask(2, 8, 2, 8)), (2, box_mask(9, 15, 8, 15)), (2, box_mask(0, 4, 10, 16))],
    [(1, box_mask(0, 6, 0, 10))],
]
# crowd regions (iscrowd=1): a detection inside one is neither a hit nor a false positive
CROWD = [[(1, box_mask(10, 16, 0, 6))], []]
PREDICTIONS = [
    [
        (1, box_mask(3, 8, 2, 8), 0.9),  # IoU 30/36
        (2, box_mask(9, 15, 8, 15), 0.8),  # exact
        (1, box_mask(10, 16, 0, 5), 0.95),  # inside the crowd region: ignored, highest score
        (2, box_mask(0, 3, 12, 16), 0.4),  # IoU 12/24
    ],
    [(1, box_mask(0, 6, 3, 10), 0.6), (2, box_mask(8, 12, 8, 12), 0.3)],  # IoU 42/60, FP
]


class FixedDetections(torch.nn.Module):
    """Returns the PREDICTIONS of the image whose first pixel holds its index."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            detections = PREDICTIONS[int(image[0, 0, 0])]
            masks = np.stack([m for _, m, _ in detections])
            outputs.append(
                {
                    "boxes": torch.from_numpy(masks_to_boxes(masks)),
                    "labels": torch.tensor([label for label, _, _ in detections]),
                    "scores": torch.tensor([score for _, _, score in detections]),
                    "masks": torch.from_numpy(masks).float()[:, None] * 0.8,  # probabilities
                }
            )
        return outputs


def objects(pairs: list[tuple[int, np.ndarray]]) -> dict[str, torch.Tensor]:
    masks = np.stack([m for _, m in pairs]) if pairs else np.zeros((0, SIZE, SIZE), np.uint8)
    return {
        "boxes": torch.from_numpy(masks_to_boxes(masks)).reshape(-1, 4),
        "labels": torch.tensor([label for label, _ in pairs], dtype=torch.int64),
        "masks": torch.from_numpy(masks),
    }


def samples() -> list[dict]:
    out = []
    for index, (pairs, crowd) in enumerate(zip(GROUND_TRUTH, CROWD, strict=True)):
        target = objects(pairs)
        semantic = (target["masks"] * target["labels"][:, None, None]).max(0).values
        for _, region in crowd:
            semantic[torch.from_numpy(region).bool()] = 255
        out.append(
            {
                "image": torch.full((3, SIZE, SIZE), float(index)),
                "target": target,
                "crowd": objects(crowd),
                "mask": semantic,
                "name": str(index),
            }
        )
    return out


def cocoeval_reference(iou_type: str, crowd: bool = True) -> tuple[np.ndarray, dict[int, float]]:
    """COCOeval stats and per-category AP for GROUND_TRUTH (+ CROWD) vs PREDICTIONS."""

    def rle(mask: np.ndarray) -> dict:
        encoded = mask_utils.encode(np.asfortranarray(mask))
        return {"size": encoded["size"], "counts": encoded["counts"].decode()}

    def xywh(mask: np.ndarray) -> list[float]:
        x0, y0, x1, y1 = masks_to_boxes(mask[None])[0].tolist()
        return [x0, y0, x1 - x0, y1 - y0]

    images, annotations, detections = [], [], []
    for image_id, predicted in enumerate(PREDICTIONS):
        images.append({"id": image_id, "height": SIZE, "width": SIZE})
        flagged = [(*pair, 0) for pair in GROUND_TRUTH[image_id]]
        flagged += [(*pair, 1) for pair in CROWD[image_id]] if crowd else []
        for label, mask, iscrowd in flagged:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "segmentation": rle(mask),
                    "area": float(mask.sum()),
                    "bbox": xywh(mask),
                    "iscrowd": iscrowd,
                }
            )
        for label, mask, score in predicted:
            geometry = {"segmentation": rle(mask)} if iou_type == "segm" else {"bbox": xywh(mask)}
            detections.append({"image_id": image_id, "category_id": label, "score": score})
            detections[-1].update(geometry)
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    ground_truth.createIndex()
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), iou_type)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # [T, R, K] at area all, 100 dets
    per_class = {k + 1: float(precision[:, :, k][precision[:, :, k] > -1].mean()) for k in (0, 1)}
    return evaluation.stats, per_class


def test_task_ap_matches_cocoeval(tmp_path):
    task = InstanceSegmentationTask(
        model=FixedDetections(),
        optimizer=torch.optim.SGD,
        scheduler=None,
        num_classes=3,
        class_names=["background", "a", "b"],
    )
    loader = DataLoader(samples(), batch_size=2, collate_fn=collate_instances)
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.validate(task, dataloaders=loader, verbose=False)
    got = task.extra_scores["val"]
    for iou_type, prefix in (("segm", "mask"), ("bbox", "box")):
        stats, per_class = cocoeval_reference(iou_type)
        assert 0 < stats[0] < 1  # a case with real misses and false positives
        # and one where the crowd region matters: without it, its detection is a false positive
        assert cocoeval_reference(iou_type, crowd=False)[0][0] < stats[0] - 0.01
        assert got[f"{prefix}_AP"] == pytest.approx(stats[0], abs=1e-6)
        assert got[f"{prefix}_AP50"] == pytest.approx(stats[1], abs=1e-6)
        assert got[f"{prefix}_AP75"] == pytest.approx(stats[2], abs=1e-6)
        assert got[f"{prefix}_AP_per_class"]["a"] == pytest.approx(per_class[1], abs=1e-6)
        assert got[f"{prefix}_AP_per_class"]["b"] == pytest.approx(per_class[2], abs=1e-6)
    # semantic view, hand-pasted: only detections scoring >= 0.5 count; crowd pixels (255) not
    confmat = task.confusion_matrices["val"]
    predicted = [
        np.maximum(box_mask(3, 8, 2, 8), 2 * box_mask(9, 15, 8, 15)) + box_mask(10, 16, 0, 5),
        box_mask(0, 6, 3, 10),
    ]
    expected = sum(
        confusion_matrix(torch.from_numpy(p), s["mask"], 3)
        for p, s in zip(predicted, samples(), strict=True)
    )
    assert torch.equal(confmat, expected)
    assert got["mask_APl"] is None  # no large objects: COCOeval -1 -> JSON null
    assert json.dumps(got, allow_nan=False)  # goes into metrics.json as is


# --- end to end -----------------------------------------------------------------------------

# Fit 16 tiny images and score those same images: a check that the whole chain (data, losses,
# schedule, detections, AP) learns, sized for ~90 s on two idle CPU cores (40 steps).
THRESHOLD_AP50 = 0.05
SHORT = [
    "experiment=shapes_maskrcnn",
    "data.prepare.num_train=16",
    "data.prepare.num_val=8",
    "data.prepare.num_test=4",
    "data.prepare.size=64",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "data.val_split=train",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "trainer.max_epochs=10",
    "trainer.check_val_every_n_epoch=10",
    "trainer.accelerator=cpu",
    "model.min_size=64",
    "model.max_size=64",
    "model.mask_head_layers=[64,64]",
    "optimizer=adamw",
    "optimizer.lr=1e-3",
    "scheduler.warmup_steps=10",
    "logger=csv",
]


@pytest.mark.slow
def test_train_maskrcnn_learns_and_reports(tmp_path):
    run_dir = run_train(tmp_path, *SHORT, timeout=1200)
    names = ["background", "circle", "square", "triangle", "star"]
    metrics = check_report(run_dir, names, "train")  # mIoU etc. == scores(confusion matrix)
    check_report(run_dir / "test", names, "test")
    assert metrics["mask_AP50"] > THRESHOLD_AP50, metrics["mask_AP50"]
    assert set(metrics["mask_AP_per_class"]) <= set(names[1:])
    assert {"box_AP", "box_AP75", "mask_APs"} <= set(metrics)
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {f"train/{name}_epoch" for name in LOSSES} <= set(header)
    assert "val/mask_AP" in header and "val/mask_AP/circle" in header
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["config"]["model"]["_target_"] == "segkit.models.maskrcnn.mask_rcnn"

    # the same commands as the semantic models: eval.py reproduces the final validation
    # report exactly, predict.py writes the semantic view, a drawing and the detections
    from ..helpers import run_script

    out = tmp_path / "eval"
    run_script("eval.py", f"ckpt_path={metrics['checkpoint']}", f"hydra.run.dir={out}")
    assert json.loads((out / "metrics.json").read_text()) == metrics
    images = tmp_path / "photos"
    images.mkdir()
    source = sorted((tmp_path / "data" / "shapes_instances").glob("*/images/*.png"))[:2]
    for image in source:
        (images / image.name).write_bytes(image.read_bytes())
    preds = tmp_path / "preds"
    run_script("predict.py", f"ckpt_path={metrics['checkpoint']}", f"input={images}",
               f"output={preds}", f"hydra.run.dir={tmp_path / 'predict_run'}")  # fmt: skip
    for image in source:
        semantic = Image.open(preds / f"{image.stem}.png")
        assert semantic.mode == "P" and semantic.size == Image.open(image).size
        assert set(np.unique(np.asarray(semantic))) <= set(range(len(names)))
        assert (preds / "overlays" / f"{image.stem}.jpg").is_file()
        detections = json.loads((preds / f"{image.stem}.json").read_text())
        for detection in detections:  # box xyxy inside the image, a class name, a score
            x0, y0, x1, y1 = detection["box"]
            assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64
            assert detection["class"] in names[1:] and 0 <= detection["score"] <= 1


def test_draw_instances_tints_masks_and_boxes_above_threshold():
    from segkit.tasks.instance import draw_instances

    masks = torch.zeros(2, 40, 40, dtype=torch.bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 32:38, 0:6] = True
    detections = {
        "boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0], [0.0, 32.0, 6.0, 38.0]]),
        "labels": torch.tensor([1, 1]),
        "scores": torch.tensor([0.9, 0.1]),
        "masks": masks,
    }
    palette = [(0, 0, 0), (200, 100, 0)]
    picture = np.asarray(
        draw_instances(np.zeros((40, 40, 3), np.uint8), detections, ["bg", "a"], palette)
    )
    assert picture[27, 27].tolist() == [100, 50, 0]  # half-tinted mask pixel
    assert picture[10, 20].tolist() == [200, 100, 0]  # box outline, top edge
    assert picture[29, 20].tolist() == [200, 100, 0]  # bottom edge: last pixel row of the box
    assert picture[35, 3].tolist() == [0, 0, 0]  # the 0.1 detection is not drawn
    assert picture[0, 0].tolist() == [0, 0, 0]
