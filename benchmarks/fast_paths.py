"""Training throughput with each speed switch, as ratios against fp32 eager.

python -m benchmarks.fast_paths [--quick]

Models are built from their shipped configs (composed as train.py does, 19 classes): U-Net
ResNet-34 (``model=smp``), DeepLabV3 ResNet-50 (output stride 16), PSPNet ResNet-50 (output
stride 8, auxiliary head) and LR-ASPP MobileNetV3-Large. One step is what the task's
``training_step`` computes - forward and the task's loss (``training_loss``: cross-entropy
+ ``task.aux_weight`` x the auxiliary loss), backward, AdamW step - in a bare loop (the
Lightning overhead is measured separately in the training-step section). The switches are
those a run sets in its config:

* ``trainer.precision=bf16-mixed`` / ``16-mixed``: ``torch.autocast`` around forward and
  loss (what Lightning's mixed-precision plugin does; 16-mixed adds a ``GradScaler``),
* ``callbacks.fast_paths.channels_last=true``: weights and batches in NHWC,
* ``callbacks.fast_paths.compile=true``: ``torch.compile`` of the model,
* ``trainer.benchmark=true``: ``torch.backends.cudnn.benchmark`` (GPU only).

Every switch starts from the same weights; one step of each is checked against fp32 eager
before timing (loss within the switch's precision).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence

import torch

from benchmarks.common import compare, ms, ratio, run_alone, table
from segkit.config import compose
from segkit.engine.callbacks.speed import compile_supported
from segkit.tasks import build_task
from segkit.tasks.optim import build_optimizer
from segkit.tasks.semantic import SemanticSegmentationTask

NUM_CLASSES = 19
TITLE = "Training throughput with speed switches: ratios against fp32 eager"

# name in the table -> Hydra overrides of train.py's config
MODELS = {
    "U-Net ResNet-34": ["model=smp", "model.arch=Unet", "model.encoder_name=resnet34"],
    "DeepLabV3 ResNet-50": ["model=deeplabv3"],
    "PSPNet ResNet-50": ["model=pspnet"],
    "LR-ASPP MobileNetV3-L": ["model=lraspp"],
}


class Switch:
    """One speed setting: how the model is prepared and how a step runs under it."""

    def __init__(
        self,
        name: str,
        autocast: torch.dtype | None = None,
        channels_last: bool = False,
        compile: bool = False,
        cudnn_benchmark: bool = False,
    ) -> None:
        self.name = name
        self.autocast = autocast
        self.channels_last = channels_last
        self.compile = compile
        self.cudnn_benchmark = cudnn_benchmark

    @contextlib.contextmanager
    def context(self, device: torch.device) -> Iterator[None]:
        """Autocast (if any) and the cuDNN autotuner flag for the duration of a step."""
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        autocast = (
            torch.autocast(device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        try:
            with autocast:
                yield
        finally:
            torch.backends.cudnn.benchmark = previous


def switches(device: torch.device, with_compile: bool) -> list[Switch]:
    """The settings timed on ``device`` (fp32 eager first: the reference)."""
    chosen = [
        Switch("fp32 eager (reference)"),
        Switch("bf16-mixed", autocast=torch.bfloat16),
        Switch("channels_last", channels_last=True),
    ]
    if device.type == "cuda":
        chosen.insert(2, Switch("16-mixed", autocast=torch.float16))
        chosen.append(Switch("cudnn.benchmark", cudnn_benchmark=True))
    if with_compile:
        chosen.append(Switch("compile", compile=True))
    return chosen


def trainer_step(
    task: SemanticSegmentationTask,
    switch: Switch,
    images: torch.Tensor,
    masks: torch.Tensor,
    as_configured: bool = False,
) -> Callable[[], torch.Tensor]:
    """A zero-argument training step of ``task`` under ``switch``; returns the loss.

    The loss is the task's own (:meth:`SemanticSegmentationTask.training_loss`, as
    ``training_step`` computes it), so the benchmark times what training runs.

    Args:
        as_configured: step the task's own optimiser (its config's parameter groups and
            learning rates) and update its weight EMA (``task.ema_decay``) after each step,
            as training does; otherwise a plain AdamW (lr 1e-4) over all parameters.
    """
    device = images.device
    ema = task.ema_model if as_configured else None
    if switch.channels_last:
        task.model = task.model.to(memory_format=torch.channels_last)
        if ema is not None:  # as callbacks.fast_paths does
            ema.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if switch.compile:
        task.model.compile()  # in place, as callbacks.fast_paths does
    if as_configured:
        optimizer = build_optimizer(task.optimizer_factory, task.optimizer_groups())
    else:
        optimizer = torch.optim.AdamW(task.model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=switch.autocast == torch.float16)

    def step() -> torch.Tensor:
        with switch.context(device):
            loss, _ = task.training_loss(images, masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update_parameters(task.model)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss.detach()

    return step


def loss_tolerance(switch: Switch) -> float:
    """How far (relative) ``switch``'s first-step loss may lie from fp32 eager's."""
    # autocast: reduced precision; compile: its own random stream for dropout
    return 5e-2 if switch.autocast is not None else 1e-2 if switch.compile else 1e-3


def check_first_losses(label: str, chosen: Sequence[Switch], losses: dict[str, float]) -> None:
    """Raise unless every switch's first-step loss is within :func:`loss_tolerance` of the
    first switch's (fp32 eager), all steps having started from the same weights."""
    reference = losses[chosen[0].name]
    for switch in chosen:
        if abs(losses[switch.name] - reference) > loss_tolerance(switch) * abs(reference):
            raise AssertionError(
                f"{label}, {switch.name}: first-step loss {losses[switch.name]:.5f} differs "
                f"from fp32 eager {reference:.5f}"
            )


