"""Evaluation artifacts and the console table, all derived from one confusion matrix.

Files written by :func:`write_report` into a folder:

* ``metrics.json``: ``split``, ``num_classes``, ``class_names``, every key of
  :func:`segkit.evaluation.metrics.scores` (per-class values as ``{class_name: value}``; NaN as
  ``null``), plus any ``extra`` fields (e.g. checkpoint, epoch).
* ``confusion_matrix.npy``: int64 ``[C, C]``, rows = ground truth, columns = prediction.
* ``per_class.csv``: one row per class: ``class, IoU, CPA, Precision, Dice, GT_pixels``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from segkit.evaluation.metrics import PER_CLASS_KEYS, scores

MEMBRANE_KEYS = ("pixel_error", "rand_error")  # segkit.evaluation.membrane_metrics, in extras


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def metrics_dict(
    confmat: torch.Tensor | np.ndarray, class_names: Sequence[str], split: str
) -> dict[str, Any]:
    """The ``metrics.json`` content (without extras) for a confusion matrix."""
    result = scores(confmat)
    if len(class_names) != result["IoU"].numel():
        raise ValueError(
            f"{len(class_names)} class names for a {result['IoU'].numel()}-class matrix"
        )
    out: dict[str, Any] = {
        "split": split,
        "num_classes": len(class_names),
        "class_names": list(class_names),
    }
    for key, value in result.items():
        if value.ndim == 0:
            out[key] = _number(value.item())
        else:
            out[key] = {
                name: _number(v) for name, v in zip(class_names, value.tolist(), strict=False)
            }
    return out


def write_report(
    folder: str | Path,
    confmat: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    split: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``confusion_matrix.npy`` and ``per_class.csv`` into ``folder``.

    Returns:
        the ``metrics.json`` content.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    matrix = torch.as_tensor(confmat).cpu().to(torch.int64).numpy()
    metrics = metrics_dict(matrix, class_names, split) | dict(extra or {})
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    np.save(folder / "confusion_matrix.npy", matrix)
    gt_pixels = matrix.sum(axis=1)
    with open(folder / "per_class.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", *PER_CLASS_KEYS, "GT_pixels"])
        for index, name in enumerate(class_names):
            values = [metrics[key][name] for key in PER_CLASS_KEYS]
            writer.writerow(
                [name, *("" if v is None else f"{v:.6f}" for v in values), int(gt_pixels[index])]
            )
    return metrics


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def report_table(metrics: dict[str, Any], title: str | None = None) -> Table:
    """A rich table of per-class IoU/CPA/Precision/Dice (in %) and the headline scores
    (with the pixel and Rand errors where ``metrics`` holds them)."""
    split = metrics["split"]
    table = Table(title=title or f"{split} scores (%)", show_footer=True)
    table.add_column("class", footer="mean")
    for key in PER_CLASS_KEYS:
        mean_key = {"IoU": "mIoU", "CPA": "MPA", "Dice": "mDice"}.get(key)
        table.add_column(key, justify="right", footer=_cell(metrics[mean_key]) if mean_key else "")
    for name in metrics["class_names"]:
        table.add_row(name, *(_cell(metrics[key][name]) for key in PER_CLASS_KEYS))
    # the ISBI 2012 challenge's errors where the task scored them (task.membrane_class)
    keys = ["PA", "MPA", "mIoU", "FWIoU"] + [k for k in MEMBRANE_KEYS if k in metrics]
    table.caption = "  ".join(f"{key} {_cell(metrics[key])}" for key in keys)
    return table


def print_report(metrics: dict[str, Any], console: Console | None = None) -> None:
    """Print :func:`report_table` to the terminal."""
    (console or Console()).print(report_table(metrics))
