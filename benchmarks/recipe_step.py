"""The CamVid recipe's training step: FLOPs, the machine's matmul rates and speed switches.

python -m benchmarks.recipe_step [--quick] [--threads N]

The step is the one ``python train.py experiment=camvid_fpn_lite0`` runs: the task built from
the composed config (FPN on the EfficientNet-Lite0 encoder with its offline ImageNet weights,
11 classes), a synthetic batch of the recipe's shape (8x3x256x352, labels 0..10), the
task's loss (cross-entropy with the shipped run's median-frequency class weights), backward,
the task's own AdamW (its parameter groups and learning rates) and the weight EMA update.
The per-step learning-rate update and Lightning's loop are left out (the training-step
section measures the loop). In one process:

* FLOPs of one step (forward and backward; one multiply-add = 2 FLOPs, elementwise work
  such as norms, activations, the optimiser and the EMA not counted), per kind of
  convolution, by ``torch.utils.flop_counter.FlopCounterMode`` with the convolution-backward
  formula replaced by :func:`conv_backward_flop`: torch's own formula counts the weight
  gradient of a grouped convolution as if it were dense, ``groups`` times too many (``C``
  times for a depthwise layer of ``C`` channels). The section gives both counts.
* The machine's rates: fp32 and bf16 ``torch.mm`` of two 2048x2048 matrices.
* Each speed switch a run sets, from the same weights, timed interleaved with the matmuls
  (one of each per round): fp32 eager, ``callbacks.fast_paths.channels_last=true``,
  ``trainer.precision=bf16-mixed`` (autocast around forward and loss), both, and
  ``callbacks.fast_paths.compile=true`` (not with ``--quick``: compiling takes minutes).
  Each switch's first-step loss is checked against fp32 eager first
  (:func:`benchmarks.fast_paths.check_first_losses`). Achieved GFLOP/s = FLOPs per step /
  median step time, also as a fraction of the matmul rate of the step's precision.
* The FPN decoder's widths (``model.decoder.decoder_pyramid_channels`` /
  ``decoder_segmentation_channels``, :data:`WIDTHS`), frozen encoder stages
  (``task.frozen_modules``) and the larger offline encoders (EfficientNet-Lite1/2),
  :data:`VARIANTS`: trainable parameters, FLOPs per step and step time of each under
  bf16-mixed + channels_last, interleaved, against the shipped 256/128; the accuracy side
  of the trade is measured by training (RESULTS.md).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import compare, ms, ratio, run_alone, table
from benchmarks.fast_paths import Switch, check_first_losses, trainer_step
from segkit.engine.callbacks.speed import compile_supported
from segkit.tasks.optim import backbone_of
from segkit.tasks.semantic import SemanticSegmentationTask

TITLE = "The CamVid recipe's training step: FLOPs, machine limits and speed switches (CPU)"
EXPERIMENT = "camvid_fpn_lite0"
# the shipped run of the recipe: its config holds the class weights computed from the labels
SHIPPED = Path(__file__).resolve().parents[1] / "results/camvid/camvid_fpn_lite0/model.pt"
NUM_CLASSES = 11
BATCH, CROP = 8, (256, 352)  # the recipe's data.batch_size and RandomCrop
MATMUL_SIZE = 2048  # large enough that one thread's rate no longer grows with the size
# FPN decoder widths (pyramid, segmentation): smp's default first; segmentation a multiple of 32
WIDTHS = ((256, 128), (128, 64), (64, 32))


def conv_flops(batch: int, w_shape: Sequence[int], spatial: Sequence[int]) -> int:
    """FLOPs of a convolution's forward: 2 x ``batch x prod(w_shape) x prod(spatial)``
    multiply-adds, ``spatial`` being the output's size (the input's for a transposed
    convolution); ``w_shape`` already holds ``in_channels / groups``."""
    return 2 * batch * math.prod(w_shape) * math.prod(spatial)


def conv_backward_flop(
    grad_out_shape: Sequence[int],
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    _bias: object,
    _stride: object,
    _padding: object,
    _dilation: object,
    transposed: bool,
    _output_padding: object,
    _groups: int,
    output_mask: Sequence[bool],
    out_shape: object,
    **kwargs: object,
) -> int:
    """FLOPs of ``aten.convolution_backward``, grouped convolutions counted correctly.

    The input gradient and the weight gradient each repeat every multiply-add of the
    forward once, so each costs :func:`conv_flops` (torch's formula counts the weight
    gradient as a dense convolution instead, ``groups`` times that). The bias gradient is
    a sum: no multiply-adds. Arguments are the operator's, as shapes
    (``FlopCounterMode``'s ``custom_mapping``).
    """
    spatial = (x_shape if transposed else grad_out_shape)[2:]
    return conv_flops(x_shape[0], w_shape, spatial) * (int(output_mask[0]) + int(output_mask[1]))


CORRECTED = {torch.ops.aten.convolution_backward: conv_backward_flop}


def count_flops(forward: Callable[[], torch.Tensor], corrected: bool = True) -> tuple[int, int]:
    """FLOPs ``(forward, backward)`` of ``forward()`` and of the backward of the scalar it
    returns, as ``torch.utils.flop_counter.FlopCounterMode`` counts them.

    Args:
        forward: computes a scalar loss from tensors that require gradients.
        corrected: count convolution backward with :func:`conv_backward_flop`; ``False``:
            with torch's own formula.
    """
    with FlopCounterMode(display=False, custom_mapping=CORRECTED if corrected else None) as mode:
        loss = forward()
        before = mode.get_total_flops()
        loss.backward()
    return before, mode.get_total_flops() - before


@contextlib.contextmanager
def conv_layer_flops(model: nn.Module) -> Iterator[dict[str, list[int]]]:
    """Per ``nn.Conv2d`` of ``model``, the FLOPs of what runs within the block.

    Yields:
        layer name -> ``[forward, backward, backward by torch's formula]``, filled by
        forward hooks from the shapes each call sees: backward = the forward once per
        gradient computed (input: where the input requires one; weight); torch's formula
        counts the weight gradient ``groups`` times the forward.
    """
    layers: dict[str, list[int]] = {}

    def hook(name: str, conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> None:
        forward = conv_flops(x.shape[0], conv.weight.shape, out.shape[2:])
        input_grad = forward if x.requires_grad else 0
        weight_grad = forward if conv.weight.requires_grad else 0
        counts = (forward, input_grad + weight_grad, input_grad + conv.groups * weight_grad)
        sums = layers.setdefault(name, [0, 0, 0])
        for i, value in enumerate(counts):
            sums[i] += value

    handles = [
        module.register_forward_hook(
            lambda conv, args, out, name=name: hook(name, conv, args[0], out)
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    try:
        yield layers
    finally:
        for handle in handles:
            handle.remove()


def conv_kind(conv: nn.Conv2d, encoder: set[int]) -> str:
    """``"encoder depthwise 5x5"``, ``"decoder + head dense 3x3"``, ...: where a convolution
    sits and what it computes."""
    part = "encoder" if id(conv) in encoder else "decoder + head"
    size = "x".join(str(k) for k in conv.kernel_size)
    if conv.groups == 1:
        shape = "1x1" if size == "1x1" else f"dense {size}"
    elif conv.groups == conv.in_channels:
        shape = f"depthwise {size}"
    else:
        shape = f"grouped ({conv.groups}) {size}"
    return f"{part} {shape}"


def flop_rows(
    model: nn.Module, forward: Callable[[], torch.Tensor]
) -> tuple[list[list[str]], dict[str, int]]:
    """The FLOPs table's rows and totals (``forward``, ``backward``, ``torch_backward``,
    and the forward FLOPs of ``decoder_dense`` 3x3 convolutions and the ``encoder``) of one
    step of ``model``: per kind of convolution from :func:`conv_layer_flops`, the totals
    from :func:`count_flops` (a row "other operations" holds any difference)."""
    with conv_layer_flops(model) as layers:
        totals = dict(zip(("forward", "backward"), count_flops(forward), strict=True))
    model.zero_grad(set_to_none=True)
    totals["torch_backward"] = count_flops(forward, corrected=False)[1]
    model.zero_grad(set_to_none=True)
    backbone = backbone_of(model)
    encoder = {id(m) for m in backbone.modules()} if backbone is not None else set()
    modules = dict(model.named_modules())
    kinds: dict[str, list[int]] = {}  # kind -> [layers, forward, backward, torch's]
    for name, counts in layers.items():
        sums = kinds.setdefault(conv_kind(modules[name], encoder), [0, 0, 0, 0])
        for i, value in enumerate((1, *counts)):
            sums[i] += value
    keys = ("forward", "backward", "torch_backward")
    other = [totals[k] - sum(v[i + 1] for v in kinds.values()) for i, k in enumerate(keys)]
    if any(other):  # matmuls, or convolutions that are no nn.Conv2d
        kinds["other operations"] = [0, *other]
    totals["decoder_dense"] = kinds.get("decoder + head dense 3x3", [0, 0])[1]
    totals["encoder"] = sum(v[1] for k, v in kinds.items() if k.startswith("encoder"))
    ordered = sorted(kinds.items(), key=lambda item: -item[1][1])
    ordered.append(("**step total**", [len(layers), *(totals[k] for k in keys)]))
    rows = [
        [
            kind,
            str(count) if count else "-",
            f"{f / 1e9:.2f}",
            f"{100 * f / totals['forward']:.1f}%",
            f"{b / 1e9:.2f}",
            f"{t / 1e9:.2f}",
            ratio(t / b) if b else "-",
        ]
        for kind, (count, f, b, t) in ordered
    ]
    return rows, totals


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_support() -> str:
    """What the CPU and torch report about bf16 arithmetic."""
    flags = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"})
    onednn = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return (
        f"oneDNN bf16 supported: {'yes' if onednn else 'no'}; CPU flags: "
        f"{', '.join(flags) or 'none of avx512f, avx512_bf16, amx_bf16, amx_tile'}; torch CPU "
        f"capability {torch.backends.cpu.get_cpu_capability()}"
    )


def matmul(dtype: torch.dtype, size: int) -> Callable[[], torch.Tensor]:
    """One ``torch.mm`` of two random ``size x size`` matrices of ``dtype`` (2 size^3 FLOPs)."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    out = torch.empty(size, size, dtype=dtype)
    return lambda: torch.mm(a, b, out=out)


def recipe_task(quick: bool, overrides: Sequence[str] = ()) -> tuple[SemanticSegmentationTask, str]:
    """The recipe's task (with ``overrides``) in training mode and a phrase naming its
    weights."""
    from segkit.config import compose
    from segkit.engine.checkpoints import load_checkpoint
    from segkit.tasks import build_task

    overrides = [f"experiment={EXPERIMENT}", *overrides]
    if quick:
        overrides.append("model.encoder_weights=null")
    cfg = compose(overrides)
    if SHIPPED.is_file():  # median_frequency needs the labels; the shipped run resolved it
        cfg.loss.class_weights = load_checkpoint(SHIPPED)["config"]["loss"]["class_weights"]
        loss = "class weights of the shipped run"
    else:
        cfg.loss.class_weights = None
        loss = f"no class weights ({SHIPPED.relative_to(SHIPPED.parents[3])} absent)"
    weights = cfg.model.encoder_weights
    encoder = f"encoder weights `{weights}`" if weights else "random encoder weights"
    torch.manual_seed(0)
    return build_task(cfg).train(), f"{encoder}, {loss}"


def frozen(blocks: int) -> str:
    """The ``task.frozen_modules`` override freezing Lite0's stem and its first ``blocks``
    stages (as the smp model names them inside segkit's wrapper)."""
    names = ["conv_stem", "bn1", *(f"blocks.{i}" for i in range(blocks))]
    return "task.frozen_modules=[" + ",".join(f"model.encoder.model.{n}" for n in names) + "]"


def decoder(pyramid: int, segmentation: int) -> str:
    """The ``model.decoder`` override of FPN's widths."""
    widths = f"decoder_pyramid_channels:{pyramid},decoder_segmentation_channels:{segmentation}"
    return f"model.decoder={{{widths}}}"


def encoder(size: int) -> list[str]:
    """The overrides putting the offline ImageNet EfficientNet-Lite``size`` under the FPN."""
    return [
        f"model.encoder_name=tu-tf_efficientnet_lite{size}",
        f"model.encoder_weights=efficientnet-lite{size}",
    ]


# label -> overrides: the decoder widths (WIDTHS), frozen encoder stages at 128/64, then the
# larger offline encoders at 128/64 (their stages have Lite0's names, so frozen() fits them)
VARIANTS = {
    **{f"`{p}/{s}`": [decoder(p, s)] for p, s in WIDTHS},
    "`128/64`, stem + stages 1-2 frozen (stride 2-4)": [decoder(128, 64), frozen(2)],
    "`128/64`, stem + stages 1-3 frozen (stride 2-8)": [decoder(128, 64), frozen(3)],
    "Lite1 encoder, `128/64`": [*encoder(1), decoder(128, 64)],
    "Lite2 encoder, `128/64`": [*encoder(2), decoder(128, 64)],
    "Lite2 encoder, `128/64`, stem + stages 1-2 frozen": [
        *encoder(2),
        decoder(128, 64),
        frozen(2),
    ],
}


def variant_section(
    images: torch.Tensor, masks: torch.Tensor, quick: bool, repeats: int
) -> list[str]:
    """The decoder-width and frozen-stage paragraph and table (see the module docstring)."""
    fast = Switch("bf16-mixed + channels_last", autocast=torch.bfloat16, channels_last=True)
    tasks = {name: recipe_task(quick, overrides)[0] for name, overrides in VARIANTS.items()}
    counts = {
        name: flop_rows(task.model, lambda t=task: t.training_loss(images, masks)[0])[1]
        for name, task in tasks.items()
    }
    steps = {}
    for name, task in tasks.items():
        steps[name] = trainer_step(task, fast, images, masks, as_configured=True)
        steps[name]()  # first step: allocations and oneDNN's kernel choice
    times = compare(steps, repeats)
    reference = times[next(iter(VARIANTS))]
    rows = []
    for name, task in tasks.items():
        flops = counts[name]
        trainable = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
        rows.append([
            name,
            f"{trainable / 1e6:.3f}",
            f"{(flops['forward'] + flops['backward']) / 1e9:.4g}",
            f"{flops['decoder_dense'] / 1e9:.3g}",
            ms(times[name]),
            ratio(reference / times[name]),
        ])  # fmt: skip
    return [
        "Decoder widths (`model.decoder.decoder_pyramid_channels` / "
        "`decoder_segmentation_channels`), frozen encoder stages (`task.frozen_modules`: "
        "no gradient, eval mode; at the input end their backward pass is skipped) and the "
        "larger offline encoders (`model.encoder_name=tu-tf_efficientnet_lite1/2`), each step "
        f"under bf16-mixed + channels_last, interleaved (median of {repeats} rounds after one "
        f"untimed step each); speed-up against the shipped {WIDTHS[0][0]}/{WIDTHS[0][1]} with "
        "every stage trained. FLOPs per step count only the gradients computed:",
        table(
            [
                "variant",
                "trainable params (M)",
                "GFLOP/step",
                "decoder dense 3x3 forward GFLOP",
                "ms/step",
                "speed-up",
            ],
            rows,
        ),  # fmt: skip
    ]


def run(quick: bool = False) -> str:
    """Count, measure and time the recipe's step; return the Markdown section."""
    if quick:
        batch, size, matmul_size, repeats = 2, (64, 96), 256, 1
    else:
        batch, size, matmul_size, repeats = BATCH, CROP, MATMUL_SIZE, 7
    threads = torch.get_num_threads()
    task, weights = recipe_task(quick)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *size, generator=generator)
    masks = torch.randint(0, NUM_CLASSES, (batch, *size), generator=generator)
    flops_table, flops = flop_rows(task.model, lambda: task.training_loss(images, masks)[0])
    step_flops = flops["forward"] + flops["backward"]

    no_compile = "skipped in --quick" if quick else compile_supported()
    bf16 = torch.bfloat16
    chosen = [
        Switch("fp32 eager (reference)"),
        Switch("channels_last", channels_last=True),
        Switch("bf16-mixed", autocast=bf16),
        Switch("bf16-mixed + channels_last", autocast=bf16, channels_last=True),
    ]
    if no_compile is None:
        chosen.append(Switch("compile", compile=True))
    set_by = {
        "fp32 eager (reference)": "(defaults)",
        "channels_last": "`callbacks.fast_paths.channels_last=true`",
        "bf16-mixed": "`trainer.precision=bf16-mixed`",
        "bf16-mixed + channels_last": "both",
        "compile": "`callbacks.fast_paths.compile=true`",
    }
    steps = {
        s.name: trainer_step(copy.deepcopy(task), s, images, masks, as_configured=True)
        for s in chosen
    }
    losses = {}
    for name, step in steps.items():  # the first step of each, from the same weights
        torch.manual_seed(1)  # the same dropout masks in eager mode
        losses[name] = float(step())
    check_first_losses(EXPERIMENT, chosen, losses)
    matmuls = {"fp32": matmul(torch.float32, matmul_size), "bf16": matmul(bf16, matmul_size)}
    # one untimed round more: compile's backward graph finishes there
    times = compare({**{f"{k} matmul": f for k, f in matmuls.items()}, **steps}, repeats)
    rates = {k: 2 * matmul_size**3 / times[f"{k} matmul"] for k in matmuls}
    machine_rows = [
        [
            f"{k} `torch.mm` {matmul_size}x{matmul_size}",
            ms(times[f"{k} matmul"]),
            f"{rates[k] / 1e9:.1f}",
            f"{rates[k] / 1e9 / threads:.1f}",
            ratio(rates[k] / rates["fp32"]),
        ]
        for k in matmuls
    ]
    reference = times[chosen[0].name]
    switch_rows, achieved = [], {}
    for switch in chosen:
        t = times[switch.name]
        precision = "bf16" if switch.autocast is not None else "fp32"
        achieved[switch.name] = step_flops / t
        switch_rows.append(
            [
                switch.name,
                set_by[switch.name],
                f"{losses[switch.name]:.4f}",
                ms(t),
                f"{batch / t:.3g}",
                ratio(reference / t),
                f"{achieved[switch.name] / 1e9:.1f}",
                f"{100 * achieved[switch.name] / rates[precision]:.0f}% of {precision}",
            ]
        )

    best = max(chosen, key=lambda s: achieved[s.name])
    fp32 = achieved[chosen[0].name]
    skipped = "" if no_compile is None else f" `compile` is not timed here: {no_compile}."
    return "\n\n".join(
        [
            f"## {TITLE}",
            f"What is counted and timed: one training step of `experiment={EXPERIMENT}` as "
            f"training runs it, on a synthetic batch of {batch}x3x{size[0]}x{size[1]} "
            f"({NUM_CLASSES} classes; {weights}): forward, cross-entropy, backward, the task's "
            "AdamW (its parameter groups) and the weight-EMA update, in a bare loop. FLOPs: "
            "one multiply-add = 2, convolutions and matmuls only, counted by "
            "`torch.utils.flop_counter.FlopCounterMode` with its convolution-backward formula "
            "replaced by `benchmarks.recipe_step.conv_backward_flop` (each gradient repeats "
            "the forward's multiply-adds once; the first layer has no input gradient); "
            "\"torch's count\" is the counter's own formula.",
            table(
                [
                    "convolutions",
                    "layers",
                    "forward GFLOP",
                    "% of forward",
                    "backward GFLOP",
                    "backward GFLOP, torch's count",
                    "torch's / correct",
                ],
                flops_table,
            ),
            f"The machine's rates, timed in the same rounds as the steps below ({threads} torch "
            f"thread{'s' if threads > 1 else ''}); {bf16_support()}.",
            table(
                ["matmul", "ms", "GFLOP/s", "GFLOP/s per thread", "vs fp32 matmul"],
                machine_rows,
            ),
            "Speed switches: every switch starts from the same weights; its first-step loss "
            "is checked against fp32 eager (5% for autocast, 1% for compile, whose dropout "
            f"draws other masks, 0.1% otherwise). Median of {repeats} interleaved rounds (one "
            "step of each switch and one of each matmul per round) after the checked step and "
            "one untimed round. Speed-up = fp32 eager time / this row's time (>1 is faster). "
            f"GFLOP/s = {step_flops / 1e9:.1f} GFLOP per step / median step time; the last "
            "column compares it with the matmul rate of the step's precision (autocast: "
            f"bf16).{skipped}",
            table(
                [
                    "switch",
                    "set by",
                    "first-step loss",
                    "ms/step",
                    "img/s",
                    "speed-up vs fp32 eager",
                    "GFLOP/s",
                    "of the matmul rate",
                ],
                switch_rows,
            ),
            f"Reading: one step is {step_flops / 1e9:.1f} GFLOP ({flops['forward'] / 1e9:.1f} "
            f"forward, {flops['backward'] / 1e9:.1f} backward); "
            f"{100 * flops['decoder_dense'] / flops['forward']:.0f}% of the forward FLOPs are "
            "the decoder's dense 3x3 convolutions and "
            f"{100 * flops['encoder'] / flops['forward']:.0f}% the whole encoder. torch's "
            f"counter puts the backward at {flops['torch_backward'] / 1e9:.1f} GFLOP, "
            f"{flops['torch_backward'] / flops['backward']:.1f}x the correct count: it counts "
            "the weight gradient of each grouped convolution as a dense one, so the "
            "encoder's depthwise layers dominate its total although they compute little. "
            f"fp32 eager reaches {fp32 / 1e9:.1f} GFLOP/s, "
            f"{100 * fp32 / rates['fp32']:.0f}% of the fp32 matmul rate; the fastest switch "
            f"here is {best.name} ({achieved[best.name] / 1e9:.1f} GFLOP/s, "
            f"{ratio(reference / times[best.name])} fp32 eager).",
            *variant_section(images, masks, quick, repeats),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    run_alone(run, __doc__, argv)


if __name__ == "__main__":
    main()