def measure(
    label: str,
    device: torch.device,
    batch: int,
    size: tuple[int, int],
    repeats: int,
    with_compile: bool,
) -> list[list[str]]:
    """Rows ``[model, switch, ms/step, img/s, speed-up, peak MiB]`` of one model."""
    names = ",".join(f"c{i}" for i in range(NUM_CLASSES))  # the task checks one name a class
    cfg = compose(
        [f"data.num_classes={NUM_CLASSES}", f"data.class_names=[{names}]", *MODELS[label]]
    )
    torch.manual_seed(0)
    base = build_task(cfg).to(device).train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *size, generator=generator).to(device)
    masks = torch.randint(0, NUM_CLASSES, (batch, *size), generator=generator).to(device)
    chosen = switches(device, with_compile)
    steps = {s.name: trainer_step(copy.deepcopy(base), s, images, masks) for s in chosen}
    # first step of every switch from the same weights: the losses must agree
    losses, peak_mib = {}, {}
    parameter_bytes = sum(p.numel() * p.element_size() for p in base.model.parameters())
    for name, step in steps.items():
        torch.manual_seed(1)  # the same dropout masks in eager mode
        if device.type == "cuda":  # what this step adds to memory, plus its own weights
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        losses[name] = float(step())
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() - before + parameter_bytes
            peak_mib[name] = f"{peak / 2**20:.0f}"
    check_first_losses(label, chosen, losses)
    reference = chosen[0].name
    # one untimed round more: compile's backward graph and cuDNN autotuning finish there
    times = compare(steps, repeats=repeats, warmup=1)
    return [
        [
            label,
            name,
            ms(t),
            f"{batch / t:.3g}",
            ratio(times[reference] / t),
            peak_mib.get(name, "-"),
        ]
        for name, t in times.items()
    ]


def run(quick: bool = False) -> str:
    """Time every model under every switch; return the Markdown section."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if quick:
        labels, batch, size, repeats = ["LR-ASPP MobileNetV3-L"], 2, (64, 64), 2
    elif device.type == "cuda":
        labels, batch, size, repeats = list(MODELS), 2, (512, 1024), 10
    else:  # 512x1024 steps of the ResNet-50 models take minutes each on a small CPU
        labels, batch, size, repeats = list(MODELS), 2, (128, 256), 3
    # compiling takes minutes, so --quick leaves it to tests/engine/test_speed.py
    no_compile = "skipped in --quick" if quick else compile_supported()
    rows = [
        row
        for label in labels
        for row in measure(label, device, batch, size, repeats, no_compile is None)
    ]
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    skipped = "" if no_compile is None else f" `compile` is not timed here: {no_compile}."
    return "\n\n".join(
        [
            f"## {TITLE} ({where})",
            f"What is timed: one training step on a batch of {batch}x3x{size[0]}x{size[1]} "
            f"({NUM_CLASSES} classes) - forward, cross-entropy (+ `task.aux_weight` x auxiliary "
            "loss), backward, AdamW - of each model built from its shipped config, under each "
            "switch. Every switch starts from the same weights, and its first-step loss is "
            "checked against fp32 eager (5% for autocast, 1% for compile, whose dropout "
            "draws other masks, 0.1% otherwise). Median of "
            f"{repeats} interleaved steps after two untimed ones. Speed-up = fp32 eager "
            f"time / this row's time (>1 is faster). Peak MiB (GPU only): the most memory "
            "allocated during the first step beyond what was allocated before it (weights, "
            "gradients, optimizer state, activations), plus the model's weights."
            f"{skipped}",
            table(
                ["model", "switch", "ms/step", "img/s", "speed-up vs fp32 eager", "peak MiB"],
                rows,
            ),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    run_alone(run, __doc__, argv)


if __name__ == "__main__":
    main()
