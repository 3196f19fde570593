"""Leaderboard of train.py runs: one row per run, best value first, and the class x run table.

The runs come from :mod:`segkit.evaluation.analysis` (``.hydra/overrides.yaml`` marks a run
dir). :func:`leaderboard_table` shows the overrides that differ between the runs, mIoU, MPA,
PA, FWIoU (%), the epoch of the scored checkpoint and the wall time, the best value of each
column highlighted; runs without ``metrics.json`` (failed or still running) are listed last.
:func:`per_class_table` is the class x run IoU table. The CSV rows (:func:`leaderboard_rows`,
:func:`per_class_rows`) hold the unrounded values of ``metrics.json`` (fractions, not %) and
every override of each run. The command is ``python -m segkit.cli.leaderboard``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from segkit.evaluation.analysis import Run

METRIC_KEYS = ("mIoU", "MPA", "PA", "FWIoU")
CSV_COLUMNS = ("run", *METRIC_KEYS, "mDice", "epoch", "seconds", "status", "overrides", "path")
BEST = "bold green"


def varying_overrides(runs: Sequence[Run]) -> list[list[str]]:
    """Each run's overrides minus those every run shares (the sweep-wide ones)."""
    if len(runs) < 2:
        return [list(run.overrides) for run in runs]
    shared = set.intersection(*(set(run.overrides) for run in runs))
    return [[o for o in run.overrides if o not in shared] for run in runs]


def short_override(override: str) -> str:
    """``key=value`` with a long float shortened to 4 significant digits (display only)."""
    key, sep, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}{sep}{number:.4g}" if len(value) > 8 and "." in value else override


def _value(run: Run, key: str) -> float | None:
    value = run.metrics.get(key) if run.metrics else None
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def sort_runs(runs: Sequence[Run], key: str = "mIoU") -> list[Run]:
    """Finished runs by ``key`` (best first; NaN/None after them), then unfinished runs."""

    def rank(run: Run) -> tuple[int, float]:
        value = _value(run, key)
        return (0, -value) if value is not None else (1 if run.finished else 2, 0.0)

    return sorted(runs, key=rank)


def leaderboard_rows(runs: Sequence[Run], sort: str = "mIoU") -> list[dict[str, Any]]:
    """One dict per run with the :data:`CSV_COLUMNS` (metric values as in metrics.json)."""
    rows = []
    for run in sort_runs(runs, sort):
        rows.append(
            {
                "run": run.name,
                **{key: _value(run, key) for key in (*METRIC_KEYS, "mDice")},
                "epoch": _value(run, "epoch"),
                "seconds": None if run.seconds is None else round(run.seconds, 1),
                "status": "finished" if run.finished else "no metrics.json",
                "overrides": " ".join(run.overrides),
                "path": str(run.path),
            }
        )
    return rows


def per_class_rows(runs: Sequence[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    """Run names (finished runs, best mIoU first) and one ``{class, <run>: IoU}`` dict per class."""
    finished = [run for run in sort_runs(runs) if run.finished]
    classes: list[str] = []
    for run in finished:
        classes += [name for name in run.class_names if name not in classes]
    rows = [
        {"class": name, **{run.name: run.iou.get(name) for run in finished}} for name in classes
    ]
    for row in rows:  # NaN (class absent) as an empty cell
        for key, value in row.items():
            if isinstance(value, float) and math.isnan(value):
                row[key] = None
    return [run.name for run in finished], rows


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _best(values: Sequence[float | None], lowest: bool = False) -> float | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return min(present) if lowest else max(present)


def _styled(text: str, best: bool) -> str:
    return f"[{BEST}]{text}[/]" if best else text


def leaderboard_table(runs: Sequence[Run], sort: str = "mIoU", title: str = "") -> Table:
    """The rich table printed by the CLI (scores in %, best per column highlighted)."""
    ordered = sort_runs(runs, sort)
    rows = leaderboard_rows(ordered, sort)
    shown = dict(zip((run.name for run in ordered), varying_overrides(ordered), strict=True))
    table = Table(title=title or f"{len(rows)} runs, sorted by {sort}")
    table.add_column("run")
    table.add_column("overrides", overflow="fold")
    for key in METRIC_KEYS:
        table.add_column(f"{key} %", justify="right")
    table.add_column("epoch", justify="right")
    table.add_column("time", justify="right")
    best = {key: _best([row[key] for row in rows]) for key in METRIC_KEYS}
    fastest = _best([row["seconds"] for row in rows if row["status"] == "finished"], True)
    for row in rows:
        cells = [
            _styled(_percent(row[key]), row[key] is not None and row[key] == best[key])
            for key in METRIC_KEYS
        ]
        seconds = row["seconds"]
        time = "-" if seconds is None else f"{seconds / 60:.1f} min"
        table.add_row(
            row["run"],
            " ".join(map(short_override, shown[row["run"]])) or "-",
            *cells,
            "-" if row["epoch"] is None else str(int(row["epoch"])),
            _styled(time, seconds is not None and seconds == fastest),
            style=None if row["status"] == "finished" else "dim",
        )
    return table


def per_class_table(runs: Sequence[Run]) -> Table:
    """Class x run IoU (%) table, best run per class highlighted."""
    names, rows = per_class_rows(runs)
    table = Table(title="Per-class IoU (%)")
    table.add_column("class")
    for name in names:
        table.add_column(name, justify="right")
    for row in rows:
        best = _best([row[name] for name in names])
        table.add_row(
            row["class"],
            *(_styled(_percent(row[n]), row[n] is not None and row[n] == best) for n in names),
        )
    return table


def write_csv(path: str | Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts) with the given columns; ``None`` becomes an empty cell."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row[key] is None else row[key] for key in columns})
    return path
