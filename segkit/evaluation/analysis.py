"""Load finished train.py runs (one run or whole sweeps) and plot what each gets wrong per class.

A run dir is any folder with ``.hydra/overrides.yaml`` (written by Hydra when train.py starts);
it is finished when it holds ``metrics.json`` (validation split) and ``confusion_matrix.npy``
(``test/`` holds the same for the test split). :func:`load_runs` finds every run dir under
the given folders, so a sweep dir, a run dir or ``logs/`` all work.

The tables are pandas objects (index = class names, one column per run); the ``plot_*``
functions draw on a matplotlib ``Axes`` and return it. ``notebooks/per_class_iou.ipynb``
is a thin front end to this module.

Worst images: when a run saved its predictions as label PNGs (``<run>/predictions/<stem>.png``,
class indices, same size as the mask; ``python predict.py ckpt_path=<run>/checkpoints/<best>.ckpt
input=<data root>/images output=<run>/predictions`` writes them), :func:`per_image_iou` ranks
the images by their mIoU against the dataset masks and :func:`plot_worst_images` shows
image / mask / prediction.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from segkit.data.io import read_image, read_mask
from segkit.evaluation.metrics import scores

SUMMARY_KEYS = ("mIoU", "MPA", "PA", "FWIoU", "mDice")


@dataclass
class Run:
    """One train.py run dir.

    Attributes:
        path: the run dir.
        name: short label (path relative to the scanned folder, e.g. ``"3"`` in a sweep).
        overrides: Hydra command-line overrides of the run (``.hydra/overrides.yaml``).
        metrics: ``metrics.json`` content of the chosen split, or ``None`` if the run wrote
            none (it failed, or is still running).
        confmat: int64 ``[C, C]`` confusion matrix (rows = ground truth), or ``None``.
        seconds: wall time of the run (training plus validation of the best checkpoint)
            from file times, :func:`run_seconds`; ``None`` if unfinished.
    """

    path: Path
    name: str
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    confmat: np.ndarray | None = None
    seconds: float | None = None

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def class_names(self) -> list[str]:
        return list(self.metrics["class_names"]) if self.metrics else []

    @property
    def iou(self) -> pd.Series:
        """Per-class IoU (NaN for a class absent from both ground truth and prediction)."""
        values = self.metrics["IoU"] if self.metrics else {}
        return pd.Series(
            {name: math.nan if v is None else v for name, v in values.items()},
            name=self.name,
            dtype=float,
        )

    def config(self) -> Any:
        """The run's composed config (``.hydra/config.yaml``) as an OmegaConf object.

        ``${paths.root_dir}`` resolves as in train.py (:func:`segkit.config.project_root`);
        ``${hydra:...}`` values do not resolve outside Hydra.
        """
        return OmegaConf.load(self.path / ".hydra" / "config.yaml")


def _natural_key(path: Path) -> list[Any]:
    # "10" sorts after "9": sweep job numbers
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def find_run_dirs(folder: str | Path) -> list[Path]:
    """Every run dir (folder with ``.hydra/overrides.yaml``) at or below ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (give a run or sweep dir)")
    found = [p.parent.parent for p in folder.rglob(".hydra/overrides.yaml")]
    if (folder / ".hydra" / "overrides.yaml").is_file() and folder not in found:
        found.append(folder)
    return sorted(found, key=_natural_key)


def load_run(path: str | Path, split: str = "val", name: str | None = None) -> Run:
    """Read one run dir; ``split="test"`` reads ``test/metrics.json`` instead."""
    path = Path(path)
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    folder = path if split == "val" else path / split
    run = Run(path=path, name=name or path.name, overrides=[str(o) for o in overrides])
    metrics_file = folder / "metrics.json"
    if metrics_file.is_file():
        run.metrics = json.loads(metrics_file.read_text())
        confmat_file = folder / "confusion_matrix.npy"
        if confmat_file.is_file():
            run.confmat = np.load(confmat_file)
    run.seconds = run_seconds(path)
    return run


LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]")


def run_seconds(path: str | Path) -> float | None:
    """Wall time of the run dir ``path``, ``None`` without ``metrics.json``.

    One start: Hydra's config write (``.hydra/config.yaml``) to ``metrics.json``. A run
    continued in its folder (``ckpt_path=last``, ``resume=auto``) started several times
    (the earlier configs kept as ``.hydra/config.<n>.yaml``, n in start order): each earlier
    start counts until its last ``train.log`` line before the next start (the time between
    a cut and its continuation is not the run's), the last start until ``metrics.json``.
    Log times are read as local time, as Python's logging writes them.
    """
    from datetime import datetime

    path = Path(path)
    metrics, hydra = path / "metrics.json", path / ".hydra"
    if not metrics.is_file() or not (hydra / "config.yaml").is_file():
        return None
    earlier = sorted(
        (p for p in hydra.glob("config.*.yaml") if p.stem.split(".")[-1].isdigit()),
        key=lambda p: int(p.stem.split(".")[-1]),
    )
    starts = [p.stat().st_mtime for p in (*earlier, hydra / "config.yaml")]
    logged = []
    log = path / "train.log"
    if len(starts) > 1 and log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            match = LOG_TIME.match(line)
            if match:
                stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").timestamp()
                logged.append(stamp + int(match[2]) / 1000)
    seconds = metrics.stat().st_mtime - starts[-1]
    for start, following in zip(starts, starts[1:], strict=False):
        within = [t for t in logged if start <= t < following]
        seconds += max(within) - start if within else 0.0
    return seconds


