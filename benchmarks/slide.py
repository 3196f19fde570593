"""Sliding-window inference: segkit's batched ``slide_logits`` vs a per-window loop.

python -m benchmarks.slide [--quick]

Both produce the averaged logits of overlapping windows; the loop runs the model once per
window and accumulates, ``segkit.inference.slide_logits`` runs all windows of an image as
one batch. Outputs are checked equal (float tolerance) before timing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from benchmarks.common import compare, machine, ms, parse_args, ratio, table
from segkit.inference import slide_logits, window_starts
from segkit.models.smp import smp_model

NUM_CLASSES = 19
TITLE = "Sliding-window inference: batched windows vs per-window loop (CPU)"


def per_window_logits(
    model: torch.nn.Module, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Reference: one forward per window, logits and counts summed on the fly.

    Args:
        images: ``[B, 3, H, W]``.

    Returns:
        logits ``[B, C, H, W]`` averaged over the windows covering each pixel.
    """
    height, width = images.shape[-2:]
    total = count = None
    for y in window_starts(height, crop[0], stride[0]):
        for x in window_starts(width, crop[1], stride[1]):
            logits = model(images[:, :, y : y + crop[0], x : x + crop[1]])
            if total is None:
                total = logits.new_zeros((*logits.shape[:2], height, width))
                count = logits.new_zeros((1, 1, height, width))
            total[:, :, y : y + crop[0], x : x + crop[1]] += logits
            count[:, :, y : y + crop[0], x : x + crop[1]] += 1
    assert total is not None and count is not None
    return total / count


def run(quick: bool = False) -> str:
    """Time both on one image; return the Markdown section."""
    if quick:
        size, crop, stride, repeats = (64, 128), (32, 64), (32, 64), 2
    else:
        size, crop, stride, repeats = (1024, 2048), (512, 1024), (512, 1024), 3
    model = smp_model("Unet", NUM_CLASSES, encoder_name="resnet18").eval()
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    windows = len(window_starts(size[0], crop[0], stride[0])) * len(
        window_starts(size[1], crop[1], stride[1])
    )
    with torch.inference_mode():
        batched = slide_logits(model, images, crop, stride)
        looped = per_window_logits(model, images, crop, stride)
        # BatchNorm in eval mode and convolutions are per-sample, but batched kernels may
        # sum in another order: equal within float32 rounding.
        torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-4)
        times = compare(
            {
                "per-window loop (reference)": lambda: per_window_logits(
                    model, images, crop, stride
                ),
                "segkit slide_logits (batched)": lambda: slide_logits(model, images, crop, stride),
            },
            repeats=repeats,
        )
    reference = times["per-window loop (reference)"]
    rows = [[name, ms(t), ratio(reference / t)] for name, t in times.items()]
    return "\n\n".join(
        [
            f"## {TITLE}",
            f"What is timed: logits of one {size[0]}x{size[1]} image from {windows} windows of "
            f"{crop[0]}x{crop[1]} (stride {stride[0]}x{stride[1]}), smp U-Net (resnet18, "
            f"{NUM_CLASSES} classes, random weights), `torch.inference_mode`. Median of "
            f"{repeats} interleaved repetitions after one warm-up round; outputs checked equal "
            "(tolerance 1e-4) first. Speed-up = loop time / this row's time.",
            table(["method", "median ms", "speed-up vs loop"], rows),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    quick = parse_args(argv, __doc__.splitlines()[0])
    print(f"Machine: {machine()}\n\n{run(quick)}")


if __name__ == "__main__":
    main()
