"""Model summary: parameters, GMACs/GFLOPs, output shape and output stride of a ``conf/model``.

    python -m segkit.cli.model_summary model=pspnet [data=folder] [+input_size=[512,1024]]
    python -m segkit.cli.model_summary --table [+input_size=[512,1024]] [data.num_classes=19]

The arguments are Hydra overrides of ``conf/train.yaml``; only ``cfg.model`` is built. The
model is built on PyTorch's ``meta`` device (shapes only: no memory, no arithmetic), so even
big models at 512x1024 take seconds; models with an operator that has no meta kernel are run
on the CPU instead.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` for one image in eval
mode. Both conventions are reported, labelled: **GMACs** (one multiply-add = 1, the
convention of many papers and of torchvision's "GFLOPS" column) and **GFLOPs** (one
multiply-add = 2 FLOPs, what FlopCounterMode counts), so GFLOPs = 2 x GMACs. Convolutions,
matrix products and attention are counted, element-wise operations (batch norm,
activations, pooling, interpolation) are not.
The output stride is the input height over the smallest map produced by a strided
convolution or pooling, functional calls included (dilated stages do not count), rounded
to a power of two.
``--table`` prints the markdown table of every ``conf/model/*.yaml`` for docs/models.md
(defaults: 19 classes, 512x1024, as Cityscapes).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from segkit.config import CONF_DIR, compose
from segkit.models.smp import SMPModel
from segkit.models.weights import build_model

TABLE_INPUT_SIZE = (512, 1024)
TABLE_NUM_CLASSES = 19


@dataclass
class Summary:
    """What :func:`summarize` measures."""

    target: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] | None  # None: not semantic logits (e.g. detections)
    output_stride: int | None
    flops: int | None  # None: not measured (no meta kernel and no CPU run asked for)
    total_params: int
    trainable_params: int
    block_params: dict[str, int]

    @property
    def macs(self) -> int | None:
        """Multiply-adds: half of :attr:`flops` (which counts a multiply-add as 2 FLOPs)."""
        return None if self.flops is None else self.flops // 2


def unwrap(model: nn.Module) -> nn.Module:
    """The smp model inside :class:`SMPModel` (its blocks are smp's)."""
    while isinstance(model, SMPModel):
        model = model.model
    return model


def count_parameters(model: nn.Module) -> tuple[int, int, dict[str, int]]:
    """``(total, trainable, {top-level block: parameters})`` of ``model``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = {
        name: sum(p.numel() for p in child.parameters())
        for name, child in unwrap(model).named_children()
    }
    return total, trainable, blocks


class StridedOutputs(TorchFunctionMode):
    """Records the heights of outputs of strided ``conv2d``/``max_pool2d``/``avg_pool2d``.

    A torch-function mode sees functional calls too (e.g. ``F.max_pool2d`` with indices).
    """

    def __init__(self) -> None:
        super().__init__()
        self.heights: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "conv2d":
            stride = args[3] if len(args) > 3 else kwargs.get("stride", 1)
        elif name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
            kernel = args[1] if len(args) > 1 else kwargs["kernel_size"]
            stride = (args[2] if len(args) > 2 else kwargs.get("stride")) or kernel
        else:
            return output
        tensor = output[0] if isinstance(output, tuple) else output
        if max(_pair(stride)) > 1:
            self.heights.append(tensor.shape[-2])
        return output


def _pair(value: int | Sequence[int]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


def measure(model: nn.Module, x: torch.Tensor) -> tuple[int, torch.Size | None, int | None]:
    """Run ``model`` (eval mode) on ``x [1, C_in, H, W]``.

    Returns:
        ``(FLOPs, logits shape or None when the output is not logits, output stride or None
        when nothing is strided)``.
    """
    strided = StridedOutputs()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, strided:
        output = model.eval()(x)
    if isinstance(output, dict):
        output = output.get("out")
    # ceil rounding makes e.g. 97 -> 7 at stride 16; the ratio rounds to a power of two
    smallest = min(strided.heights, default=None)
    stride = 2 ** round(math.log2(x.shape[-2] / smallest)) if smallest else None
    shape = output.shape if isinstance(output, torch.Tensor) else None
    return counter.get_total_flops(), shape, stride


def summarize(
    model_cfg: DictConfig,
    input_size: Sequence[int],
    in_channels: int = 3,
    cpu_fallback: bool = True,
) -> Summary:
    """Build ``model_cfg`` and measure it on one ``[1, in_channels, H, W]`` input.

    Args:
        model_cfg: a ``conf/model`` node.
        input_size: ``(H, W)``.
        in_channels: input channels.
        cpu_fallback: run on the CPU when an operator has no meta kernel; otherwise leave
            FLOPs, output shape and stride as ``None``.
    """
    shape = (1, in_channels, *input_size)
    with torch.device("meta"):
        model = build_model(model_cfg)
    try:
        flops, out_shape, stride = measure(model, torch.empty(shape, device="meta"))
    except NotImplementedError:  # an operator without a meta kernel (data-dependent shapes)
        flops, out_shape, stride = None, None, None
        if cpu_fallback:
            model = build_model(model_cfg)
            flops, out_shape, stride = measure(model, torch.zeros(shape))
    total, trainable, blocks = count_parameters(model)
    return Summary(
        target=model_cfg._target_,
        input_shape=shape,
        output_shape=None if out_shape is None else tuple(out_shape),
        output_stride=stride,
        flops=flops,
        total_params=total,
        trainable_params=trainable,
        block_params=blocks,
    )


def _giga(count: int | None, digits: int) -> str:
    return "n/a" if count is None else f"{count / 1e9:.{digits}f}"


def format_summary(summary: Summary) -> str:
    """Human-readable multi-line report."""
    lines = [
        f"model:          {summary.target}",
        f"input:          {list(summary.input_shape)}",
        f"output:         {summary.output_shape and list(summary.output_shape)}",
        f"output stride:  {summary.output_stride}",
        f"GMACs:          {_giga(summary.macs, 2)}  (multiply-add = 1)",
        f"GFLOPs:         {_giga(summary.flops, 2)}  (multiply-add = 2 FLOPs)",
        f"parameters:     {summary.total_params:,} total, {summary.trainable_params:,} trainable",
    ]
    lines += [f"  {name:<14}{count:>14,}" for name, count in summary.block_params.items()]
    return "\n".join(lines)


ARCHITECTURE_TABLE = "../RESULTS.md#camvid-architecture-table"  # links from docs/
# models whose real-data result is not a CamVid row: the classic U-Net's is on its paper's
# EM data; Mask R-CNN is an instance model
OTHER_RESULTS = {"unet": "[ISBI 2012](../RESULTS.md#isbi-2012-em-u-net)", "maskrcnn": "-"}


def camvid_cell(name: str, results: Path) -> str:
    """docs/models.md's link to a model's row of RESULTS.md's architecture table: the val mIoU
    of ``results/<name>`` or, for a config whose protocol row uses the Lite0 encoder,
    ``results/<name>_lite0``; :data:`OTHER_RESULTS` for models scored elsewhere; otherwise a
    link to the table (a run to come, or the reason a model has no row)."""
    for candidate in (name, f"{name}_lite0"):
        metrics = results / candidate / "metrics.json"
        if metrics.is_file():
            miou = 100 * json.loads(metrics.read_text())["mIoU"]
            via = "" if candidate == name else f" (`{candidate}`)"
            return f"[{miou:.1f}]({ARCHITECTURE_TABLE}){via}"
    return OTHER_RESULTS.get(name, f"[see table]({ARCHITECTURE_TABLE})")


def model_table(overrides: Sequence[str] = (), names: Sequence[str] | None = None) -> str:
    """Markdown table of ``conf/model/*.yaml``: parameters, GMACs, GFLOPs, output stride.

    Args:
        overrides: extra Hydra overrides; ``+input_size=[H,W]`` and ``data.num_classes``
            replace the defaults (512x1024, 19 classes).
        names: model configs to list; default: every file in ``conf/model``.
    """
    rows = [
        "| model | class | params (M) | GMACs | GFLOPs | output stride | CamVid val mIoU |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    results = CONF_DIR.parent / "results" / "camvid" / "camvid_bench"
    base = [f"data.num_classes={TABLE_NUM_CLASSES}", *overrides]
    input_size = TABLE_INPUT_SIZE
    if names is None:
        names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    for name in names:
        cfg = compose([*base, f"model={name}"])
        input_size = tuple(cfg.get("input_size", TABLE_INPUT_SIZE))
        s = summarize(cfg.model, input_size, cpu_fallback=False)
        target = s.target.rsplit(".", 1)[-1]
        if target == "smp_model":
            target = f"smp {cfg.model.arch}/{cfg.model.encoder_name}"
        rows.append(
            f"| `{name}` | {target} | {s.total_params / 1e6:.1f} | {_giga(s.macs, 1)} "
            f"| {_giga(s.flops, 1)} | {s.output_stride or 'n/a'} | {camvid_cell(name, results)} |"
        )
    header = (
        f"Input 1x3x{input_size[0]}x{input_size[1]}, {cfg.data.num_classes} classes, eval mode "
        "(auxiliary heads counted in params, not in GMACs/GFLOPs; GMACs count a multiply-add "
        "once, GFLOPs twice; n/a: data-dependent shapes, e.g. detection models); the last "
        "column links the model's row of the CamVid architecture table (RESULTS.md); "
        "generated by `python -m segkit.cli.model_summary --table`."
    )
    return header + "\n\n" + "\n".join(rows)


def main(argv: Sequence[str]) -> None:
    """Entry point: ``argv`` are Hydra overrides, plus ``--table``."""
    overrides = [a for a in argv if a != "--table"]
    if "--table" in argv:
        print(model_table(overrides))
        return
    cfg = compose(overrides)
    input_size = tuple(cfg.get("input_size", (512, 1024)))
    in_channels = cfg.data.get("in_channels", 3)  # data=isbi2012: greyscale
    print(format_summary(summarize(cfg.model, input_size, in_channels=in_channels)))


if __name__ == "__main__":
    main(sys.argv[1:])
