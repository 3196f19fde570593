"""Confusion-matrix update: segkit vs numpy.bincount, torchmetrics and a naive torch.bincount.

python -m benchmarks.confmat [--quick]

19 classes, ignore_index 255 on 10% of the pixels, predictions right on 60% of the pixels.
Labels are int64 ``[B, H, W]`` (what the data loader yields), logits float32
``[B, 19, H, W]``. Every method is checked to give the same matrix before it is timed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from benchmarks.common import compare, ms, ratio, run_alone, table
from segkit.evaluation.metrics import ConfusionMatrix

NUM_CLASSES = 19
IGNORE = 255
TITLE = "Confusion-matrix update (CPU)"


def make_labels(
    shape: Sequence[int], skewed: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(preds, target) int64 label maps; ``skewed`` puts 70% of the target in class 0."""
    rng = np.random.default_rng(seed)
    if skewed:
        target = np.where(
            rng.random(shape) < 0.7, 0, rng.integers(1, NUM_CLASSES, size=shape)
        ).astype(np.int64)
    else:
        target = rng.integers(0, NUM_CLASSES, size=shape, dtype=np.int64)
    preds = np.where(rng.random(shape) < 0.6, target, rng.integers(0, NUM_CLASSES, size=shape))
    target[rng.random(shape) < 0.1] = IGNORE
    return torch.from_numpy(preds), torch.from_numpy(target)


def numpy_confmat(preds: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The numpy reference: boolean mask of kept pixels, fused int64 index, bincount."""
    keep = target != IGNORE
    index = NUM_CLASSES * target[keep].astype(np.int64) + preds[keep]
    return np.bincount(index, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def naive_torch(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``torch.bincount(target * C + pred)`` over the pixels kept by a boolean mask."""
    keep = target != IGNORE
    index = target[keep] * NUM_CLASSES + preds[keep]
    return torch.bincount(index, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def label_methods(
    preds: torch.Tensor, target: torch.Tensor
) -> dict[str, tuple[Callable[[], object], Callable[[], torch.Tensor]]]:
    """name -> (timed update, read back the matrix) for label inputs."""
    tm_default = MulticlassConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE)
    tm_fast = MulticlassConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE, validate_args=False)
    segkit = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE)
    preds_np, target_np = preds.numpy(), target.numpy()
    return {
        "numpy.bincount (reference)": (
            lambda: numpy_confmat(preds_np, target_np),
            lambda: torch.from_numpy(numpy_confmat(preds_np, target_np)),
        ),
        "torchmetrics default": (
            lambda: tm_default.update(preds, target),
            lambda: tm_default.confmat,
        ),
        "torchmetrics validate_args=False": (
            lambda: tm_fast.update(preds, target),
            lambda: tm_fast.confmat,
        ),
        "naive torch.bincount": (
            lambda: naive_torch(preds, target),
            lambda: naive_torch(preds, target),
        ),
        "segkit ConfusionMatrix.update": (
            lambda: segkit.update(preds, target),
            lambda: segkit.confmat,
        ),
    }


def logit_methods(
    logits: torch.Tensor, target: torch.Tensor
) -> dict[str, tuple[Callable[[], object], Callable[[], torch.Tensor]]]:
    """name -> (timed update, read back the matrix) for logit inputs (argmax included)."""
    tm_default = MulticlassConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE)
    segkit = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE)
    logits_np, target_np = logits.numpy(), target.numpy()

    def numpy_update() -> np.ndarray:
        return numpy_confmat(logits_np.argmax(1), target_np)

    return {
        "numpy argmax + bincount (reference)": (
            numpy_update,
            lambda: torch.from_numpy(numpy_update()),
        ),
        "torchmetrics default": (
            lambda: tm_default.update(logits, target),
            lambda: tm_default.confmat,
        ),
        "segkit ConfusionMatrix.update": (
            lambda: segkit.update(logits, target),
            lambda: segkit.confmat,
        ),
    }


