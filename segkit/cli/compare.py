"""Published results side by side: the tables and the chart of RESULTS.md's architecture table.

    python -m segkit.cli.compare results/camvid/camvid_bench/* \\
        [--costs results/camvid/camvid_bench/costs.json] [--chart results/camvid/architectures.png]
        [--time-chart results/camvid/time_to_accuracy.png]

Each argument is a result folder written by :mod:`segkit.deploy.publish` (``run.json``,
``metrics.json``, ``history.csv``); folders without ``metrics.json`` (runs still to come) are
skipped with a note. Printed, in Markdown: the tables of :mod:`segkit.evaluation.compare`,
one row per result and then the per-class val IoU table. ``--costs`` adds the columns
measured by ``python -m benchmarks --only architectures``. ``--chart`` draws val mIoU per
epoch of every result on one chart, ``--time-chart`` val mIoU against wall minutes
(:func:`segkit.evaluation.compare.plot_time_to_accuracy`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from segkit.evaluation.compare import (
    load_result,
    per_class_table,
    plot_histories,
    plot_time_to_accuracy,
    result_table,
)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folders", nargs="+", type=Path, help="result folders (segkit.deploy.publish)"
    )
    parser.add_argument("--costs", type=Path, help="JSON of benchmarks.architectures")
    parser.add_argument("--chart", type=Path, help="PNG of val mIoU per epoch")
    parser.add_argument("--time-chart", type=Path, help="PNG of val mIoU against wall minutes")
    parser.add_argument("--title", default="CamVid val mIoU per epoch")
    parser.add_argument("--time-title", default="CamVid val mIoU against wall time")
    args = parser.parse_args(argv)
    results, pending = [], []
    for folder in args.folders:
        if folder.is_dir():
            result = load_result(folder)
            (results if result else pending).append(result or folder.name)
    if not results:
        raise SystemExit(f"none of {[str(f) for f in args.folders]} holds a metrics.json")
    costs = json.loads(args.costs.read_text())["models"] if args.costs else None
    text = (
        result_table(results, costs) + "\n\nPer-class val IoU (%):\n\n" + per_class_table(results)
    )
    if pending:
        text += f"\n\nStill to come (no metrics.json): {', '.join(map(str, pending))}"
    if args.chart:
        plot_histories(results, args.chart, args.title)
    if args.time_chart:
        plot_time_to_accuracy(results, args.time_chart, args.time_title)
    print(text)
    return text


if __name__ == "__main__":
    main()
