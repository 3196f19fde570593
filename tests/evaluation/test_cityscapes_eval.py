"""segkit's Cityscapes scores against the official evaluator (cityscapesScripts'
``evalPixelLevelSemanticLabeling``, run in-process on segkit's ``format=cityscapes``
predictions): per-class IoU, and the instance-level iIoU per class and per category."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from segkit.data.cityscapes import CLASS_NAMES, TRAIN_LABEL_IDS
from segkit.deploy.predictor import predict
from segkit.engine.evaluate import evaluate_checkpoint
from segkit.evaluation.metrics import CITYSCAPES_AVERAGE_INSTANCE_SIZE
from segkit.tasks import build_task

from ..helpers import compose_job

CITY, SIZE = "aachen", (48, 64)
STEP = 12  # red value per trainId in the painted images


class PaintedLabels(nn.Module):
    """Predicts the trainId painted into the red channel (``12 * trainId``; the checkpoint's
    mean 0 and std 1 leave ``x = R / 255``), so the test chooses every prediction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        painted = x[:, :1] * 255 / STEP  # [B, 1, H, W]
        classes = torch.arange(len(CLASS_NAMES), dtype=x.dtype).view(1, -1, 1, 1)
        return -((painted - classes) ** 2)  # [B, 19, H, W]


def write_tree(root: Path) -> None:
    """Two val frames: labelIds with void, road, building, sky, vegetation; instanceIds with
    people (one a crowd without instance number), a rider, cars, a bus, a bicycle and an
    (ignored) caravan. The painted prediction is the ground truth with a fifth of the pixels
    and part of every object changed, so every score is a fraction."""
    rng = np.random.default_rng(0)
    train_of = {label: train for train, label in enumerate(TRAIN_LABEL_IDS)}
    objects = [  # (labelId, instance number or None for a crowd, y0, y1, x0, x1)
        [(24, 0, 5, 25, 3, 9), (24, 1, 20, 30, 40, 43), (24, None, 30, 40, 2, 12),
         (26, 0, 25, 45, 15, 40), (25, 0, 8, 18, 50, 56), (29, 0, 2, 10, 20, 30)],
        [(26, 0, 10, 30, 5, 25), (26, 1, 30, 34, 50, 60), (28, 0, 5, 40, 30, 48),
         (33, 0, 35, 45, 5, 12), (24, 0, 40, 47, 55, 60)],
    ]  # fmt: skip
    for frame, frame_objects in enumerate(objects):
        stem = f"{CITY}_000000_{frame:06d}"
        labels = rng.choice([7, 11, 23, 21, 4, 1], size=SIZE).astype(np.uint8)
        ids = labels.astype(np.int32)  # class-only ids where there is no instance
        for label, number, y0, y1, x0, x1 in frame_objects:
            labels[y0:y1, x0:x1] = label
            ids[y0:y1, x0:x1] = label if number is None else label * 1000 + number
        # prediction: the ground truth, a fifth of the pixels random, the objects' left
        # columns predicted as the next class (person -> rider, car -> truck, ...); never
        # 'train' (16), so one instance class is neither present nor predicted
        truth = np.vectorize(lambda v: train_of.get(int(v), 255))(labels)
        noise = rng.choice([c for c in range(19) if c != 16], size=SIZE)
        prediction = np.where((truth == 255) | (rng.random(SIZE) < 0.2), noise, truth)
        for label, _, y0, y1, x0, _ in frame_objects:
            shifted = train_of.get(label, 13) + 1
            prediction[y0:y1, x0 : x0 + 2] = 17 if shifted == 16 else shifted
        image = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        image[..., 0] = STEP * prediction
        for folder, suffix, array in (
            ("leftImg8bit", "leftImg8bit", image),
            ("gtFine", "gtFine_labelIds", labels),
            ("gtFine", "gtFine_instanceIds", ids.astype(np.uint16)),  # 16-bit, as official
        ):
            path = root / folder / "val" / CITY / f"{stem}_{suffix}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)


