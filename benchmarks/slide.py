"""Sliding-window inference: segkit's batched ``slide_logits`` vs a per-window loop.

python -m benchmarks.slide [--quick]

Both produce the averaged logits of overlapping windows; the loop runs the model once per
window and accumulates, ``segkit.evaluation.inference.slide_logits`` runs the windows of all
images as one batch. Each is also timed with the model and images in channels_last layout (the
``fast_paths`` callback's switch), to show what the memory format adds on top of batching.
Outputs are checked equal (float tolerance) before timing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch

from benchmarks.common import compare, ms, ratio, run_alone, table
from segkit.evaluation.inference import WINDOW_PIXELS, slide_logits, window_starts, windows_per_pass
from segkit.models.smp import smp_model

NUM_CLASSES = 19
TITLE = "Sliding-window inference: batched windows vs per-window loop (CPU)"


def per_window_logits(
    model: torch.nn.Module, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Reference: one forward per window of each image, logits and counts summed on the fly.

    Args:
        images: ``[B, 3, H, W]``.

    Returns:
        logits ``[B, C, H, W]`` averaged over the windows covering each pixel.
    """
    height, width = images.shape[-2:]
    total = count = None
    for index, image in enumerate(images):
        for y in window_starts(height, crop[0], stride[0]):
            for x in window_starts(width, crop[1], stride[1]):
                window = image[None, :, y : y + crop[0], x : x + crop[1]]
                logits = model(window)[0]
                if total is None:
                    total = logits.new_zeros((len(images), logits.shape[0], height, width))
                    count = logits.new_zeros((height, width))
                total[index, :, y : y + crop[0], x : x + crop[1]] += logits
                if index == 0:
                    count[y : y + crop[0], x : x + crop[1]] += 1
    assert total is not None and count is not None
    return total / count


def convolution_seconds(work: Callable[[], object]) -> float:
    """CPU time ``work`` spends inside convolution kernels, from torch.profiler.

    Batching windows runs exactly the same convolutions over the same pixels, so it can only
    remove the rest: ``wall time / convolution time`` bounds its speed-up on a CPU (as far
    as a convolution costs the same per pixel at any batch size).
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        work()
    events = profile.key_averages()
    micros = sum(event.self_cpu_time_total for event in events if "convolution" in event.key)
    return micros / 1e6


def run(quick: bool = False) -> str:
    """Time the loop and the batched path, each in both memory formats; return the section."""
    if quick:
        size, crop, stride, repeats = (64, 128), (32, 64), (32, 64), 2
    else:
        size, crop, stride, repeats = (1024, 2048), (512, 1024), (512, 1024), 3
    batch = 2
    model = smp_model("Unet", NUM_CLASSES, encoder_name="resnet18").eval()
    images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    model_nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    images_nhwc = images.contiguous(memory_format=torch.channels_last)
    windows = len(window_starts(size[0], crop[0], stride[0])) * len(
        window_starts(size[1], crop[1], stride[1])
    )
    default_batch = min(batch * windows, windows_per_pass(crop, None))
    reference = "per-window loop (reference)"
    default = f"segkit slide_logits, default ({default_batch} windows per pass)"
    methods = {
        reference: lambda: per_window_logits(model, images, crop, stride),
        default: lambda: slide_logits(model, images, crop, stride),
        f"segkit slide_logits, all {batch * windows} windows in one pass": lambda: slide_logits(
            model, images, crop, stride, window_batch=batch * windows
        ),
        "per-window loop, channels_last": lambda: per_window_logits(
            model_nhwc, images_nhwc, crop, stride
        ),
        f"{default}, channels_last": lambda: slide_logits(model_nhwc, images_nhwc, crop, stride),
    }
    with torch.inference_mode():
        expected = methods[reference]()
        for method in methods.values():
            # Batched kernels and other layouts may sum in another order: equal within
            # float32 rounding.
            torch.testing.assert_close(method(), expected, rtol=1e-4, atol=1e-4)
        times = compare(methods, repeats=repeats)
        share = convolution_seconds(methods[reference]) / times[reference]
    rows = [[name, ms(t), ratio(times[reference] / t)] for name, t in times.items()]
    return "\n\n".join(
        [
            f"## {TITLE}",
            f"What is timed: logits of {batch} images of {size[0]}x{size[1]}, each covered by "
            f"{windows} windows of {crop[0]}x{crop[1]} (stride {stride[0]}x{stride[1]}), smp "
            f"U-Net (resnet18, {NUM_CLASSES} classes, random weights), `torch.inference_mode`. "
            "The loop runs one window of one image per forward pass; `slide_logits` runs the "
            "windows of both images together, by default as many per pass as make about "
            f"{WINDOW_PIXELS / 2**20:g} megapixels (`inference.window_batch=null`), or all "
            f"{batch * windows} in one pass. The channels_last rows use the same weights "
            "and images in NHWC layout. Median of "
            f"{repeats} interleaved repetitions after one warm-up round; outputs checked equal "
            "(tolerance 1e-4) first. Speed-up = reference loop time / this row's time.",
            table(["method", "median ms", "speed-up vs loop"], rows),
            f"Where the time goes (torch.profiler, one pass of the reference loop): convolution "
            f"kernels take {share:.0%} of its median wall time. Batching runs the same "
            "convolutions on the same pixels; if they cost the same per pixel at any batch "
            f"size, batching saves at most the other {1 - share:.0%}: about {1 / share:.2f}x "
            "for batching alone. Where the loop is compute-bound (large crops on a CPU), a "
            "faster convolution (layout, precision, compilation) is what moves the ratio, and "
            "too large a batch is slower (its activations no longer fit the caches); batching "
            "pays where the per-call cost dominates (small crops here; on a GPU, small "
            "batches leave the device idle - not measured here).",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    run_alone(run, __doc__, argv)


if __name__ == "__main__":
    main()
