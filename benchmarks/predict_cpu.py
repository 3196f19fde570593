"""predict.py's CPU inference under each backend: images/s at 360x480 and 1024x2048.

python -m benchmarks.predict_cpu [--quick] [--threads N]

What is timed is what predict.py runs per image once the image is read and normalised:
``task.class_scores(x).argmax(1)`` of a task prepared by :func:`segkit.deploy.backends.fast_path`
for each ``backend=`` of predict.py: ``eager``, ``channels_last``, ``compile``
(``torch.compile``, Inductor, frozen weights) and ``onnxruntime`` (the task exported to a
dynamic ONNX graph in memory, run by onnxruntime's CPU provider with as many threads as
torch), under ``torch.no_grad`` as predict.py runs. The model is the shipped CamVid recipe's
weights (``results/camvid/camvid_fpn_lite0/model.pt``: FPN on EfficientNet-Lite0, 11
classes) rebuilt by :func:`segkit.engine.checkpoints.task_from_checkpoint`; where that file is
absent (``--quick``), an untrained smp Linknet (MobileNetV3-small-050, 11 classes).

Each backend starts from a fresh copy of the task for each size (compiled graphs are reset
between sizes, so each size compiles once, with static shapes, as a folder of equal-sized
images does). "setup s" is the backend's preparation plus its first call (compilation,
export and check). A backend is correct when its logits are within 1e-4 (max abs) of
eager's on the timed image; only correct backends are candidates for predict.py's default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from benchmarks.common import compare, ms, ratio, run_alone, table
from segkit.data.io import image_tensor, scaled_statistics
from segkit.deploy.backends import BACKENDS, fast_path
from segkit.engine.callbacks.speed import compile_supported
from segkit.engine.checkpoints import load_checkpoint, task_from_checkpoint

TITLE = "predict.py CPU inference: eager, channels_last, torch.compile, ONNX Runtime"
WEIGHTS = Path(__file__).resolve().parents[1] / "results/camvid/camvid_fpn_lite0/model.pt"
TOLERANCE = 1e-4  # max |logits - eager logits| of a correct backend
KEYS = ("data", "task", "model", "loss", "optimizer", "scheduler")  # what build_task reads


def checkpoint(quick: bool) -> tuple[dict, str]:
    """The benchmarked checkpoint and its description."""
    if not quick and WEIGHTS.is_file():
        return load_checkpoint(WEIGHTS), "CamVid FPN EfficientNet-Lite0 (shipped weights)"
    from segkit.config import compose
    from segkit.tasks import build_task

    overrides = ["model=smp", "model.arch=Linknet", "model.encoder_name=tu-mobilenetv3_small_050"]
    cfg = compose([*overrides, "data=camvid"])
    config = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in cfg if k in KEYS}
    state = build_task(cfg).state_dict()
    return {"config": config, "state_dict": state}, "untrained Linknet MobileNetV3-small-050"


def prepared(ckpt: dict, backend: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    """``class_scores`` of a fresh task under ``backend``, and its setup seconds (preparation
    plus the first call, done by the caller)."""
    start = time.perf_counter()
    _, task = task_from_checkpoint(ckpt)
    task = fast_path(task, backend)
    return task.class_scores, time.perf_counter() - start


def run(quick: bool = False) -> str:
    """Time every backend at each size; return the Markdown section."""
    sizes = [(64, 96)] if quick else [(360, 480), (1024, 2048)]
    repeats = 2 if quick else 3
    ckpt, description = checkpoint(quick)
    config = OmegaConf.create(ckpt["config"])
    mean, std = scaled_statistics(config.data.mean, config.data.std)
    no_compile = "skipped in --quick" if quick else compile_supported()
    backends = [b for b in BACKENDS if not (b == "compile" and no_compile)]
    rows, findings = [], []
    with torch.no_grad():
        for size in sizes:
            torch._dynamo.reset()  # each size compiles afresh, with static shapes
            pixels = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
            x = image_tensor(pixels, mean, std)[None]  # as predict.py normalises
            scores, setup, difference = {}, {}, {}
            for backend in backends:
                method, seconds = prepared(ckpt, backend)
                start = time.perf_counter()
                logits = method(x)
                setup[backend] = seconds + time.perf_counter() - start
                scores[backend] = method
                if backend == "eager":
                    reference = logits
                difference[backend] = float((logits - reference).abs().max())
            times = compare(
                {b: (lambda m=m, x=x: m(x).argmax(1)) for b, m in scores.items()}, repeats, warmup=1
            )
            findings.append(fastest_correct(size, times, setup, difference))
            for backend in backends:
                correct = difference[backend] <= TOLERANCE
                rows.append(
                    [
                        f"{size[0]}x{size[1]}",
                        backend,
                        f"{setup[backend]:.1f}",
                        ms(times[backend]),
                        f"{1 / times[backend]:.2f}",
                        ratio(times["eager"] / times[backend]),
                        f"{difference[backend]:.1e}",
                        "yes" if correct else "no",
                    ]
                )
    skipped = f" `compile` was not run: {no_compile}." if no_compile else ""
    header = ["image", "backend", "setup s", "ms/image", "img/s", "speed-up vs eager"]
    return "\n\n".join(
        [
            f"## {TITLE}",
            f"What is timed: predict.py's per-image inference, `class_scores(x).argmax(1)` of "
            f"one normalised image under each `backend=` of predict.py "
            f"(`segkit.deploy.backends.fast_path`), {description}, `torch.no_grad`, "
            f"{torch.get_num_threads()} threads (ONNX Runtime: as many intra-op threads). "
            f"Median of {repeats} interleaved repetitions after a warm-up round; 'setup s' is "
            "the rebuild from the checkpoint, the backend's preparation and its first call "
            "(compilation, ONNX export and its check). Correct: logits within "
            f"{TOLERANCE:g} (max abs) of eager's. Speed-up = eager time / this row's time "
            f"(>1 is faster).{skipped}",
            table([*header, "max abs logit diff vs eager", "correct"], rows),
            "\n".join(findings),
        ]
    )


def fastest_correct(size: tuple[int, int], times: dict, setup: dict, difference: dict) -> str:
    """One line: the fastest correct backend at ``size`` and after how many images its
    extra setup time is paid back against eager."""
    correct = [b for b in times if difference[b] <= TOLERANCE]
    best = min(correct, key=times.get)
    line = f"- {size[0]}x{size[1]}: fastest correct backend `{best}`"
    saved = times["eager"] - times[best]
    if best == "eager" or saved <= 0:
        return line + "."
    extra = max(0.0, setup[best] - setup["eager"])
    return (
        f"{line}, {ratio(times['eager'] / times[best])} eager; its {extra:.1f} s of extra setup "
        f"are paid back after {extra / saved:.0f} images ({saved:.3g} s saved per image)."
    )


def main(argv: Sequence[str] | None = None) -> None:
    run_alone(run, __doc__, argv)


if __name__ == "__main__":
    main()
