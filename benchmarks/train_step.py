"""Training-step overhead: SemanticSegmentationTask through Lightning vs a bare PyTorch loop.

python -m benchmarks.train_step [--quick]

Both sides train the same model object with the same loss, AdamW and the same batches held
in memory (one ``DataLoader`` over a list of ready batches). The step time is the time
between the starts of consecutive steps, so it includes everything the loop does between
them (Lightning: hooks, logging, progress bar; bare: fetch, forward, loss, backward, step).
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from benchmarks.common import ms, ratio, run_alone, table
from segkit.models.smp import smp_model
from segkit.tasks.losses import CrossEntropyLoss
from segkit.tasks.semantic import SemanticSegmentationTask

NUM_CLASSES = 5
TITLE = "Training-step overhead: Lightning task vs bare PyTorch loop (CPU)"


class StepClock(L.Callback):
    """Records ``time.perf_counter()`` at the start of every training batch."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == trainer.max_steps:
            self.stamps.append(time.perf_counter())  # end of the last step


def batches(count: int, batch_size: int, size: int) -> list[dict[str, torch.Tensor]]:
    """``count`` random batches ``{"image": [B,3,S,S], "mask": [B,S,S]}``."""
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(batch_size, 3, size, size, generator=generator),
            "mask": torch.randint(0, NUM_CLASSES, (batch_size, size, size), generator=generator),
        }
        for _ in range(count)
    ]


def lightning_steps(
    task: SemanticSegmentationTask, loader: DataLoader, log_dir: str
) -> list[float]:
    """Step times of one ``trainer.fit`` over ``loader`` (default progress bar, CSV logger)."""
    clock = StepClock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(loader),
        logger=CSVLogger(log_dir),
        callbacks=[clock],
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=10,  # conf/trainer/default.yaml
    )
    trainer.fit(task, train_dataloaders=loader)
    return [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)]


def bare_steps(model: torch.nn.Module, loader: DataLoader) -> list[float]:
    """Step times of a plain loop: forward, loss, zero_grad, backward, AdamW step."""
    loss_fn = CrossEntropyLoss(ignore_index=255)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    stamps = []
    for batch in loader:
        stamps.append(time.perf_counter())
        loss = loss_fn(model(batch["image"]), batch["mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def build(arch: str) -> torch.nn.Module:
    """smp ``arch`` on a ResNet-18, or ``"probe"``: one 1x1 convolution (almost no compute,
    so its step time is the loop's own overhead)."""
    if arch == "probe":
        return torch.nn.Conv2d(3, NUM_CLASSES, kernel_size=1)
    return smp_model(arch, NUM_CLASSES, encoder_name="resnet18")


def measure(arch: str, batch_size: int, size: int, steps: int, rounds: int) -> list[str]:
    """One table row: median step times of both loops over ``rounds`` alternating rounds."""
    model = build(arch)
    task = SemanticSegmentationTask(
        model=model,
        loss=CrossEntropyLoss(ignore_index=255),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        scheduler=None,
        num_classes=NUM_CLASSES,
        class_names=[f"class{i}" for i in range(NUM_CLASSES)],
    )
    loader = DataLoader(batches(steps, batch_size, size), batch_size=None, shuffle=False)
    warmup = 2  # per round: first steps pay allocation and lazy initialisation
    times: dict[str, list[float]] = {"lightning": [], "bare": []}
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(rounds):
            times["lightning"] += lightning_steps(task, loader, log_dir)[warmup:]
            times["bare"] += bare_steps(model, loader)[warmup:]
    lightning = statistics.median(times["lightning"])
    bare = statistics.median(times["bare"])
    name = "1x1 conv (overhead probe)" if arch == "probe" else f"{arch} (resnet18)"
    return [
        f"{name}, batch {batch_size}x3x{size}x{size}",
        ms(bare),
        ms(lightning),
        ms(lightning - bare),
        ratio(lightning / bare),
        str(len(times["bare"])),
    ]


def run(quick: bool = False) -> str:
    """Time both loops for a U-Net and a DeepLabV3+; return the Markdown section."""
    if quick:
        cases, steps, rounds = [("Unet", 2, 64)], 4, 1
    else:
        cases, steps, rounds = [("Unet", 4, 128), ("DeepLabV3Plus", 4, 128)], 6, 4
    rows = [measure(arch, batch, size, steps, rounds) for arch, batch, size in cases]
    rows.append(measure("probe", 2, 32, 12 if quick else 40, rounds))
    header = [
        "model, input",
        "bare ms/step",
        "Lightning ms/step",
        "added ms/step",
        "ratio (<= 1.05 target)",
        "steps",
    ]
    return "\n\n".join(
        [
            f"## {TITLE}",
            "What is timed: the time between the starts of consecutive training steps of "
            "`SemanticSegmentationTask` under `lightning.Trainer` (progress bar and CSV logger "
            "on, `log_every_n_steps=10` as in conf/trainer/default.yaml, no checkpointing, no "
            "validation) and of a bare loop (forward, cross-entropy, zero_grad, backward, "
            f"AdamW step) on the same model and in-memory batches. {rounds} alternating "
            f"rounds of {steps} steps, the first 2 steps of each round dropped; median over the "
            "rest. Ratio = Lightning / bare. The 1x1-convolution probe has almost no compute, so "
            "its 'added ms/step' is the fixed cost Lightning adds to every step.",
            table(header, rows),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    run_alone(run, __doc__, argv)


if __name__ == "__main__":
    main()
