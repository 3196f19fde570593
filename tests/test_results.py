"""The shipped CamVid results (``results/camvid/<recipe>/``, written by ``segkit.deploy.publish``).

Each result folder is checked for its files and size, its report against a numpy
recomputation of the scores from its confusion matrix, and (with ``../shared`` CamVid
present) its weights against the per-image confusion matrices stored when it was
published: once loaded the way eval.py loads a checkpoint and run on frames this test reads
and normalises itself, once through the documented eval.py command. Nothing here trains.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.engine.checkpoints import load_checkpoint, task_from_checkpoint
from segkit.engine.evaluate import keep_trained_input, say_kept_input

from .helpers import PROJECT_ROOT, SHARED_DATA

RESULTS = PROJECT_ROOT / "results" / "camvid"
MAX_WEIGHTS_BYTES = 30e6  # a row's model.pt is shipped only below this size
# the architecture table's rows (RESULTS.md), its one-change PSPNet run, issue 30's recipe
# attempts and its one-change FPN runs under the protocol, as "<group>/<row>"
GROUPS = (
    "camvid_bench",
    "camvid_bench_pspnet_variants",
    "camvid_fpn_lite0_fast",
    "camvid_bench_fpn_variants",
    "camvid_fpn_lite2",
)
ROWS = tuple(
    f"{folder}/{path.name}"
    for folder in GROUPS
    for path in sorted((RESULTS / folder).iterdir())
    if path.is_dir()
)
# the recipes RESULTS.md reports with weights
SHIPPED = ("camvid_fpn_lite0", "camvid_fpn_scratch", "camvid_segnet_basic") + tuple(
    row for row in ROWS if (RESULTS / row / "model.pt").exists()
)
# rows published without their weights, which would exceed MAX_WEIGHTS_BYTES
WITHOUT_WEIGHTS = tuple(row for row in ROWS if not (RESULTS / row / "model.pt").exists())
CAMVID = SHARED_DATA / "camvid"
FILES = (
    "model.pt",
    "config.yaml",
    "metrics.json",
    "per_class.csv",
    "confusion_matrix.npy",
    "curve.png",
    "samples.png",
    "samples.json",
    "run.json",
)
VOID = 11  # CamVid's unlabelled value
# Pixels whose predicted class may differ from the published one: another CPU's kernels
# round differently and flip the argmax where two classes tie to ~1e-6.
CHANGED_PIXELS = 5e-4

needs_camvid = pytest.mark.skipif(
    not (CAMVID / "val.txt").is_file(),
    reason=f"shared CamVid data not found at {CAMVID} (see ../shared/data/camvid/README.md)",
)


def changed_pixels(matrix: np.ndarray, expected: np.ndarray) -> int:
    """Pixels that moved between cells: each one leaves one cell and enters another."""
    return int(np.abs(matrix - expected).sum()) // 2


def confusion(labels: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    valid = labels < num_classes
    np.add.at(matrix, (labels[valid], prediction[valid]), 1)
    return matrix


@pytest.mark.parametrize("recipe", SHIPPED)
def test_result_folder_is_complete_and_small(recipe):
    folder = RESULTS / recipe
    missing = [name for name in FILES if not (folder / name).is_file()]
    assert not missing, f"{folder} lacks {missing}; python -m segkit.cli.publish <run dir> {folder}"
    assert (folder / "model.pt").stat().st_size < MAX_WEIGHTS_BYTES
    checkpoint = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    assert {"config", "state_dict", "epoch"} <= set(checkpoint)
    assert not any(key.startswith("ema_model.") for key in checkpoint["state_dict"])
    assert checkpoint["config"]["task"]["ema_decay"] is None


@pytest.mark.parametrize("recipe", WITHOUT_WEIGHTS)
def test_a_row_without_weights_has_the_rest_and_weights_too_large_to_ship(recipe):
    folder = RESULTS / recipe
    missing = [name for name in FILES if name != "model.pt" and not (folder / name).is_file()]
    assert not missing, f"{folder} lacks {missing}; python -m segkit.cli.publish <run dir> {folder}"
    assert json.loads((folder / "run.json").read_text())["model_pt_bytes"] >= MAX_WEIGHTS_BYTES


@pytest.mark.parametrize("recipe", SHIPPED + WITHOUT_WEIGHTS)
def test_reported_scores_follow_from_the_confusion_matrix(recipe):
    folder = RESULTS / recipe
    metrics = json.loads((folder / "metrics.json").read_text())
    matrix = np.load(folder / "confusion_matrix.npy").astype(np.float64)
    tp, gt, pred = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    iou = tp / (gt + pred - tp)
    assert metrics["split"] == "val" and matrix.sum() > 101 * 300 * 400  # every val pixel
    assert metrics["PA"] == pytest.approx(tp.sum() / matrix.sum(), abs=1e-6)
    assert metrics["MPA"] == pytest.approx(np.mean(tp / gt), abs=1e-6)
    assert metrics["mIoU"] == pytest.approx(np.mean(iou), abs=1e-6)
    assert metrics["FWIoU"] == pytest.approx(np.sum(gt / matrix.sum() * iou), abs=1e-6)
    run = json.loads((folder / "run.json").read_text())
    assert run["val_mIoU"] == metrics["mIoU"]


def read_frame(name: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(CAMVID / "val" / f"{name}.png").convert("RGB"))
    mask = np.asarray(Image.open(CAMVID / "valannot" / f"{name}.png")).astype(np.int64)
    return image, mask


@needs_camvid
@pytest.mark.parametrize("recipe", SHIPPED)
def test_published_weights_reproduce_the_sample_scores(recipe):
    folder = RESULTS / recipe
    record = json.loads((folder / "samples.json").read_text())
    cfg, task = task_from_checkpoint(load_checkpoint(folder / "model.pt"))
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1) * 255
    for name, expected in zip(record["names"], record["confusion_matrices"], strict=True):
        image, mask = read_frame(name)
        x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() - mean) / std
        with torch.no_grad():
            labels = task.class_scores(x).argmax(1)[0].numpy()
        matrix = confusion(mask, labels, task.num_classes)
        assert matrix.sum() == np.sum(mask != VOID)
        assert changed_pixels(matrix, np.asarray(expected)) <= CHANGED_PIXELS * mask.size, name


@needs_camvid
@pytest.mark.parametrize("recipe", SHIPPED)
def test_documented_eval_command_scores_the_published_weights(recipe, tmp_path):
    """``python eval.py ckpt_path=results/camvid/<recipe>/model.pt data=camvid
    data.dataset.root=<root> split=test`` on a root whose test split is the sample frames."""
    folder = RESULTS / recipe
    record = json.loads((folder / "samples.json").read_text())
    root = tmp_path / "camvid"
    (root / "test").mkdir(parents=True)
    (root / "testannot").mkdir()
    for name in record["names"]:
        (root / "test" / f"{name}.png").symlink_to(CAMVID / "val" / f"{name}.png")
        (root / "testannot" / f"{name}.png").symlink_to(CAMVID / "valannot" / f"{name}.png")
    lines = [f"test/{name}.png testannot/{name}.png" for name in record["names"]]
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    command = [
        sys.executable,
        str(PROJECT_ROOT / "eval.py"),
        f"ckpt_path={folder / 'model.pt'}",
        "data=camvid",
        f"data.dataset.root={root}",
        "split=test",
        f"data.cache_dir={tmp_path / 'cache'}",  # not the checkout's data/cache
        "data.num_workers=0",
        f"hydra.run.dir={out}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    matrix = np.load(out / "confusion_matrix.npy")
    expected = np.sum(record["confusion_matrices"], axis=0)
    total = sum(read_frame(name)[1].size for name in record["names"])
    assert changed_pixels(matrix, expected) <= CHANGED_PIXELS * total
    assert json.loads((out / "metrics.json").read_text())["split"] == "test"


def test_eval_keeps_the_trained_normalisation_over_a_data_group(capsys):
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    given = {"data": {**imagenet, "batch_size": 1, "dataset": {**imagenet, "root": "/new"}}}
    lite = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    stored = {"data": {**lite, "dataset": {**lite, "root": "/old"}}}
    kept, brought = keep_trained_input(given)
    # merged over the stored config, so the trained 0.5 stays
    assert kept == {"data": {"batch_size": 1, "dataset": {"root": "/new"}}}
    assert brought == {"mean": imagenet["mean"], "std": imagenet["std"]} | {
        f"dataset.{key}": value for key, value in imagenet.items()
    }
    say_kept_input(brought, stored)
    said = capsys.readouterr().out.splitlines()
    assert said[0] == (
        "data.mean: kept the checkpoint's [0.5, 0.5, 0.5], not [0.485, 0.456, 0.406] from the "
        "data group (the model was trained on it); set data.mean= to override."
    )
    assert [line.split(":")[0] for line in said] == [f"data.{key}" for key in brought]
    say_kept_input({"mean": lite["mean"]}, stored)  # the data group agrees: nothing to say
    assert capsys.readouterr().out == ""


ISBI = PROJECT_ROOT / "results" / "isbi2012" / "isbi2012_unet"


@pytest.mark.skipif(not (ISBI / "metrics.json").is_file(), reason=f"no result at {ISBI} yet")
def test_isbi2012_scores_follow_from_the_confusion_matrix():
    """RESULTS.md's ISBI 2012 row: every pixel of the 4 val slices is counted (rows = ground
    truth: membrane, cell), and PA, the IoUs and the challenge's pixel error (the fraction of
    pixels labelled wrongly) follow from the matrix by hand."""
    metrics = json.loads((ISBI / "metrics.json").read_text())
    matrix = np.load(ISBI / "confusion_matrix.npy").astype(np.float64)
    assert matrix.shape == (2, 2) and matrix.sum() == 4 * 512 * 512
    wrong = matrix[0, 1] + matrix[1, 0]
    assert metrics["pixel_error"] == pytest.approx(wrong / matrix.sum(), abs=1e-6)
    assert metrics["PA"] == pytest.approx(1 - wrong / matrix.sum(), abs=1e-6)
    membrane_iou = matrix[0, 0] / (matrix[0].sum() + matrix[:, 0].sum() - matrix[0, 0])
    assert metrics["IoU"]["membrane"] == pytest.approx(membrane_iou, abs=1e-6)
    assert 0 <= metrics["rand_error"] <= 1
    run = json.loads((ISBI / "run.json").read_text())
    assert run["val_mIoU"] == metrics["mIoU"]
