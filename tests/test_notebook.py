"""segkit.evaluation.analysis on hand-made runs, and notebooks/per_class_iou.ipynb run top to
bottom."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from segkit.evaluation import analysis
from segkit.evaluation.report import write_report

from .helpers import PROJECT_ROOT, write_folder_dataset

NOTEBOOK = PROJECT_ROOT / "notebooks" / "per_class_iou.ipynb"


def fake_run(folder: Path, confmat: np.ndarray, class_names: list[str], data: dict) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create([]), folder / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"data": data}), folder / ".hydra" / "config.yaml")
    write_report(folder, confmat, class_names, "val", extra={"epoch": 0})
    return folder


def test_tables_match_hand_computed_values(tmp_path):
    names = ["sky", "road", "car"]
    # rows = ground truth: 10 sky, 6 road, 4 car pixels
    a = fake_run(tmp_path / "a", np.array([[8, 2, 0], [1, 5, 0], [0, 0, 4]]), names, {})
    b = fake_run(tmp_path / "b", np.array([[10, 0, 0], [3, 3, 0], [0, 4, 0]]), names, {})
    run_a, run_b = analysis.load_runs(tmp_path)
    assert [run_a.name, run_b.name] == ["a", "b"]
    assert run_a.path == a and run_b.path == b
    np.testing.assert_allclose(
        analysis.normalized_confusion(run_a).values,
        [[0.8, 0.2, 0.0], [1 / 6, 5 / 6, 0.0], [0.0, 0.0, 1.0]],
    )
    np.testing.assert_allclose(analysis.class_frequency(run_a).values, [0.5, 0.3, 0.2])
    # IoU a: sky 8/(10+9-8), road 5/(6+7-5), car 1; b: sky 10/13, road 3/(6+7-3), car 0/4
    iou = analysis.per_class_iou([run_a, run_b])
    np.testing.assert_allclose(iou["a"].values, [8 / 11, 5 / 8, 1.0])
    np.testing.assert_allclose(iou["b"].values, [10 / 13, 3 / 10, 0.0])
    np.testing.assert_allclose(
        analysis.iou_difference(run_a, run_b).values, [10 / 13 - 8 / 11, 3 / 10 - 5 / 8, -1.0]
    )
    table = analysis.summary([run_a, run_b])
    assert table.loc["a", "mIoU"] == pytest.approx((8 / 11 + 5 / 8 + 1) / 3)
    assert table.loc["b", "PA"] == pytest.approx(13 / 20)


def test_per_image_iou_ranks_saved_predictions(tmp_path):
    root = write_folder_dataset(tmp_path / "data", num_images=4, num_classes=3)
    data = {"dataset": {"root": str(root)}, "ignore_index": 255, "num_classes": 3}
    run = fake_run(tmp_path / "run", np.eye(3, dtype=np.int64), ["a", "b", "c"], data)
    (run / "predictions").mkdir()
    shutil.copy(root / "masks" / "img2.png", run / "predictions" / "img2.png")  # perfect
    mask = np.asarray(Image.open(root / "masks" / "img3.png"))
    Image.fromarray(np.zeros_like(mask)).save(run / "predictions" / "img3.png")  # all class 0

    table = analysis.per_image_iou(analysis.load_run(run))
    assert list(table.index) == ["img3", "img2"]  # worst first
    # all-0 prediction: IoU(0) = n0 / all pixels, classes 1 and 2 get IoU 0
    expected = (np.mean(mask == 0) + 0 + 0) / 3
    assert table.loc["img3", "mIoU"] == pytest.approx(expected)
    assert table.loc["img2", "mIoU"] == pytest.approx(1.0)
    assert table.loc["img3", "pixels"] == mask.size
    assert analysis.plot_worst_images(analysis.load_run(run), count=1) is not None


def test_load_runs_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope: no such folder"):
        analysis.load_runs(tmp_path / "nope")


def save_predictions(sweep_dir: Path) -> str:
    """Mask copies as predictions in every finished run, the first val image all wrong.

    Returns the stem of that image.
    """
    # the sweep's shapes folder (one per set of generation arguments)
    data_root = next((sweep_dir.parent / "data").rglob("splits/val.txt")).parent.parent
    stems = (data_root / "splits" / "val.txt").read_text().split()
    for run in analysis.load_runs(sweep_dir):
        if not run.finished:
            continue
        (run.path / "predictions").mkdir(exist_ok=True)
        for stem in stems:
            mask = np.asarray(Image.open(data_root / "masks" / f"{stem}.png"))
            pred = np.where(mask == 0, 1, 0).astype(np.uint8) if stem == stems[0] else mask
            Image.fromarray(pred).save(run.path / "predictions" / f"{stem}.png")
    return stems[0]


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_a_sweep(optuna_sweep, monkeypatch):
    import nbclient
    import nbformat

    worst = save_predictions(optuna_sweep)
    monkeypatch.setenv("SEGKIT_RUNS", str(optuna_sweep))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}
    ).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    finished = [run for run in analysis.load_runs(optuna_sweep) if run.finished]
    assert (
        f"{len(analysis.load_runs(optuna_sweep))} runs, {len(finished)} with metrics.json" in text
    )
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 5  # IoU bars, difference, confusion matrix, frequency, worst images
    # the wrong image is ranked worst: the first row of the printed per-image table
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["mIoU", "pixels"])
    assert lines[header + 1].split()[0] == worst
