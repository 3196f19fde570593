"""eval.py reproduces the training run's validation scores; predict.py writes palette PNGs
holding the model's argmax, and overlays."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import DictConfig
from PIL import Image

from segkit.engine.checkpoints import load_checkpoint, task_from_checkpoint

from ..helpers import compose_job, run_script

pytestmark = pytest.mark.slow


def test_eval_reproduces_the_final_validation_metrics(trained_run, tmp_path):
    trained_metrics = json.loads((trained_run / "metrics.json").read_text())
    ckpt = trained_metrics["checkpoint"]
    out = tmp_path / "eval"
    result = run_script("eval.py", f"ckpt_path={ckpt}", f"hydra.run.dir={out}")
    np.testing.assert_array_equal(
        np.load(out / "confusion_matrix.npy"), np.load(trained_run / "confusion_matrix.npy")
    )
    assert json.loads((out / "metrics.json").read_text()) == trained_metrics
    assert (out / "per_class.csv").read_text() == (trained_run / "per_class.csv").read_text()
    assert "val scores (%)" in result.stdout and "circle" in result.stdout


def test_predict_writes_the_argmax_as_palette_png_and_overlays(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    data_root = Path(load_checkpoint(ckpt)["config"]["data"]["dataset"]["root"])
    images = sorted((data_root / "images").glob("*.png"))[:3]
    source = tmp_path / "photos"
    source.mkdir()
    for image in images:
        (source / image.name).write_bytes(image.read_bytes())
    out = tmp_path / "preds"
    run_script("predict.py", f"ckpt_path={ckpt}", f"input={source}", f"output={out}",
               f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    stored, task = task_from_checkpoint(load_checkpoint(ckpt))
    mean = torch.tensor(stored.data.mean).view(3, 1, 1)
    std = torch.tensor(stored.data.std).view(3, 1, 1)
    for image in images:
        pixels = np.array(Image.open(image).convert("RGB"))
        x = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std
        with torch.no_grad():
            expected = task.model(x[None]).argmax(1)[0].numpy()
        written = Image.open(out / image.name)
        assert written.mode == "P"
        assert written.getpalette()[:15] == [v for c in stored.data.palette for v in c]
        np.testing.assert_array_equal(np.asarray(written), expected)
        overlay = Image.open(out / "overlays" / f"{image.stem}.jpg")
        assert overlay.size == (pixels.shape[1], pixels.shape[0])
    assert sorted(p.name for p in source.iterdir()) == [p.name for p in images]  # untouched


def test_predict_refuses_to_write_into_the_input_folder(trained_run, tmp_path):
    source = tmp_path / "photos"
    source.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(source / "a.png")
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    with pytest.raises(AssertionError, match="lies inside the input folder"):
        run_script("predict.py", f"ckpt_path={ckpt}", f"input={source}",
                   f"output={source / 'preds'}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip


def test_publish_writes_a_result_folder_that_eval_scores_like_the_run(trained_run, tmp_path):
    from segkit.deploy.publish import publish

    out = tmp_path / "result"
    threads = torch.get_num_threads()
    publishing = os.cpu_count() + 3  # more than the training process can have had
    torch.set_num_threads(publishing)
    try:
        info = publish(trained_run, out)
    finally:
        torch.set_num_threads(threads)
    trained_metrics = json.loads((trained_run / "metrics.json").read_text())
    # the machine as the training process recorded it in its checkpoint, not the publisher's
    best = load_checkpoint(trained_run / "checkpoints" / Path(trained_metrics["checkpoint"]).name)
    assert info["machine"] == best["machine"]
    assert not info["machine"].endswith(f", {publishing} threads")
    assert info["published_from"] == "checkpoints/" + Path(trained_metrics["checkpoint"]).name
    assert info["epochs_trained"] == 2 and info["val_mIoU"] == trained_metrics["mIoU"]
    for name in ("config.yaml", "curve.png", "samples.png", "per_class.csv"):
        assert (out / name).stat().st_size > 0, name
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert set(history) == {"epoch", "train_loss", "val_loss", "val_mIoU", "epoch_minutes"}
    # each epoch's measured minutes: positive, together within the run's wall time
    assert (history["epoch_minutes"] > 0).all()
    assert history["epoch_minutes"].sum() * 60 <= info["wall_seconds"] + 1
    # the published checkpoint is the best epoch by val mIoU, re-scored into metrics.json
    assert history["val_mIoU"].max() == pytest.approx(trained_metrics["mIoU"], abs=1e-6)
    # the weights-only file scores val exactly as the training run did
    scored = tmp_path / "eval"
    run_script("eval.py", f"ckpt_path={out / 'model.pt'}", f"hydra.run.dir={scored}")
    np.testing.assert_array_equal(
        np.load(scored / "confusion_matrix.npy"), np.load(trained_run / "confusion_matrix.npy")
    )
    # each sample's matrix: a numpy count of the model's argmax on a frame read here
    record = json.loads((out / "samples.json").read_text())
    assert record["split"] == "val" and record["indices"] == [0, 2, 5, 7]  # 8 val images
    stored, task = task_from_checkpoint(load_checkpoint(out / "model.pt"))
    root = Path(stored.data.dataset.root)
    mean = torch.tensor(stored.data.mean).view(3, 1, 1)
    std = torch.tensor(stored.data.std).view(3, 1, 1)
    for name, matrix in zip(record["names"], record["confusion_matrices"], strict=True):
        pixels = np.array(Image.open(root / "images" / f"{name}.png").convert("RGB"))
        mask = np.array(Image.open(root / "masks" / f"{name}.png")).astype(np.int64)
        x = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std
        with torch.no_grad():
            labels = task.model(x[None]).argmax(1)[0].numpy()
        expected = np.zeros((5, 5), dtype=np.int64)
        valid = mask < 5
        np.add.at(expected, (mask[valid], labels[valid]), 1)
        np.testing.assert_array_equal(np.asarray(matrix), expected, err_msg=name)


def test_publish_refuses_a_run_whose_reported_checkpoint_is_gone(trained_run, tmp_path):
    from segkit.deploy.publish import best_checkpoint_of

    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert best_checkpoint_of(trained_run, metrics).is_file()
    name = Path(metrics["checkpoint"]).name
    moved = {**metrics, "checkpoint": f"/elsewhere/checkpoints/{name}"}  # run folder moved
    assert best_checkpoint_of(trained_run, moved) == trained_run / "checkpoints" / name
    with pytest.raises(FileNotFoundError, match="neither there nor in"):
        best_checkpoint_of(trained_run, {**metrics, "checkpoint": "/elsewhere/best_epoch999.ckpt"})
    with pytest.raises(FileNotFoundError, match="names no checkpoint"):
        best_checkpoint_of(trained_run, {**metrics, "checkpoint": ""})


def test_weights_only_keeps_the_ema_weights_as_the_model():
    from segkit.deploy.publish import weights_only

    checkpoint = {
        "config": {"task": {"ema_decay": 0.999}},
        "state_dict": {
            "model.conv.weight": torch.zeros(2),
            "ema_model.module.conv.weight": torch.ones(2),
            "ema_model.n_averaged": torch.tensor(7),
            "loss.weight": torch.full((3,), 2.0),
        },
        "epoch": 4,
        "global_step": 40,
        "optimizer_states": [{}],
    }
    slim = weights_only(checkpoint)
    assert set(slim) == {"config", "state_dict", "epoch", "global_step"}
    assert set(slim["state_dict"]) == {"model.conv.weight", "loss.weight"}
    assert slim["state_dict"]["model.conv.weight"].tolist() == [1.0, 1.0]  # the EMA copy
    assert slim["config"]["task"]["ema_decay"] is None and slim["epoch"] == 4


def listing(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_predict_never_replaces_a_file_and_never_writes_into_the_datasets_masks(
    trained_run, folder_dataset, tmp_path, monkeypatch
):
    from segkit.deploy import predictor
    from segkit.deploy.predictor import predict
    from segkit.outputs import OutputExistsError

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    dataset = listing(folder_dataset)

    def job(output: Path, *overrides: str) -> DictConfig:
        options = [f"ckpt_path={ckpt}", f"input={folder_dataset / 'images'}", f"output={output}"]
        return compose_job("predict", tmp_path, tmp_path / "run", [*options, *overrides])

    # the command: the masks beside images/ are the dataset's ground truth
    for overwrite in ("false", "true"):
        with pytest.raises(OutputExistsError, match="not even with overwrite=true"):
            predict(job(folder_dataset / "masks", f"overwrite={overwrite}"))
    copy = tmp_path / "labels"  # the same masks elsewhere: named like the predictions
    copy.mkdir()
    for mask in (folder_dataset / "masks").iterdir():
        (copy / mask.name).write_bytes(mask.read_bytes())
    with pytest.raises(OutputExistsError, match="img0.png, named like the prediction.*not written"):
        predict(job(copy, "overwrite=true"))
    assert listing(folder_dataset) == dataset and listing(copy) == listing(folder_dataset / "masks")

    out = tmp_path / "preds"
    predict(job(out))
    written = listing(out)
    assert sorted(written) == [f"{s}img{i}.{e}" for s, e in (("", "png"), ("overlays/", "jpg"))
                               for i in range(4)]  # fmt: skip
    (out / "notes.txt").write_text("mine")
    with monkeypatch.context() as patch:  # a second run stops before the model is loaded
        patch.setattr(predictor, "load_trained", lambda *a, **k: pytest.fail("loaded"))
        with pytest.raises(OutputExistsError, match=f"{out / 'img0.png'} exists already.*"
                                                    "overwrite=true"):  # fmt: skip
            predict(job(out))
    assert listing(out) == {**written, "notes.txt": b"mine"}
    (out / "img0.png").write_bytes((out / "img1.png").read_bytes())  # an earlier prediction
    predict(job(out, "overwrite=true"))  # replaces the predictions, nothing else
    assert listing(out) == {**written, "notes.txt": b"mine"}
    assert listing(folder_dataset) == dataset


def test_publish_never_replaces_a_file_unless_overwrite(trained_run, tmp_path, capsys):
    from segkit.cli.publish import main

    run = listing(trained_run)
    out = tmp_path / "result"
    out.mkdir()
    (out / "metrics.json").write_text("an earlier result")
    (out / "notes.txt").write_text("mine")
    assert main([str(trained_run), str(out)]) == 1
    message = capsys.readouterr().err
    assert f"{out / 'metrics.json'} exists already" in message and "--overwrite" in message
    assert listing(out) == {"metrics.json": b"an earlier result", "notes.txt": b"mine"}
    with pytest.raises(ValueError, match="is the run folder itself"):
        main([str(trained_run), str(trained_run), "--overwrite"])

    assert main([str(trained_run), str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert listing(out)["metrics.json"] == run["metrics.json"] and (out / "model.pt").is_file()
    assert listing(out)["notes.txt"] == b"mine" and listing(trained_run) == run
