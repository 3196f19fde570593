"""Publish a finished train.py run as a small result folder that eval.py and predict.py load.

:func:`publish` (the command: ``python -m segkit.cli.publish``) writes:

* ``model.pt``: the best checkpoint's weights alone, in the layout of a train.py checkpoint
  (``config``, ``state_dict``, ``epoch``, ``global_step``) so that
  ``python eval.py ckpt_path=<result folder>/model.pt`` and predict.py read it unchanged
  (:func:`segkit.engine.checkpoints.load_checkpoint`). A run that kept an EMA of its weights
  (``task.ema_decay``) is published with the EMA weights, the ones it was validated and
  selected with, as ``model.*``, and ``task.ema_decay`` null in the stored config; optimiser
  state, the second weight copy and the callbacks' state are left out (a 76 MB checkpoint
  of FPN-Lite0 becomes 19 MB).
* ``config.yaml``: the composed training config (``.hydra/config.yaml`` of the run).
* ``metrics.json``, ``per_class.csv``, ``confusion_matrix.npy``: the run's report of the
  best checkpoint on the validation split.
* ``curve.png``: validation mIoU and the training and validation loss per epoch
  (``csv/metrics.csv``), and ``history.csv``: those values (``epoch`` counted from 1,
  ``train_loss``, ``val_loss``, ``val_mIoU`` as a fraction, ``epoch_minutes`` the epoch's
  wall minutes where the run logged them), for charts over several results
  (:mod:`segkit.evaluation.compare`).
* ``samples.json`` and ``samples.png``: :data:`SAMPLE_COUNT` fixed validation images (evenly
  spaced in the split's order, :func:`sample_indices`), their per-image confusion matrices
  (rows = ground truth) computed from ``model.pt`` as eval.py loads it, and an image |
  ground truth | prediction grid. ``tests/test_results.py`` reproduces the matrices.
* ``run.json``: epochs trained, best epoch, wall time
  (:func:`segkit.evaluation.analysis.run_seconds`: every start of the run, not the pauses
  between them), the command and the machine that trained it (as the checkpoint
  records it: CPU, GPU, torch version and the training process's threads).

Publishing never trains; it runs the model on the sample images only. It never replaces a
file either: an out folder that holds any of :data:`PUBLISHED_FILES` stops it before anything
is written, unless ``overwrite`` (``--overwrite``) (:mod:`segkit.outputs`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from segkit.engine.callbacks.checkpointing import machine
from segkit.engine.callbacks.console import EPOCH_MINUTES
from segkit.engine.checkpoints import load_checkpoint, task_from_checkpoint
from segkit.evaluation.analysis import load_run
from segkit.evaluation.figures import sample_indices, sample_panels
from segkit.evaluation.metrics import confusion_matrix
from segkit.models.weights import EMA_PREFIX
from segkit.outputs import OVERWRITE_FLAG, check_new

SAMPLE_COUNT = 4
REPORT_FILES = ("metrics.json", "per_class.csv", "confusion_matrix.npy")
PUBLISHED_FILES = (
    "model.pt",
    "config.yaml",
    *REPORT_FILES,
    "samples.json",
    "samples.png",
    "curve.png",
    "history.csv",
    "run.json",
)


def weights_only(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A train.py checkpoint reduced to what rebuilding and scoring the model needs.

    The EMA weights (``ema_model.module.*``), when present, become ``model.*`` and the
    config's ``task.ema_decay`` becomes null, so the rebuilt task has one weight copy and
    scores what the run validated. Keys outside ``model.*``/``ema_model.*`` (loss buffers
    such as class weights) are kept.
    """
    state = checkpoint["state_dict"]
    config = OmegaConf.create(checkpoint["config"])
    has_ema = any(key.startswith(EMA_PREFIX) for key in state)
    slim = {}
    for key, value in state.items():
        if key.startswith("ema_model."):
            if key.startswith(EMA_PREFIX):
                slim["model." + key[len(EMA_PREFIX) :]] = value.clone()
        elif not (has_ema and key.startswith("model.")):
            slim[key] = value.clone()
    if has_ema:
        config.task.ema_decay = None
    return {
        "config": OmegaConf.to_container(config),
        "state_dict": slim,
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
    }