def painted_checkpoint(tmp_path: Path, root: Path) -> Path:
    """A train.py-style checkpoint of :class:`PaintedLabels` on ``data=cityscapes``."""
    overrides = [
        "data=cityscapes",
        f"data.dataset.root={root}",
        "data.mean=[0,0,0]",
        "data.std=[1,1,1]",
        "data.num_workers=0",
        "data.persistent_workers=false",
    ]
    cfg = compose_job("train", tmp_path, tmp_path / "train_run", overrides)
    cfg.model = OmegaConf.create({"_target_": f"{__name__}.PaintedLabels"})
    config = OmegaConf.to_container(cfg, resolve=True)
    path = tmp_path / "painted.ckpt"
    torch.save({"state_dict": build_task(cfg).state_dict(), "config": config, "epoch": 0}, path)
    return path


def official_scores(root: Path, results: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """cityscapesScripts' evaluation of ``results`` against ``root``'s val labels."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    # numpy 2.4 removed in1d, which the script calls; isin is its documented replacement
    monkeypatch.setattr(
        np, "in1d", lambda a, b, invert=False: np.isin(a, b, invert=invert).ravel(), raising=False
    )
    args = official.args
    for key, value in {
        "evalInstLevelScore": True,
        "JSONOutput": False,
        "quiet": True,
        "predictionPath": str(results),
        "predictionWalk": None,
    }.items():
        monkeypatch.setattr(args, key, value)
    ground_truth = sorted(str(p) for p in (root / "gtFine" / "val").glob("*/*_labelIds.png"))
    predictions = [official.getPrediction(args, gt) for gt in ground_truth]
    return official.evaluateImgLists(predictions, ground_truth, args)


def same(segkit_value: float | None, official_value: float) -> bool:
    if math.isnan(official_value):
        return segkit_value is None or math.isnan(segkit_value)
    return segkit_value == pytest.approx(official_value, rel=1e-9, abs=1e-12)


def test_iou_and_iiou_equal_the_official_cityscapes_evaluation(tmp_path, monkeypatch):
    root = tmp_path / "cityscapes"
    write_tree(root)
    ckpt = painted_checkpoint(tmp_path, root)
    results = tmp_path / "results"
    options = ["format=cityscapes", f"input={root / 'leftImg8bit' / 'val'}", f"output={results}"]
    predict(compose_job("predict", tmp_path, tmp_path / "predict", [f"ckpt_path={ckpt}", *options]))
    written = np.asarray(Image.open(results / f"{CITY}_000000_000000_leftImg8bit.png"))
    assert written.dtype == np.uint8 and set(np.unique(written)) <= set(TRAIN_LABEL_IDS)

    out = tmp_path / "eval"
    evaluate_checkpoint(compose_job("eval", tmp_path, out, [f"ckpt_path={ckpt}"]))
    metrics = json.loads((out / "metrics.json").read_text())
    official = official_scores(root, results, monkeypatch)

    for name in CLASS_NAMES:
        assert same(metrics["IoU"][name], official["classScores"][name]), name
    assert same(metrics["mIoU"], official["averageScoreClasses"])
    assert set(metrics["iIoU"]) == set(CITYSCAPES_AVERAGE_INSTANCE_SIZE)
    for name, value in metrics["iIoU"].items():
        assert same(value, official["classInstScores"][name]), name
    for category in ("human", "vehicle"):
        got, expected = metrics["category_iIoU"][category], official["categoryInstScores"][category]
        assert same(got, expected), category
    assert same(metrics["iIoU_class"], official["averageScoreInstClasses"])
    assert same(metrics["iIoU_category"], official["averageScoreInstCategories"])
    # the cases the tree is built to hold: a weighted score below and one differing from IoU,
    # a class predicted but without instances (0), one neither present nor predicted (NaN)
    assert (
        0 < metrics["iIoU"]["person"] < 1 and metrics["iIoU"]["person"] != metrics["IoU"]["person"]
    )
    assert metrics["iIoU"]["truck"] == 0 and metrics["iIoU"]["train"] is None


def test_average_instance_sizes_are_the_official_defaults():
    from cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling import args

    for name, size in CITYSCAPES_AVERAGE_INSTANCE_SIZE.items():
        assert size == args.avgClassSize[name], name
