"""What many test modules share: the project paths (:data:`PROJECT_ROOT`, :data:`SHARED_DATA`),
the small-run presets (all built from :data:`SMALL_DATA`), a tiny folder dataset,
train.py / eval.py / predict.py in a subprocess, a job config composed as Hydra hands it to
``main``, and the check of a run's report files against a numpy recomputation.

Test modules import from here (fixtures come from the ``conftest.py`` files, which pytest
finds itself), never from a conftest or from each other. The test folders mirror ``segkit/``:
``tests/<package>/`` tests ``segkit/<package>/``; the top level tests what lies outside it
(``conf/``, ``results/``, ``notebooks/``, ``benchmarks/``, the wheel, the package layout).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF = PROJECT_ROOT / "conf"
# Real datasets (CamVid, ISBI 2012, ...) beside the checkout; tests that need them are
# marked shared_data and skip where the folder is absent.
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

# Instance models follow torchvision's detection contract, not [B, C, H, W] logits; they are
# tested in tests/models/test_maskrcnn.py (model contract and an end-to-end train.py run).
INSTANCE_MODELS = {"maskrcnn"}
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem not in INSTANCE_MODELS)

RESNET18 = ["model.encoder_name=resnet18"]
# Overrides that keep a model small where its config allows it (the VGG-family configs,
# deconvnet, segnet and unet, have no smaller variant).
SMALL = {
    "deeplabv3": RESNET18,
    "deeplabv3plus": RESNET18,
    "fcn16s": RESNET18,
    "fcn32s": RESNET18,
    "fcn8s": RESNET18,
    "pspnet": [*RESNET18, "model.channels=64"],
    "smp": RESNET18,
}
HEAVY = {"deconvnet"}  # 252M parameters: seconds of CPU per step; in the slow tier

# The small run every end-to-end test starts from: 16 training shapes of 64x64 (8 val, 8
# test), batch 4, no loader workers, on the CPU. Tests add what they vary.
SMALL_DATA = [
    "data.prepare.num_train=16",
    "data.prepare.num_val=8",
    "data.prepare.num_test=8",
    "data.prepare.size=64",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.persistent_workers=false",
]
# A 0.4M-parameter Linknet on MobileNetV3-small (5 MB checkpoints).
SMALL_MODEL = ["model=smp", "model.arch=Linknet", "model.encoder_name=tu-mobilenetv3_small_050"]
# 2 epochs of the default model (U-Net ResNet-18) on the small data.
TINY = [*SMALL_DATA, "trainer.max_epochs=2", "trainer.accelerator=cpu"]
# The small model, CSV logger, no test split; one thread per process (ENV), so several
# train.py runs fit in the test budget. The training split is left at the data default
# unless a test sets it.
FAST = [
    *(o for o in SMALL_DATA if not o.startswith("data.prepare.num_train=")),
    "trainer.accelerator=cpu",
    *SMALL_MODEL,
    "logger=csv",
    "test=false",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_folder_dataset(
    root: Path, num_images: int = 4, size: tuple[int, int] = (24, 32), num_classes: int = 3
) -> Path:
    """images/, masks/, splits/{train,val}.txt with random content; returns root."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    stems = [f"img{i}" for i in range(num_images)]
    for stem in stems:
        image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        mask = rng.integers(0, num_classes, size=size, dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    half = num_images // 2
    (root / "splits" / "train.txt").write_text("\n".join(stems[:half]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(stems[half:]) + "\n")
    return root


def run_train(tmp_path: Path, *overrides: str, timeout: int = 600) -> Path:
    """Run train.py with its run dir at tmp_path/run (its output kept there as stdout.txt and
    stderr.txt); return the run dir."""
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        str(PROJECT_ROOT / "train.py"),
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"train.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    (run_dir / "stdout.txt").write_text(result.stdout)
    (run_dir / "stderr.txt").write_text(result.stderr)
    return run_dir


def train_command(tmp_path: Path, run_dir: Path, *overrides: str) -> list[str]:
    """The train.py command of a :data:`FAST` run in ``run_dir``."""
    return [
        sys.executable,
        str(PROJECT_ROOT / "train.py"),
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.run.dir={run_dir}",
        *FAST,
        *overrides,
    ]


def run(command: list[str], timeout: int = 600) -> str:
    """Run ``command`` with :data:`ENV`; its stdout + stderr, or an AssertionError."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)
    if result.returncode != 0:
        raise AssertionError(f"train.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result.stdout + result.stderr


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``<project>/<script> <args>`` (eval.py, predict.py, ...); fails with its output."""
    command = [sys.executable, str(PROJECT_ROOT / script), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def load(path: Path) -> dict:
    """A checkpoint file, on the CPU, weights only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def compose(
    tmp_path: Path, overrides: list[str], config: str = "train", run_dir: Path | None = None
) -> DictConfig:
    """``conf/<config>.yaml`` with ``overrides``, rooted at ``tmp_path``, with the hydra node
    and HydraConfig set so ``${hydra:runtime.output_dir}`` resolves (to ``run_dir``, by
    default ``tmp_path/run``)."""
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra.compose(
            config,
            overrides=[f"paths.root_dir={tmp_path}", *overrides],
            return_hydra_config=True,
        )
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(run_dir or tmp_path / "run")
    HydraConfig.instance().set_config(cfg)  # lets ${hydra:runtime.output_dir} resolve
    return cfg


def expected_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """The metric formulas of docs/evaluation.md in numpy, for a confusion matrix (rows =
    ground truth): PA, CPA, MPA, IoU, mIoU, FWIoU, Dice, mDice, Precision; a 0/0 ratio is NaN
    and left out of the means."""
    m = matrix.astype(np.float64)
    tp, gt, pred, total = np.diag(m), m.sum(1), m.sum(0), m.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        cpa = tp / gt
        iou = tp / (gt + pred - tp)
        dice = 2 * tp / (gt + pred)
        precision = tp / pred
    present = gt > 0
    return {
        "PA": np.float64(tp.sum() / total),
        "CPA": cpa,
        "MPA": np.float64(np.nanmean(cpa)),
        "IoU": iou,
        "mIoU": np.float64(np.nanmean(iou)),
        "FWIoU": np.float64(np.sum(gt[present] / total * iou[present])),
        "Dice": dice,
        "mDice": np.float64(np.nanmean(dice)),
        "Precision": precision,
    }


def check_report(folder: Path, class_names: list[str], split: str) -> dict:
    """``metrics.json``, ``confusion_matrix.npy`` and ``per_class.csv`` of ``folder`` agree
    with each other and with :func:`expected_scores` of the matrix; returns the metrics."""
    metrics = json.loads((folder / "metrics.json").read_text())
    matrix = np.load(folder / "confusion_matrix.npy")
    assert matrix.dtype == np.int64 and matrix.shape == (len(class_names),) * 2
    assert metrics["split"] == split and metrics["class_names"] == class_names
    assert metrics["num_classes"] == len(class_names)
    for key, value in expected_scores(matrix).items():
        if value.ndim == 0:
            got = metrics[key]
            assert (got is None and np.isnan(value)) or got == pytest.approx(float(value)), key
        else:
            for name, v in zip(class_names, value.tolist(), strict=True):
                got = metrics[key][name]
                assert (got is None and np.isnan(v)) or got == pytest.approx(v), (key, name)
    with open(folder / "per_class.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class"] for r in rows] == class_names
    assert [int(r["GT_pixels"]) for r in rows] == matrix.sum(1).tolist()
    for row in rows:
        iou = metrics["IoU"][row["class"]]
        assert (row["IoU"] == "" and iou is None) or float(row["IoU"]) == pytest.approx(
            iou, abs=1e-6
        )
    return metrics


def compose_job(config: str, root: Path, run_dir: Path, overrides: list[str]) -> DictConfig:
    """A job's config as Hydra hands it to main(): :func:`compose` without the hydra node."""
    cfg = compose(root, overrides, config=config, run_dir=run_dir)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


# one epoch of 2 batches on 32x32 shapes; no test split, CSV logger, no last.ckpt
SWEEP_TINY = [
    "data.prepare.num_train=8",
    "data.prepare.num_val=4",
    "data.prepare.num_test=4",
    "data.prepare.size=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "logger=csv",
    "callbacks.model_checkpoint.save_last=false",
    "test=false",
]


# loss.weights.ce=-inf makes the loss non-finite: callbacks.nonfinite_guard raises, the trial
# fails.
# With TPE seed 4 the three trials draw ce weights 1.0, -inf, 0.5 (optuna 2.10.1).
FAILING_TRIAL = ["loss=ce_dice", "loss.weights.ce=choice(1.0,0.5,-inf)"]


def run_multirun(tmp_path: Path, sweep_dir: Path, *overrides: str) -> str:
    """Run ``train.py -m`` with its sweep dir at ``sweep_dir``; return stdout + stderr."""
    command = [
        sys.executable,
        str(PROJECT_ROOT / "train.py"),
        "-m",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"train.py -m failed:\n{output[-6000:]}")
    return output


def tiny_optuna_sweep(root: Path) -> Path:
    """3-trial Optuna sweep (trial 1 fails) under ``root``, then 1 more trial resumed in the
    same dir; returns the sweep dir (``log.txt`` holds both commands' output)."""
    sweep_dir = root / "sweep"
    common = ["hparams_search=shapes_optuna", "hydra.sweeper.sampler.seed=4", *SWEEP_TINY]
    first = run_multirun(root, sweep_dir, *common, "hydra.sweeper.n_trials=3", *FAILING_TRIAL)
    (sweep_dir / "best_params_first.yaml").write_text((sweep_dir / "best_params.yaml").read_text())
    resumed = run_multirun(root, sweep_dir, *common, "hydra.sweeper.n_trials=1", *FAILING_TRIAL)
    (sweep_dir / "log.txt").write_text(first + "\n=== resumed ===\n" + resumed)
    return sweep_dir