@torch.no_grad()
def score_samples(
    published: dict[str, Any], data_root: str | Path | None = None
) -> tuple[dict[str, Any], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Run ``published`` (a :func:`weights_only` checkpoint) on the fixed validation images.

    The model is rebuilt as eval.py rebuilds it (:func:`task_from_checkpoint`) and scored
    as validation scores it (:meth:`~segkit.tasks.semantic.SemanticSegmentationTask.class_scores`).

    Returns:
        ``({"split", "indices", "names", "confusion_matrices"}, [(image uint8 [H, W, 3],
        mask [H, W], prediction [H, W]), ...])``.
    """
    data: dict[str, Any] = {"dataset": {"decoded_cache": False}}
    if data_root is not None:
        data["dataset"]["root"] = str(data_root)
    cfg, task = task_from_checkpoint(published, {"data": data})
    datamodule = hydra.utils.instantiate(cfg.data)
    dataset = datamodule.build_dataset("val")
    indices = sample_indices(len(dataset))
    names, matrices, panels = [], [], []
    for index in indices:
        item = dataset[index]
        images = item["image"][None]
        prediction = task.class_scores(images).argmax(1)[0]
        matrix = confusion_matrix(prediction, item["mask"], task.num_classes, task.ignore_index)
        mask, prediction = item["mask"].numpy(), prediction.numpy()
        names.append(item["name"])
        matrices.append(matrix.tolist())
        image, _, _ = dataset.load(index)
        panels.append((image, mask, prediction))
    record = {
        "split": datamodule.splits["val"],
        "indices": indices,
        "names": names,
        "confusion_matrices": matrices,
    }
    return record, panels


def plot_samples(
    panels: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    names: Sequence[str],
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    path: Path,
) -> None:
    """Image | ground truth | prediction rows, with a colour legend; void is black.

    The picture the tracking callback logs (:func:`segkit.evaluation.figures.sample_panels`,
    full size).
    """
    Image.fromarray(sample_panels(panels, names, class_names, palette)).save(path)


# logged key -> history.csv column; val_mIoU is NaN in epochs without validation
HISTORY_COLUMNS = {
    "train/loss_epoch": "train_loss",
    "val/loss": "val_loss",
    "val/mIoU": "val_mIoU",
    EPOCH_MINUTES: "epoch_minutes",
}


def epoch_table(metrics_csv: Path) -> Any:
    """Per-epoch values of the :data:`HISTORY_COLUMNS` keys of every trained epoch, from
    Lightning's CSV log (a pandas DataFrame indexed by epoch, counted from 0; a
    resumed run's repeated epoch keeps its last values)."""
    import pandas as pd

    log = pd.read_csv(metrics_csv)
    keys = [k for k in HISTORY_COLUMNS if k in log]
    table = log.dropna(subset=["epoch"]).groupby("epoch")[keys].last()
    # epochs that trained: not the scoring of the best checkpoint after fitting, which
    # logs val/test keys under the next epoch number
    return table.dropna(subset=["train/loss_epoch"])


def plot_curve(table: Any, path: Path, title: str) -> None:
    """Validation mIoU (left axis, %) and training/validation loss (right axis) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, miou_ax = plt.subplots(figsize=(7, 3.6))
    validated = table["val/mIoU"].dropna()  # val every N epochs: only the epochs that ran it
    miou_ax.plot(
        validated.index + 1, 100 * validated, color="tab:blue", marker=".", label="val mIoU"
    )
    miou_ax.set_xlabel("epoch")
    miou_ax.set_ylabel("val mIoU (%)", color="tab:blue")
    loss_ax = miou_ax.twinx()
    for key, colour in (("train/loss_epoch", "tab:red"), ("val/loss", "tab:orange")):
        if key in table:
            values = table[key].dropna()
            loss_ax.plot(values.index + 1, values, color=colour, label=key.replace("/", " "))
    loss_ax.set_ylabel("loss")
    handles = miou_ax.get_legend_handles_labels()[0] + loss_ax.get_legend_handles_labels()[0]
    miou_ax.legend(handles=handles, loc="center right", fontsize=8)
    miou_ax.set_title(title, fontsize=10)
    miou_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_history(table: Any, path: Path) -> None:
    """Write :func:`epoch_table` as ``history.csv``: ``epoch`` (from 1) and the columns of
    :data:`HISTORY_COLUMNS` that were logged."""
    history = table.rename(columns=HISTORY_COLUMNS)
    history.index = history.index.astype(int) + 1
    history.to_csv(path, index_label="epoch")


def best_checkpoint_of(run_dir: Path, metrics: dict[str, Any]) -> Path:
    """The checkpoint the run's ``metrics.json`` reports (``"checkpoint"``, the best one on
    val), looked up under ``run_dir/checkpoints`` when the run folder has moved since."""
    reported = metrics.get("checkpoint")
    if not reported:
        raise FileNotFoundError(
            f"{run_dir}/metrics.json names no checkpoint: the run wrote none (trainer."
            "enable_checkpointing false?), so there are no weights to publish."
        )
    for path in (Path(reported), run_dir / "checkpoints" / Path(reported).name):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{run_dir}/metrics.json reports the checkpoint {reported}, which is neither there "
        f"nor in {run_dir / 'checkpoints'}; was it deleted?"
    )


def publish(
    run_dir: str | Path,
    out_dir: str | Path,
    data_root: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the result folder of a finished run (see the module docstring).

    Args:
        run_dir: a finished train.py run dir (``metrics.json`` and a best checkpoint).
        out_dir: the result folder, created if missing; not ``run_dir`` itself.
        data_root: the dataset root for the sample images (default: the stored one).
        overwrite: replace the :data:`PUBLISHED_FILES` already in ``out_dir``.

    Returns:
        the ``run.json`` content.

    Raises:
        ValueError: ``out_dir`` is ``run_dir``.
        segkit.outputs.OutputExistsError: ``out_dir`` holds one of :data:`PUBLISHED_FILES`
            and not ``overwrite``; nothing was written.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise ValueError(
            f"the result folder {out_dir} is the run folder itself; publish writes a new "
            "folder beside the run (e.g. results/<dataset>/<recipe>)."
        )
    if not overwrite:
        check_new((out_dir / name for name in PUBLISHED_FILES), OVERWRITE_FLAG)
    run = load_run(run_dir)
    if not run.finished:
        raise FileNotFoundError(f"{run_dir} holds no metrics.json: the run has not finished.")
    ckpt = best_checkpoint_of(run_dir, run.metrics)
    checkpoint = load_checkpoint(ckpt)
    published = weights_only(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(published, out_dir / "model.pt")
    shutil.copyfile(run_dir / ".hydra" / "config.yaml", out_dir / "config.yaml")
    for name in REPORT_FILES:
        shutil.copyfile(run_dir / name, out_dir / name)

    reloaded = load_checkpoint(out_dir / "model.pt")  # score the file as eval.py reads it
    record, panels = score_samples(reloaded, data_root)
    (out_dir / "samples.json").write_text(json.dumps(record, indent=1) + "\n")
    cfg = OmegaConf.create(published["config"])
    plot_samples(
        panels, record["names"], cfg.data.class_names, cfg.data.palette, out_dir / "samples.png"
    )
    table = epoch_table(run_dir / "csv" / "metrics.csv")
    title = f"{out_dir.name}: best val mIoU {100 * run.metrics['mIoU']:.1f}"
    plot_curve(table, out_dir / "curve.png", title)
    write_history(table, out_dir / "history.csv")
    info = {
        "command": "python train.py " + " ".join(run.overrides),
        "epochs_trained": len(table),
        "best_epoch": published["epoch"],
        "global_step": published["global_step"],
        "wall_seconds": None if run.seconds is None else round(run.seconds),
        "val_mIoU": run.metrics["mIoU"],
        # the training process's record; runs from before it was kept: this process's
        "machine": checkpoint.get("machine") or f"{machine()} (publishing process)",
        "published_from": str(ckpt.resolve().relative_to(run_dir.resolve())),
        "model_pt_bytes": (out_dir / "model.pt").stat().st_size,
    }
    (out_dir / "run.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
