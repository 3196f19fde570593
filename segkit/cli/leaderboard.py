"""Leaderboard of train.py runs, the command (the tables: :mod:`segkit.evaluation.leaderboard`).

    python -m segkit.cli.leaderboard <run or sweep dir>... [--per-class]

Scans the folders for run dirs (``.hydra/overrides.yaml``; see :mod:`segkit.evaluation.analysis`)
and prints one row per run, best ``--sort`` value first: the overrides that differ between the
runs, mIoU, MPA, PA, FWIoU (%), the epoch of the scored checkpoint and the wall time. The
best value of each column is highlighted. Runs without ``metrics.json`` (failed or still
running) are listed last. ``--per-class`` prints the class x run IoU table instead.

The CSV (``leaderboard.csv``, or ``leaderboard_per_class.csv`` with ``--per-class``) holds
the unrounded values of ``metrics.json`` (fractions, not %) and every override of each run.
It goes next to the runs (into the one folder given; with several folders, into the current
directory) unless ``--csv`` names a file.

Examples::

    python -m segkit.cli.leaderboard logs/train/multiruns/2026-01-01_12-00-00
    python -m segkit.cli.leaderboard logs/train/multiruns/* --split test --sort FWIoU
    python -m segkit.cli.leaderboard logs/train/multiruns/2026-01-01_12-00-00 --per-class
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from segkit.evaluation.analysis import load_runs
from segkit.evaluation.leaderboard import (
    CSV_COLUMNS,
    METRIC_KEYS,
    leaderboard_rows,
    leaderboard_table,
    per_class_rows,
    per_class_table,
    write_csv,
)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m segkit.cli.leaderboard",
        description="One row per train.py run found under the given run/sweep dirs.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs, sweep dirs or logs/")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--sort", default="mIoU", choices=(*METRIC_KEYS, "mDice"))
    parser.add_argument("--per-class", action="store_true", help="class x run IoU table")
    parser.add_argument("--csv", type=Path, help="CSV file to write (default: see above)")
    args = parser.parse_args(argv)

    for folder in args.dirs:
        if not folder.is_dir():
            parser.error(f"{folder}: no such folder (give run or sweep dirs)")
    runs = load_runs(args.dirs, split=args.split)
    if not runs:
        parser.error(
            f"no run dirs (with .hydra/overrides.yaml) under {', '.join(map(str, args.dirs))}"
        )
    console = Console()
    name = "leaderboard_per_class.csv" if args.per_class else "leaderboard.csv"
    csv_path = args.csv or (args.dirs[0] / name if len(args.dirs) == 1 else Path(name))
    if args.per_class:
        names, rows = per_class_rows(runs)
        if not names:
            parser.error("none of the runs has a metrics.json (all failed or still running)")
        console.print(per_class_table(runs))
        write_csv(csv_path, ["class", *names], rows)
    else:
        console.print(leaderboard_table(runs, args.sort, title=f"{args.split}: {len(runs)} runs"))
        write_csv(csv_path, CSV_COLUMNS, leaderboard_rows(runs, args.sort))
    console.print(f"written {csv_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
