"""Ensembles (segkit/engine/ensemble.py, ``ckpt_path=[a,b]`` in eval.py and predict.py): an ensemble
of one scores like its model, the ensemble's probabilities are the weighted mean of the
members' softmax (numpy reference), and members with other classes are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from segkit.config import ConfigError
from segkit.deploy.predictor import predict
from segkit.engine.checkpoints import load_checkpoint, task_from_checkpoint
from segkit.engine.ensemble import Ensemble
from segkit.engine.evaluate import evaluate_checkpoint
from segkit.tasks import build_task

from ..helpers import SMALL_DATA, SMALL_MODEL, compose_job

SIZE = (32, 48)


def untrained_checkpoint(tmp_path: Path, seed: int, *overrides: str) -> Path:
    """A train.py-style checkpoint (weights + resolved config) of the small model, initialised
    with ``seed``, on the small shapes data."""
    cfg = compose_job(
        "train", tmp_path, tmp_path / "train_run", [*SMALL_MODEL, *SMALL_DATA, *overrides]
    )
    torch.manual_seed(seed)
    task = build_task(cfg)
    path = tmp_path / f"model{seed}.ckpt"
    config = OmegaConf.to_container(cfg, resolve=True)
    torch.save({"state_dict": task.state_dict(), "config": config, "epoch": seed}, path)
    return path


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis 1 (numpy reference)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def model_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    """The logits of the model stored in ``path`` (its plain forward, no ensemble code)."""
    _, task = task_from_checkpoint(load_checkpoint(path))
    with torch.no_grad():
        return task.model(x).double().numpy()


def test_an_ensemble_of_one_scores_like_the_single_model(tmp_path):
    ckpt = untrained_checkpoint(tmp_path, 0)
    for name, value in (("single", str(ckpt)), ("ensemble", f"[{ckpt}]")):
        evaluate_checkpoint(compose_job("eval", tmp_path, tmp_path / name, [f"ckpt_path={value}"]))
    single, ensemble = (
        np.load(tmp_path / n / "confusion_matrix.npy") for n in ("single", "ensemble")
    )
    assert single.sum() == 8 * 64 * 64  # the 8 val images, every pixel
    np.testing.assert_array_equal(ensemble, single)
    record = json.loads((tmp_path / "ensemble" / "metrics.json").read_text())
    assert record["checkpoint"] == [str(ckpt)] and record["ensemble_weights"] == [1.0]

    x = torch.randn(2, 3, *SIZE)
    _, task = task_from_checkpoint(load_checkpoint(ckpt))
    with torch.no_grad():
        scores = Ensemble([task])(x).double().numpy()
    np.testing.assert_allclose(np.exp(scores), softmax(model_logits(ckpt, x)), atol=1e-6)


def test_the_ensemble_is_the_weighted_mean_of_the_members_softmax(tmp_path):
    paths = [untrained_checkpoint(tmp_path, seed) for seed in (0, 1)]
    rng = np.random.default_rng(0)
    source, out = tmp_path / "photos", tmp_path / "preds"
    source.mkdir()
    pixels = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(source / "photo.png")
    overrides = [f"ckpt_path=[{paths[0]},{paths[1]}]", "ckpt_weights=[1,3]"]
    predict(
        compose_job(
            "predict", tmp_path, tmp_path / "run", [*overrides, f"input={source}", f"output={out}"]
        )
    )

    stored = load_checkpoint(paths[0])["config"]["data"]
    mean, std = (torch.tensor(stored[k]).view(3, 1, 1) for k in ("mean", "std"))
    x = ((torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std)[None]
    first, second = (softmax(model_logits(p, x)) for p in paths)
    expected = 0.25 * first + 0.75 * second  # weights [1, 3] normalised
    members = [task_from_checkpoint(load_checkpoint(p))[1] for p in paths]
    with torch.no_grad():
        scores = Ensemble(members, [1, 3])(x).double().numpy()
    np.testing.assert_allclose(np.exp(scores), expected, atol=1e-6)
    written = np.asarray(Image.open(out / "photo.png"))
    np.testing.assert_array_equal(written, expected.argmax(1)[0])
    # the two members disagree somewhere, so the weighting decides pixels
    assert (first.argmax(1) != second.argmax(1)).any()


def test_members_with_other_classes_or_wrong_weights_are_refused(tmp_path):
    five = untrained_checkpoint(tmp_path, 0)
    three = untrained_checkpoint(
        tmp_path, 1, "data.num_classes=3", "data.class_names=[background,circle,square]"
    )
    source = tmp_path / "photos"  # a real input: predict.py checks it before loading
    source.mkdir()
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(source / "photo.png")
    common = [f"input={source}", f"output={tmp_path / 'out'}"]
    cfg = compose_job(
        "predict", tmp_path, tmp_path / "run", [f"ckpt_path=[{five},{three}]", *common]
    )
    with pytest.raises(ConfigError, match=r"data.num_classes: .*model0.ckpt has 5, .*has 3"):
        predict(cfg)
    cfg = compose_job(
        "predict",
        tmp_path,
        tmp_path / "run",
        [f"ckpt_path=[{five},{five}]", "ckpt_weights=[1]", *common],
    )
    with pytest.raises(ConfigError, match=r"ckpt_weights=\[1\]: null or one number > 0 per"):
        predict(cfg)
