"""End-to-end runs of train.py in a subprocess: artifacts, and metrics.json == scores(npy)."""

from __future__ import annotations

import numpy as np
import pytest

from ..helpers import SMALL_MODEL, TINY, check_report, run_train


@pytest.mark.slow
def test_train_leaves_every_artifact(trained_run):
    run_dir = trained_run
    names = ["background", "circle", "square", "triangle", "star"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("best_epoch*.ckpt"))) == 1
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    metrics = check_report(run_dir, names, "val")
    check_report(run_dir / "test", names, "test")
    # all val pixels are counted: 8 images of 64x64, nothing ignored in shapes
    assert np.load(run_dir / "confusion_matrix.npy").sum() == 8 * 64 * 64
    assert metrics["checkpoint"].endswith(".ckpt") and metrics["epoch"] in (0, 1)
    # per-class IoU is logged each validation, under val/IoU/<class>
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {f"val/IoU/{n}" for n in names} <= set(header) and "val/mIoU" in header
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    stdout = (run_dir / "stdout.txt").read_text()
    assert "val scores (%)" in stdout and "mIoU" in stdout and "triangle" in stdout
    # the checkpoint carries the config that rebuilds the model
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["config"]["model"]["_target_"] == "segkit.models.smp.smp_model"


@pytest.mark.slow
def test_train_stops_on_bad_mask_with_the_file_name(tmp_path, folder_dataset):
    from PIL import Image

    mask = np.zeros((24, 32), np.uint8)
    mask[3, 3] = 9
    Image.fromarray(mask).save(folder_dataset / "masks" / "img0.png")
    with pytest.raises(AssertionError, match=r"img0.png has values \[9\]"):
        run_train(
            tmp_path,
            "data=folder",
            f"data.dataset.root={folder_dataset}",
            "data.num_classes=3",
            "data.class_names=[a,b,c]",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "data.batch_size=2",
            "data.train_transform=null",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "test=false",
        )


@pytest.mark.slow
def test_train_without_logger_still_scores(tmp_path):
    run_dir = run_train(tmp_path, *TINY, "trainer.max_epochs=1", "logger=none", "test=false")
    assert (run_dir / "metrics.json").is_file() and not (run_dir / "csv").exists()


NOISE = (
    "💡 Tip",  # Lightning's cloud-logger advert
    "LeafSpec",  # a deprecation inside Lightning's pytree helper
    "`weights_only` was not set",  # Lightning, at every checkpoint save without the argument
    "Total FLOPs",  # Lightning's summary table, zeros without an example input
    "setup plugin",  # alembic, when optuna is imported
)


@pytest.mark.slow
def test_console_of_a_run_without_a_terminal_is_one_line_per_epoch(tmp_path):
    run_dir = run_train(tmp_path, *TINY, *SMALL_MODEL, "logger=csv", "test=false")
    stdout = (run_dir / "stdout.txt").read_text()  # run_train captures: not a terminal
    epochs = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2, stdout[-3000:]
    for number, line in enumerate(epochs, start=1):
        assert line.startswith(f"epoch {number}/2 | step {4 * number} | train loss ")
        assert " | val mIoU " in line and " PA " in line and " | best mIoU " in line
    output = stdout + (run_dir / "stderr.txt").read_text()
    assert "\r" not in output  # no progress bar redrawn into the file
    assert not [noise for noise in NOISE if noise in output], output[:3000]
    assert "model _target_=segkit.models.smp.smp_model, arch=Linknet" in stdout
    log = (run_dir / "train.log").read_text()  # the run's own lines, with time and source
    assert sum("[segkit.progress][INFO] - epoch " in line for line in log.splitlines()) == 2