def load_runs(folders: str | Path | Iterable[str | Path], split: str = "val") -> list[Run]:
    """All runs under one folder or several (a run dir, a sweep dir, ``logs/``...).

    Run names are paths relative to the given folder (prefixed with the folder's name when
    several folders are given); a run dir given directly is named after itself.
    """
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    runs = []
    for folder in map(Path, folders):
        for path in find_run_dirs(folder):
            name = path.relative_to(folder).as_posix() if path != folder else folder.name
            if len(folders) > 1 and path != folder:
                name = f"{folder.name}/{name}"
            runs.append(load_run(path, split, name))
    return runs


def _finished(runs: Sequence[Run]) -> list[Run]:
    done = [run for run in runs if run.finished]
    if not done:
        raise ValueError("none of the runs has a metrics.json (all failed or still running)")
    return done


def summary(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per finished run: ``mIoU, MPA, PA, FWIoU, mDice, epoch, seconds``."""
    rows = {
        run.name: {
            **{key: run.metrics.get(key) for key in SUMMARY_KEYS},
            "epoch": run.metrics.get("epoch"),
            "seconds": run.seconds,
        }
        for run in _finished(runs)
    }
    return pd.DataFrame.from_dict(rows, orient="index").astype(float)


def per_class_iou(runs: Sequence[Run]) -> pd.DataFrame:
    """IoU table ``[class x run]`` of the finished runs (classes in the first run's order)."""
    return pd.concat([run.iou for run in _finished(runs)], axis=1)


def iou_difference(run_a: Run, run_b: Run) -> pd.Series:
    """Per-class ``IoU(run_b) - IoU(run_a)``: positive where ``run_b`` is better."""
    return (run_b.iou - run_a.iou).rename(f"{run_b.name} - {run_a.name}")


def normalized_confusion(run: Run) -> pd.DataFrame:
    """Row-normalised confusion matrix ``[C, C]``: row = ground truth, sums to 1 (or NaN).

    Entry ``(i, j)`` is the fraction of class-``i`` pixels predicted as class ``j``.
    """
    if run.confmat is None:
        raise ValueError(f"{run.path}: no confusion_matrix.npy")
    matrix = run.confmat.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = matrix / matrix.sum(axis=1, keepdims=True)
    return pd.DataFrame(normalised, index=run.class_names, columns=run.class_names)


def class_frequency(run: Run) -> pd.Series:
    """Fraction of ground-truth pixels per class (rows of the confusion matrix)."""
    if run.confmat is None:
        raise ValueError(f"{run.path}: no confusion_matrix.npy")
    totals = run.confmat.sum(axis=1).astype(np.float64)
    return pd.Series(totals / totals.sum(), index=run.class_names, name="frequency")


def plot_per_class_iou(runs: Sequence[Run], ax: Any = None) -> Any:
    """Grouped bars: per-class IoU (%) of each finished run."""
    table = per_class_iou(runs) * 100
    ax = ax if ax is not None else _axes()
    table.plot.bar(ax=ax, width=0.8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class IoU")
    ax.legend(title="run", fontsize="small")
    return ax


def plot_iou_difference(run_a: Run, run_b: Run, ax: Any = None) -> Any:
    """Bars of ``IoU(run_b) - IoU(run_a)`` per class, in points (green: run_b better)."""
    diff = iou_difference(run_a, run_b) * 100
    ax = ax if ax is not None else _axes()
    colors = ["tab:green" if v >= 0 else "tab:red" for v in diff.fillna(0)]
    ax.bar(diff.index, diff.values, color=colors)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("IoU difference (points)")
    ax.set_title(f"run {run_b.name} vs run {run_a.name}")
    ax.tick_params(axis="x", rotation=90)
    return ax


def plot_confusion_matrix(run: Run, ax: Any = None) -> Any:
    """Heatmap of :func:`normalized_confusion` with class names and the values in %."""
    table = normalized_confusion(run)
    ax = ax if ax is not None else _axes()
    image = ax.imshow(table.values, vmin=0, vmax=1, cmap="Blues")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(len(table))
    ax.set_xticks(ticks, table.columns, rotation=90)
    ax.set_yticks(ticks, table.index)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"Normalised confusion matrix, run {run.name}")
    if len(table) <= 20:  # numbers stay readable
        for (i, j), value in np.ndenumerate(table.values):
            if not math.isnan(value):
                color = "white" if value > 0.5 else "black"
                ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", color=color)
    return ax


def plot_iou_vs_frequency(runs: Sequence[Run], ax: Any = None) -> Any:
    """Scatter of per-class IoU (%) against the class's share of ground-truth pixels."""
    ax = ax if ax is not None else _axes()
    for run in _finished(runs):
        freq, iou = class_frequency(run), run.iou * 100
        ax.scatter(freq.values, iou[freq.index].values, label=run.name)
    first = _finished(runs)[0]
    for name, x in class_frequency(first).items():
        y = 0.0 if math.isnan(first.iou[name]) else 100 * first.iou[name]
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("share of ground-truth pixels")
    ax.set_ylabel("IoU (%)")
    ax.set_title("IoU vs class frequency")
    ax.legend(title="run", fontsize="small")
    return ax


def per_image_iou(
    run: Run, mask_dir: str | Path | None = None, ignore_index: int | None = None
) -> pd.DataFrame:
    """mIoU of each saved prediction ``<run>/predictions/<stem>.png`` against its mask.

    Args:
        run: a run whose predictions were saved (label PNGs of class indices).
        mask_dir: folder of ground-truth ``<stem>.png`` masks; default: ``masks/`` under the
            dataset root in the run's config (``data.dataset.root``).
        ignore_index: mask value left out; default: the run's ``data.ignore_index``.

    Returns:
        one row per image, worst first: ``mIoU`` (over classes present in the mask or
        the prediction) and ``pixels``; empty when the run saved no predictions.
    """
    from PIL import Image

    pred_dir = run.path / "predictions"
    if not pred_dir.is_dir():
        return pd.DataFrame(columns=["mIoU", "pixels"])
    cfg = run.config()
    mask_dir = Path(mask_dir) if mask_dir else Path(cfg.data.dataset.root) / "masks"
    ignore_index = cfg.data.ignore_index if ignore_index is None else ignore_index
    num_classes = len(run.class_names) or int(cfg.data.num_classes)
    rows = {}
    for pred_file in sorted(pred_dir.glob("*.png")):
        mask_file = mask_dir / pred_file.name
        if not mask_file.is_file():
            raise FileNotFoundError(f"{mask_file}: no mask for prediction {pred_file}")
        pred = np.asarray(Image.open(pred_file), dtype=np.int64)
        mask = read_mask(mask_file).astype(np.int64)  # as training reads it (EXIF, 1-bit, 16-bit)
        if pred.shape != mask.shape:
            raise ValueError(
                f"{pred_file}: size {pred.shape} differs from {mask_file} {mask.shape}"
            )
        keep = mask != ignore_index
        confmat = np.bincount(
            num_classes * mask[keep] + pred[keep], minlength=num_classes**2
        ).reshape(num_classes, num_classes)
        rows[pred_file.stem] = {"mIoU": float(scores(confmat)["mIoU"]), "pixels": int(keep.sum())}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["mIoU", "pixels"])
    return table.sort_values("mIoU")


def plot_worst_images(run: Run, count: int = 4, mask_dir: str | Path | None = None) -> Any:
    """Image / mask / prediction of the ``count`` worst images of :func:`per_image_iou`.

    Returns:
        the matplotlib Figure, or ``None`` when the run saved no predictions.
    """
    import matplotlib.pyplot as plt
    from PIL import Image

    worst = per_image_iou(run, mask_dir).head(count)
    if worst.empty:
        return None
    cfg = run.config()
    root = Path(cfg.data.dataset.root)
    mask_dir = Path(mask_dir) if mask_dir else root / "masks"
    num_classes = len(run.class_names)
    fig, axes = plt.subplots(len(worst), 3, figsize=(9, 3 * len(worst)), squeeze=False)
    for row, (stem, values) in zip(axes, worst.iterrows(), strict=True):
        image_file = next((root / "images").glob(f"{stem}.*"), None)
        panels = [
            (read_image(image_file) if image_file else None, f"{stem}"),
            (read_mask(mask_dir / f"{stem}.png"), "mask"),
            (Image.open(run.path / "predictions" / f"{stem}.png"), f"mIoU {100 * values.mIoU:.1f}"),
        ]
        for ax, (picture, title) in zip(row, panels, strict=True):
            picture = None if picture is None else np.asarray(picture)
            if picture is not None and picture.ndim == 3:  # RGB image
                ax.imshow(picture)
            elif picture is not None:  # label map; ignored pixels (255) get the last colour
                labels = np.minimum(np.asarray(picture), num_classes)
                ax.imshow(labels, cmap="tab20", vmin=0, vmax=num_classes, interpolation="nearest")
            ax.set_title(title)
            ax.axis("off")
    fig.tight_layout()
    return fig


def _axes() -> Any:
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(8, 4))[1]
