"""Experiment tracking (docs/experiments.md, "Tracking"): logger=many, read back from each tracker.

One tiny in-process run with ``logger=many`` (CSV + TensorBoard + W&B offline + MLflow in
SQLite, every file under tmp) is shared by the read-back tests: W&B's offline ``.wandb``
transaction log (parsed here with wandb's own protobuf messages), MLflow through its client,
TensorBoard through its event reader. Expected values come from the run's
``confusion_matrix.npy`` (numpy, :func:`helpers.expected_scores`), the hand-counted step
numbers and the data's palette, never from the logging code.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.loggers.logger import DummyLogger
from PIL import Image

from segkit.data.shapes import CLASS_NAMES, PALETTE
from segkit.engine.callbacks.figures import ValidationFigures
from segkit.engine.loggers import MissingTrackerError, flat_config, mlflow_logger, wandb_logger
from segkit.engine.train import train
from segkit.evaluation.figures import confusion_heatmap, sample_panels
from tests.helpers import FAST, compose_job, expected_scores

# 16 training images in batches of 4: 4 optimiser steps per epoch. Lightning logs an
# epoch-end validation at the index of the epoch's last step (3, 7); every_n_epochs=2 logs
# the pictures after epoch 2 only, at step 7; the best checkpoint's scoring after fitting
# logs its scalars at step 8.
NUM_TRAIN, BATCH, EPOCHS, NUM_IMAGES = 16, 4, 2, 3
STEPS = NUM_TRAIN // BATCH
VAL_STEPS = [STEPS - 1, 2 * STEPS - 1]
FINAL_STEP = EPOCHS * STEPS
# the heatmap's colour scale, written out: white-blue (247,251,255) at 0 to (8,48,107) at 1
LOW, HIGH, GREY = np.array([247, 251, 255]), np.array([8, 48, 107]), (200, 200, 200)


def blues(value: float) -> tuple[int, ...]:
    return tuple(int(v) for v in np.round(LOW + value * (HIGH - LOW)))


def colour_count(picture: np.ndarray, colour: tuple[int, ...]) -> int:
    return int(np.all(picture[..., :3] == np.asarray(colour), axis=-1).sum())


def contains(picture: np.ndarray, tile: np.ndarray) -> bool:
    """Whether ``tile [h, w, 3]`` appears pixel for pixel somewhere in ``picture``."""
    windows = np.lib.stride_tricks.sliding_window_view(picture[..., :3], tile.shape)
    return bool(np.all(windows == tile, axis=(-3, -2, -1)).any())


def palette_colours(mask: np.ndarray) -> np.ndarray:
    """The mask in the shapes palette, void (255) black: numpy, independent of segkit."""
    out = np.zeros((*mask.shape, 3), np.uint8)
    for index, colour in enumerate(PALETTE):
        out[mask == index] = colour
    return out


def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version)
    and then LevelDB's log format, 32 KiB blocks of ``crc32, length, type`` chunks (type 1
    full record, 2/3/4 first/middle/last part, 0 padding)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, parts = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two epochs of the small model with logger=many, every tracker writing under tmp."""
    root = tmp_path_factory.mktemp("tracked")
    overrides = [
        *FAST,
        f"data.prepare.num_train={NUM_TRAIN}",
        f"data.batch_size={BATCH}",
        f"trainer.max_epochs={EPOCHS}",
        "logger=many",
        "callbacks.validation_figures.every_n_epochs=2",
        f"callbacks.validation_figures.num_images={NUM_IMAGES}",
        # score the final weights (epoch 2), so confusion_matrix.npy is epoch 2's matrix
        "~callbacks.model_checkpoint",
    ]
    cfg = compose_job("train", root, root / "run", overrides)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            env.setenv(name, str(root / name.lower()))
        train(cfg)
        import wandb

        wandb.finish()  # flushes the offline run, as the end of a train.py process does
    run = root / "run"
    return {
        "cfg": cfg,
        "run": run,
        "matrix": np.load(run / "confusion_matrix.npy"),
        "uri": cfg.logger.mlflow.tracking_uri,
        "data_root": Path(cfg.data.prepare.root),
    }