def timed_rows(
    methods: dict[str, tuple[Callable[[], object], Callable[[], torch.Tensor]]],
    reference: str,
    label: str,
    repeats: int,
) -> list[list[str]]:
    """Check that every method agrees, time them interleaved, return table rows."""
    for name, (update, read) in methods.items():
        update()  # one update each, then compare the matrices
        if not torch.equal(read().long(), methods[reference][1]().long()):
            raise AssertionError(f"{name} disagrees with {reference} on {label}")
    times = compare({name: update for name, (update, _) in methods.items()}, repeats=repeats)
    tm_default = times.get("torchmetrics default")
    rows = []
    for name, seconds in times.items():
        rows.append(
            [
                label,
                name,
                ms(seconds),
                ratio(times[reference] / seconds),
                "-" if tm_default is None else ratio(tm_default / seconds),
            ]
        )
    return rows


def deterministic_rows(
    shape: Sequence[int], repeats: int, with_torchmetrics: bool = True
) -> list[list[str]]:
    """numpy, segkit (and torchmetrics) under ``torch.use_deterministic_algorithms(True)``."""
    preds, target = make_labels(shape, skewed=False)
    methods = label_methods(preds, target)
    chosen = {"numpy.bincount (reference)": methods["numpy.bincount (reference)"]}
    if with_torchmetrics:
        chosen["torchmetrics default"] = methods["torchmetrics default"]
    chosen["segkit ConfusionMatrix.update"] = methods["segkit ConfusionMatrix.update"]
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        label = "x".join(map(str, shape)) + " labels, deterministic mode"
        return timed_rows(chosen, "numpy.bincount (reference)", label, repeats)
    finally:
        torch.use_deterministic_algorithms(previous)


def run(quick: bool = False) -> str:
    """Time every method; return the Markdown section."""
    sizes = [(1, 64, 128)] if quick else [(2, 512, 1024), (8, 1024, 2048)]
    repeats = 3 if quick else 5
    rows: list[list[str]] = []
    for shape in sizes:
        big = shape[0] * shape[1] * shape[2] > 4_000_000
        size = "x".join(map(str, shape))
        for skewed in (False,) if big else (False, True):
            preds, target = make_labels(shape, skewed)
            label = f"{size} labels, {'70% one class' if skewed else 'uniform'}"
            reps = max(3, repeats // 2) if big else repeats
            rows += timed_rows(
                label_methods(preds, target), "numpy.bincount (reference)", label, reps
            )
            del preds
        logits = torch.randn(shape[0], NUM_CLASSES, *shape[1:])
        rows += timed_rows(
            logit_methods(logits, target),
            "numpy argmax + bincount (reference)",
            f"{size} logits, uniform",
            max(3, repeats // 2) if big else repeats,
        )
        del logits, target
    det_shape = (1, 32, 64) if quick else (1, 128, 256)
    rows += deterministic_rows(det_shape, repeats)
    if not quick:  # segkit at the target size (torchmetrics' fallback would need 3 GB here)
        rows += deterministic_rows(sizes[0], repeats, with_torchmetrics=False)
    header = ["input", "method", "median ms", "speed-up vs reference", "speed-up vs torchmetrics"]
    return "\n\n".join(
        [
            f"## {TITLE}",
            "What is timed: one `update` of a 19-class confusion matrix (ignore_index 255 on 10% "
            "of the pixels) from int64 labels `[B,H,W]`, or from float32 logits `[B,19,H,W]` "
            "(argmax included). The reference is numpy (boolean mask + `np.bincount`) on the "
            "same arrays; torchmetrics is `MulticlassConfusionMatrix(19, ignore_index=255)`. "
            f"Median of {repeats} interleaved repetitions after one warm-up round (fewer for "
            "8x1024x2048). Speed-up = that method's time / this row's time (>1 is faster). "
            "Every method's matrix is checked equal to the reference first. The deterministic "
            "rows run under `torch.use_deterministic_algorithms(True)`, where torchmetrics "
            "falls back to a pixels x C^2 comparison (its issues #880, #1413), on a small "
            "image because that fallback allocates pixels x 361 int64; segkit and numpy also "
            "at 2x512x1024 there.",
            table(header, rows),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    run_alone(run, __doc__, argv)


if __name__ == "__main__":
    main()
