"""What every benchmark shares: the machine description, interleaved timing, Markdown tables.

Timing rule: all methods of one comparison run in the same process, interleaved (one
repetition of each method per round, after warm-up rounds), and each reports the median of
its repetitions. Interleaving spreads load from other processes over every method alike, so
the ratios stay meaningful on a shared machine even when the absolute times do not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import torch

from segkit.engine.callbacks.checkpointing import cpu_model


def machine() -> str:
    """One line naming the CPU, its cores, the GPU (if any), torch and the UTC date."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
        f"{gpu}, torch {torch.__version__}, {date}"
    )


def compare(
    methods: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median wall time in seconds of each method, timed interleaved (see module docstring).

    Args:
        methods: name -> zero-argument callable doing one unit of work (it must finish its
            work before returning: synchronise the GPU inside it if it uses one).
        repeats: timed rounds.
        warmup: untimed rounds first (allocator, caches, lazy initialisation).
    """
    times: dict[str, list[float]] = {name: [] for name in methods}
    for round_index in range(warmup + repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    """``seconds`` as milliseconds with three significant digits."""
    return f"{seconds * 1e3:.3g}"


def ratio(value: float) -> str:
    """A ratio as ``1.23x``."""
    return f"{value:.2f}x"


def parse_args(argv: Sequence[str] | None, description: str) -> bool:
    """Parse a benchmark's command line (``--quick``, ``--threads``); return ``quick``.

    ``--threads N`` sets ``torch.set_num_threads(N)`` before anything is timed. On a machine
    shared with other jobs, fewer threads than cores avoids intra-op threads waiting for
    each other (measured here: a U-Net step took over 10x longer with 2 threads than with 1
    while other processes kept both cores busy).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and few repetitions (for the tests)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args.quick


def run_alone(run: Callable[[bool], str], doc: str | None, argv: Sequence[str] | None) -> None:
    """One benchmark module as its own command (``python -m benchmarks.<name>``): parse its
    command line (:func:`parse_args`, the module docstring's first line as description), run
    it and print its section under the machine's line."""
    quick = parse_args(argv, (doc or "").splitlines()[0])
    print(f"Machine: {machine()}\n\n{run(quick)}")