def expected_iou(matrix: np.ndarray) -> dict[str, float]:
    return dict(zip(CLASS_NAMES, expected_scores(matrix)["IoU"].tolist(), strict=True))


def check_heatmap(picture: np.ndarray, matrix: np.ndarray) -> None:
    """Every cell's colour is on the picture, in at least a cell's worth of pixels."""
    share = matrix / matrix.sum(1, keepdims=True)
    colours: dict[tuple[int, ...], int] = {}
    for value in share[~np.isnan(share)].tolist():
        colours[blues(value)] = colours.get(blues(value), 0) + 1
    for colour, cells in colours.items():
        assert colour_count(picture, colour) >= 200 * cells, colour  # cells >= 20x20 px


def check_samples(picture: np.ndarray, data_root: Path) -> None:
    """The ground truth of the first fixed val image (the split's first, sorted) is there."""
    first = sorted((data_root / "masks").glob("val_*.png"))[0]
    mask = np.asarray(Image.open(first))
    assert contains(picture, palette_colours(mask))


# --- drawing and helpers, hand-made inputs -------------------------------------------------


def test_heatmap_colours_each_cell_by_its_share_of_the_ground_truth_row():
    # row 0: 3 of 4 pixels right (75 %), 1 as class b (25 %); row 1 has no ground truth
    picture = confusion_heatmap(np.array([[3, 1], [0, 0]]), ["a", "b"])
    assert blues(0.75) == (68, 99, 144) and blues(0.25) == (187, 200, 218)
    assert colour_count(picture, (68, 99, 144)) >= 200
    assert colour_count(picture, (187, 200, 218)) >= 200
    assert colour_count(picture, GREY) >= 2 * 200  # the NaN row
    assert colour_count(picture, blues(1.0)) < 200  # only the colour bar has full blue


def test_sample_panels_show_ground_truth_and_prediction_in_palette_colours():
    image = np.full((6, 8, 3), 90, np.uint8)
    mask = np.zeros((6, 8), np.int64)
    mask[2:, 3:] = 1
    mask[0, 0] = 255  # void: black
    prediction = np.full((6, 8), 2)
    red, blue, green = (255, 0, 0), (0, 0, 255), (0, 255, 0)
    picture = sample_panels([(image, mask, prediction)], ["x"], ["r", "b", "g"], [red, blue, green])
    truth = np.zeros((6, 8, 3), np.uint8)
    truth[mask == 0], truth[mask == 1] = red, blue
    assert contains(picture, truth)
    assert contains(picture, np.broadcast_to(np.uint8(green), (6, 8, 3)))
    assert contains(picture, image)
    big = sample_panels([(np.zeros((40, 80, 3), np.uint8), mask, mask)], ["x"], ["r"], [red])
    small = sample_panels(
        [(np.zeros((40, 80, 3), np.uint8), mask, mask)], ["x"], ["r"], [red], max_size=20
    )
    assert big.shape[1] - small.shape[1] == 80 - 20  # the 40x80 image tile becomes 10x20


def test_flat_config_joins_keys_like_overrides_and_leaves_out_hydra():
    config = {
        "optimizer": {"lr": 0.002, "betas": [0.9, 0.999]},
        "data": {"train_transform": {"transforms": [{"_target_": "Flip", "p": 0.5}]}},
        "hydra": {"run": {"dir": "x"}},
        "seed": 42,
    }
    assert flat_config(config) == {
        "optimizer.lr": 0.002,
        "optimizer.betas": [0.9, 0.999],
        "data.train_transform.transforms.0._target_": "Flip",
        "data.train_transform.transforms.0.p": 0.5,
        "seed": 42,
    }


