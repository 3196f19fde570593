"""Published results side by side: the tables and the chart of RESULTS.md's architecture table.

A result folder is one written by :mod:`segkit.deploy.publish` (``run.json``,
``metrics.json``, ``history.csv``); :func:`load_result` reads it (``None`` without
``metrics.json``: a run still to come). :func:`result_table` is one Markdown row per result
(the folder name, which for the architecture protocol is the ``model=`` config) with the
run's seconds per epoch (the run's wall time over its epochs: training plus every epoch's
validation) and wall time, val PA/MPA/mIoU/FWIoU (%) and the best epoch (counted from 1),
plus the columns measured by ``python -m benchmarks --only architectures`` when given
(parameters, GMACs at 360x480, CPU inference ms per frame, eager and ONNX Runtime);
:func:`per_class_table` is the per-class val IoU table and :func:`plot_histories` draws val
mIoU per epoch of every result on one chart; :func:`plot_time_to_accuracy` draws val mIoU
against wall minutes (:func:`accuracy_over_time`), the chart for comparing recipes whose epochs
cost different times. The command is ``python -m segkit.cli.compare``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

METRICS = ("PA", "MPA", "mIoU", "FWIoU")


@dataclass
class Result:
    """One published result folder.

    Attributes:
        name: the folder's name.
        run: ``run.json`` (command, epochs, best epoch counted from 0, wall seconds).
        metrics: ``metrics.json`` (fractions; per-class values keyed by class name).
        history: ``history.csv`` indexed by epoch (from 1), or an empty frame.
    """

    name: str
    run: dict[str, Any]
    metrics: dict[str, Any]
    history: pd.DataFrame


def load_result(folder: str | Path) -> Result | None:
    """Read a result folder; ``None`` when it holds no ``metrics.json`` yet."""
    folder = Path(folder)
    if not (folder / "metrics.json").is_file():
        return None
    history_file = folder / "history.csv"
    history = (
        pd.read_csv(history_file, index_col="epoch") if history_file.is_file() else pd.DataFrame()
    )
    return Result(
        name=folder.name,
        run=json.loads((folder / "run.json").read_text()),
        metrics=json.loads((folder / "metrics.json").read_text()),
        history=history,
    )


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _cost(costs: dict[str, Any], name: str, key: str, digits: int) -> str:
    value = costs.get(name, {}).get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def result_table(results: Sequence[Result], costs: dict[str, Any] | None = None) -> str:
    """The Markdown table of ``results``, best val mIoU first (see the module docstring)."""
    costs = costs or {}
    header = ["`model=`", "params (M)", "GMACs 360x480", "s/epoch", "wall (min)"]
    header += ["ms/frame eager", "ms/frame ORT", *(f"val {m}" for m in METRICS), "best epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for result in sorted(results, key=lambda r: -r.metrics["mIoU"]):
        seconds, epochs = result.run.get("wall_seconds"), result.run.get("epochs_trained")
        row = [
            f"`{result.name}`",
            _cost(costs, result.name, "params_m", 2),
            _cost(costs, result.name, "gmacs", 1),
            "-" if not (seconds and epochs) else f"{seconds / epochs:.0f}",
            "-" if not seconds else f"{seconds / 60:.0f}",
            _cost(costs, result.name, "eager_ms", 0),
            _cost(costs, result.name, "onnxruntime_ms", 0),
            *(_percent(result.metrics[m]) for m in METRICS),
            str(result.run["best_epoch"] + 1),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def per_class_table(results: Sequence[Result]) -> str:
    """Per-class val IoU (%), one column per result, one row per class."""
    ordered = sorted(results, key=lambda r: -r.metrics["mIoU"])
    classes = list(ordered[0].metrics["IoU"])
    lines = ["| class | " + " | ".join(f"`{r.name}`" for r in ordered) + " |"]
    lines.append("|" + " --- |" * (len(ordered) + 1))
    for name in classes:
        cells = [_percent(r.metrics["IoU"].get(name)) for r in ordered]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _miou_chart(
    lines: Sequence[tuple[Any, Any, str, str]], xlabel: str, path: str | Path, title: str
) -> None:
    """One chart of val mIoU (%) lines, each ``(x, y, label, marker)``, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for x, y, label, marker in lines:
        ax.plot(x, y, marker=marker, markersize=9 if marker == "*" else 6, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_histories(results: Sequence[Result], path: str | Path, title: str) -> None:
    """Val mIoU (%) per epoch of every result with a history, on one chart."""
    lines = []
    for result in sorted(results, key=lambda r: -r.metrics["mIoU"]):
        if "val_mIoU" in result.history:
            history = result.history["val_mIoU"].dropna()  # epochs that validated
            lines.append((history.index, 100 * history, result.name, "."))
    _miou_chart(lines, "epoch", path, title)


@dataclass
class TimeCurve:
    """Val mIoU against wall minutes of one result (:func:`accuracy_over_time`).

    Attributes:
        minutes: ``[N]`` wall minutes at the end of each validated epoch.
        miou: ``[N]`` val mIoU (%) of those epochs.
        source: how ``minutes`` was obtained: ``"measured"`` (the running sum of the
            ``epoch_minutes`` the run logged; start-up and time spent stopped not counted),
            ``"evenly spaced"`` (a run that logged no epoch times: epoch ``e`` of ``E`` at
            ``e / E`` of ``run.json``'s wall time, which includes start-up), or ``"end point"``
            (no history: the final score at the run's wall time only).
    """

    minutes: np.ndarray
    miou: np.ndarray
    source: str


def accuracy_over_time(result: Result) -> TimeCurve | None:
    """The val mIoU of ``result`` against wall minutes; ``None`` without any wall time."""
    wall, epochs = result.run.get("wall_seconds"), result.run.get("epochs_trained")
    history = result.history
    if "val_mIoU" not in history or not history["val_mIoU"].notna().any():
        if not wall:
            return None
        return TimeCurve(
            np.array([wall / 60]), np.array([100 * result.metrics["mIoU"]]), "end point"
        )
    if "epoch_minutes" in history and history["epoch_minutes"].notna().all():
        minutes, source = history["epoch_minutes"].cumsum().to_numpy(), "measured"
    elif wall and epochs:
        minutes, source = history.index.to_numpy() * wall / 60 / epochs, "evenly spaced"
    else:
        return None
    validated = history["val_mIoU"].notna().to_numpy()
    return TimeCurve(minutes[validated], 100 * history["val_mIoU"].to_numpy()[validated], source)


def plot_time_to_accuracy(results: Sequence[Result], path: str | Path, title: str) -> None:
    """Val mIoU (%) against wall minutes of every result with a wall time, on one chart; the
    legend says where the minutes are not measured per epoch (:class:`TimeCurve`)."""
    lines = []
    for result in sorted(results, key=lambda r: -r.metrics["mIoU"]):
        curve = accuracy_over_time(result)
        if curve is not None:
            label = result.name if curve.source == "measured" else f"{result.name} ({curve.source})"
            marker = "*" if curve.source == "end point" else "."
            lines.append((curve.minutes, curve.miou, label, marker))
    _miou_chart(lines, "wall minutes (training and validation)", path, title)
