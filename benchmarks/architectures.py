"""Cost of each architecture of the CamVid protocol: parameters, GMACs, CPU time per frame.

python -m benchmarks.architectures [--quick] [--threads N]

For every model config of RESULTS.md's architecture table (``experiment=camvid_bench
model=<name>``, 11 classes, random weights: cost does not depend on them):

* parameters and GMACs of one 360x480 frame (:func:`segkit.cli.model_summary.summarize`; one
  multiply-add = 1 MAC);
* CPU inference milliseconds per 360x480 frame, batch 1, eval mode, ``torch.no_grad``:
  eager PyTorch, and ONNX Runtime on the graph predict.py's ``backend=onnxruntime`` runs
  (:func:`segkit.deploy.export.export_onnx`, dynamic batch and size); the models of one backend
  are timed interleaved, round by round;
* seconds of one training step as the protocol runs it (batch 8 of 160x224 crops,
  forward, backward and an AdamW step), interleaved the same way: times 46 steps gives an
  epoch's training cost, which decides whether a from-scratch model fits the protocol; the
  published VGG16-based networks (:data:`TOO_COSTLY`) are timed for this step only.

Besides the Markdown section, a full (not ``--quick``) run writes the figures to
``results/camvid/camvid_bench/costs.json``, which ``python -m segkit.cli.compare --costs`` reads
into RESULTS.md's table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import compare, machine, ms, run_alone, table

TITLE = "CamVid architectures: parameters, GMACs, CPU inference and training step"
ROOT = Path(__file__).resolve().parents[1]
COSTS = ROOT / "results" / "camvid" / "camvid_bench" / "costs.json"
# the rows of RESULTS.md's architecture table, in its order of introduction
MODELS = (
    "fpn", "unet_lite0", "deeplabv3_lite0", "deeplabv3plus_lite0", "pspnet_lite0",
    "fcn8s_lite0", "lraspp_lite0", "segformer", "upernet", "unet", "segnet_basic",
)  # fmt: skip
# the published VGG16-based networks, measured for the training step only: their cost per
# epoch is what keeps them out of the protocol (RESULTS.md names them with this figure)
TOO_COSTLY = ("fcn8s", "segnet", "deconvnet")
FRAME = (360, 480)
CROP, BATCH = (160, 224), 8  # experiment=camvid_bench's training crops and batch


def build(name: str) -> tuple[nn.Module, Any]:
    """The model of ``experiment=camvid_bench model=<name>`` with random weights."""
    from segkit.config import compose
    from segkit.models.weights import build_model

    overrides = ["experiment=camvid_bench", f"model={name}"]
    cfg = compose(overrides)
    if "encoder_weights" in cfg.model:
        cfg.model.encoder_weights = None
    return build_model(cfg.model), cfg.model


def train_step(model: nn.Module, crop: tuple[int, int], batch: int) -> Callable[[], None]:
    """One AdamW training step of ``model`` on a fixed random batch (auxiliary head
    included, weighted 0.4 as the task does)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, *crop)
    masks = torch.randint(0, 11, (batch, *crop))

    def step() -> None:
        model.train()
        output = model(images)
        if isinstance(output, dict):
            loss = nn.functional.cross_entropy(output["out"], masks)
            if output.get("aux") is not None:
                loss = loss + 0.4 * nn.functional.cross_entropy(output["aux"], masks)
        else:
            loss = nn.functional.cross_entropy(output, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def onnx_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], Any] | str:
    """A zero-argument ONNX Runtime call on ``x``, or why the model did not export."""
    from segkit.deploy.export import export_onnx
    from segkit.deploy.graph import ExportedModel, onnx_session

    try:
        data = export_onnx(ExportedModel(model), tuple(x.shape[-2:]), dynamic=True)
    except Exception as error:  # reported in the table, not fatal to the other models
        return f"export failed: {type(error).__name__}"
    session = onnx_session(data)
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def run(quick: bool = False) -> str:
    """Measure every model; write :data:`COSTS` (not with ``quick``); return the section."""
    from segkit.cli.model_summary import summarize

    names = MODELS[:2] if quick else MODELS
    frame, crop, batch = ((64, 96), (64, 64), 2) if quick else (FRAME, CROP, BATCH)
    repeats = 1 if quick else 3
    x = torch.randn(1, 3, *frame)
    summaries, eager, onnx, steps, notes = {}, {}, {}, {}, {}
    for name in names:
        model, model_cfg = build(name)
        model.eval()
        summaries[name] = summarize(model_cfg, frame)
        runner = onnx_runner(model, x)
        if isinstance(runner, str):
            notes[name] = runner
        else:
            onnx[name] = runner
        eager[name] = lambda m=model: m(x)
        steps[name] = train_step(model, crop, batch)
    with torch.no_grad():
        eager_s = compare(eager, repeats)
    onnx_s = compare(onnx, repeats)
    costly = () if quick else TOO_COSTLY
    for name in costly:
        model, model_cfg = build(name)
        summaries[name] = summarize(model_cfg, frame)
        steps[name] = train_step(model, crop, batch)
    step_s = compare(steps, repeats)
    record: dict[str, Any] = {"machine": machine(), "threads": torch.get_num_threads()}
    record["models"] = {
        name: {
            "params_m": summaries[name].total_params / 1e6,
            "gmacs": None if summaries[name].flops is None else summaries[name].flops / 2e9,
            "eager_ms": 1e3 * eager_s[name],
            "onnxruntime_ms": 1e3 * onnx_s[name] if name in onnx_s else None,
            "train_step_s": step_s[name],
        }
        for name in names
    }
    record["too_costly"] = {
        name: {
            "params_m": summaries[name].total_params / 1e6,
            "gmacs": None if summaries[name].flops is None else summaries[name].flops / 2e9,
            "train_step_s": step_s[name],
        }
        for name in costly
    }
    if not quick:
        COSTS.parent.mkdir(parents=True, exist_ok=True)
        COSTS.write_text(json.dumps(record, indent=1) + "\n")
    rows = []
    for name, values in record["models"].items():
        rows.append(
            [
                f"`{name}`",
                f"{values['params_m']:.2f}",
                "n/a" if values["gmacs"] is None else f"{values['gmacs']:.1f}",
                ms(eager_s[name]),
                notes.get(name) or ms(onnx_s[name]),
                f"{values['train_step_s']:.2f}",
                f"{46 * values['train_step_s'] / 60:.1f}",
            ]
        )
    for name, values in record["too_costly"].items():
        rows.append(
            [
                f"`{name}` (not in the protocol)",
                f"{values['params_m']:.2f}",
                "n/a" if values["gmacs"] is None else f"{values['gmacs']:.1f}",
                "-",
                "-",
                f"{values['train_step_s']:.2f}",
                f"{46 * values['train_step_s'] / 60:.1f}",
            ]
        )
    header = ["`model=`", "params (M)", "GMACs", "ms/frame eager", "ms/frame ORT"]
    header += [f"s/train step (batch {batch}, {crop[0]}x{crop[1]})", "min/epoch (46 steps)"]
    return "\n\n".join(
        [
            f"## {TITLE}",
            f"What is timed: each model config of `experiment=camvid_bench` (11 classes, "
            f"random weights) on one {frame[0]}x{frame[1]} frame, batch 1, eval mode, "
            f"`torch.no_grad`, eager PyTorch and ONNX Runtime (dynamic export, as predict.py's "
            f"`backend=onnxruntime`), and one AdamW training step on {batch} crops of "
            f"{crop[0]}x{crop[1]}; {torch.get_num_threads()} threads. Median of {repeats} "
            "repetitions after a warm-up round, the models of each column interleaved. "
            "GMACs: one multiply-add = 1, at the frame size (`segkit.cli.model_summary`). "
            "min/epoch counts training steps only (validation excluded).",
            table(header, rows),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    run_alone(run, __doc__, argv)


if __name__ == "__main__":
    main()