def test_a_missing_tracker_names_the_extra_or_is_left_out_with_a_warning(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("wandb", "mlflow") else real(name, *a),
    )
    with pytest.raises(MissingTrackerError, match=r"logger\.wandb.*\.\[tracking\]"):
        wandb_logger(str(tmp_path))
    with pytest.raises(MissingTrackerError, match=r"logger\.mlflow.*\.\[tracking\]"):
        mlflow_logger(f"sqlite:///{tmp_path}/db")
    with pytest.warns(UserWarning, match="logs without it"):
        stand_in = mlflow_logger(f"sqlite:///{tmp_path}/db", required=False)
    assert isinstance(stand_in, DummyLogger)  # Lightning's logger that logs nothing
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("key", ["every_n_epochs", "num_images"])
def test_validation_figures_refuses_negative_counts(key):
    with pytest.raises(ValueError, match=f"callbacks.validation_figures.{key}"):
        ValidationFigures(**{key: -1})


# --- one logger=many run, read back from each tracker ---------------------------------------
# (an in-process train.py run: slow; under xdist its three tests share one worker, one run)


@pytest.mark.slow
def test_mlflow_run_holds_params_per_class_iou_and_the_pictures(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracked["uri"])
    experiment = client.get_experiment_by_name("segkit")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["optimizer.lr"] == "0.002"  # conf/optimizer/adamw.yaml
    assert run.data.params["model.arch"] == "Linknet"  # helpers.SMALL_MODEL
    assert run.data.params["paths.output_dir"] == str(tracked["run"])
    for name, iou in expected_iou(tracked["matrix"]).items():
        history = client.get_metric_history(run.info.run_id, f"val/IoU/{name}")
        assert [m.step for m in history] == [*VAL_STEPS, FINAL_STEP]
        assert history[-1].value == pytest.approx(iou, abs=1e-6, nan_ok=True)
    files = [Path(f.path).name for f in client.list_artifacts(run.info.run_id, "images")]
    pngs = sorted(f for f in files if f.endswith(".png"))
    assert [f.split("+")[:3] for f in pngs] == [
        ["val~confusion_matrix", "step", str(VAL_STEPS[1])],
        ["val~samples", "step", str(VAL_STEPS[1])],
    ]
    folder = Path(client.download_artifacts(run.info.run_id, "images", str(tracked["run"].parent)))
    check_heatmap(np.asarray(Image.open(folder / pngs[0])), tracked["matrix"])
    samples = np.asarray(Image.open(folder / pngs[1]))
    check_samples(samples, tracked["data_root"])


@pytest.mark.slow
def test_wandb_offline_run_holds_config_per_class_iou_and_the_pictures(tracked):
    (folder,) = (tracked["run"] / "wandb").glob("offline-run-*")
    config, rows = {}, []
    for record in wandb_records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            items = record.history.item
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
    assert config["optimizer.lr"] == 0.002 and config["model.arch"] == "Linknet"
    iou_steps = [r["trainer/global_step"] for r in rows if "val/IoU/star" in r]
    assert iou_steps == [*VAL_STEPS, FINAL_STEP]
    final = rows[[i for i, r in enumerate(rows) if "val/IoU/star" in r][-1]]
    for name, iou in expected_iou(tracked["matrix"]).items():
        assert final[f"val/IoU/{name}"] == pytest.approx(iou, abs=1e-6, nan_ok=True)
    pictures = {}
    for key in ("val/confusion_matrix", "val/samples"):
        (row,) = [r for r in rows if f"{key}/filenames" in r]
        assert row["trainer/global_step"] == VAL_STEPS[1]
        (name,) = row[f"{key}/filenames"]
        pictures[key] = np.asarray(Image.open(folder / "files" / name))
    check_heatmap(pictures["val/confusion_matrix"], tracked["matrix"])
    check_samples(pictures["val/samples"], tracked["data_root"])


@pytest.mark.slow
def test_tensorboard_holds_per_class_iou_and_the_pictures(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked["run"] / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {f"val/IoU/{name}" for name in CLASS_NAMES} <= set(tags["scalars"])
    (heatmap,) = events.Images("val/confusion_matrix")
    (samples,) = events.Images("val/samples")
    assert heatmap.step == samples.step == VAL_STEPS[1]
    check_heatmap(
        np.asarray(Image.open(io.BytesIO(heatmap.encoded_image_string))), tracked["matrix"]
    )
    check_samples(
        np.asarray(Image.open(io.BytesIO(samples.encoded_image_string))), tracked["data_root"]
    )
