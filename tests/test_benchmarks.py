"""Fast paths equal their reference paths, and every benchmark script runs in --quick mode."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.recipe_step import conv_layer_flops, count_flops
from segkit.evaluation.metrics import (
    ConfusionMatrix,
    _scatter_histogram,
    confusion_matrix,
    labels_from_logits,
)

from .helpers import PROJECT_ROOT


def numpy_confmat(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None
) -> np.ndarray:
    """Reference: keep pixels whose target and prediction are classes (and not ignored)."""
    pred, target = pred.astype(np.int64).ravel(), target.astype(np.int64).ravel()
    keep = (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    index = num_classes * target[keep] + pred[keep]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def labels(rng: np.random.Generator, num_classes: int, dtype: torch.dtype, extra: list[int]):
    """[2, 13, 17] labels in [0, C) with ~20% of pixels set to values from ``extra``."""
    values = rng.integers(0, num_classes, size=(2, 13, 17))
    if extra:
        noise = rng.random(values.shape) < 0.2
        values[noise] = rng.choice(extra, size=int(noise.sum()))
    return torch.from_numpy(values).to(dtype)


DTYPE_CASES = [
    (torch.uint8, [255]),
    (torch.int8, [-1, -128, 127]),
    (torch.int16, [-1, 255, 32767]),
    (torch.int32, [-100, 255, 65536 + 3]),  # 65539 must not wrap to class 3 in int16
    (torch.int64, [-100, 255, 2**40 + 1]),
    (torch.int64, [-100, -1, 255, 32767]),  # fits int16: narrowed first on the CPU
]


@pytest.mark.parametrize(("dtype", "extra"), DTYPE_CASES, ids=[f"{d}{e}" for d, e in DTYPE_CASES])
@pytest.mark.parametrize("ignore_index", [255, None, 0, -100])
def test_confusion_matrix_matches_numpy_for_every_dtype(dtype, extra, ignore_index):
    rng = np.random.default_rng(0)
    target = labels(rng, 5, dtype, extra)
    preds = labels(rng, 5, dtype, extra)  # out-of-range predictions are dropped too
    got = confusion_matrix(preds, target, 5, ignore_index)
    want = numpy_confmat(preds.numpy(), target.numpy(), 5, ignore_index)
    assert got.dtype == torch.int64 and got.is_contiguous()
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("num_classes", [1, 2, 179, 180, 300])
def test_confusion_matrix_matches_numpy_for_int16_and_int32_indices(num_classes):
    # (C+2)^2 - 1 <= 32767 up to C = 179: the fused index switches to int32 at C = 180
    rng = np.random.default_rng(num_classes)
    target = labels(rng, num_classes, torch.int64, [255])
    preds = labels(rng, num_classes, torch.int64, [])
    got = confusion_matrix(preds, target, num_classes, 255)
    np.testing.assert_array_equal(
        got.numpy(), numpy_confmat(preds.numpy(), target.numpy(), num_classes, 255)
    )


def test_bool_labels_are_two_classes():
    target = torch.tensor([[True, False, True, True]])
    preds = torch.tensor([[True, True, False, True]])
    assert confusion_matrix(preds, target, 2, None).tolist() == [[0, 1], [1, 2]]


def test_scatter_histogram_equals_bincount():
    # the off-CPU histogram, run on the CPU, against torch.bincount
    index = torch.from_numpy(np.random.default_rng(1).integers(0, 441, size=5000))
    for dtype in (torch.int16, torch.int32, torch.int64):
        got = _scatter_histogram(index.to(dtype), 441)
        assert torch.equal(got, torch.bincount(index, minlength=441))


def test_confusion_matrix_is_exact_in_deterministic_mode():
    rng = np.random.default_rng(2)
    target, preds = labels(rng, 19, torch.int64, [255]), labels(rng, 19, torch.int64, [])
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        metric = ConfusionMatrix(19, ignore_index=255)
        metric.update(preds, target)
    finally:
        torch.use_deterministic_algorithms(previous)
    want = numpy_confmat(preds.numpy(), target.numpy(), 19, 255)
    np.testing.assert_array_equal(metric.confmat.numpy(), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_labels_from_logits_equal_argmax(dtype):
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(size=(2, 7, 9, 11))).to(dtype)
    assert torch.equal(labels_from_logits(logits).long(), logits.argmax(dim=1))


@pytest.mark.parametrize("block", [1, 5, 99, 1 << 15])
def test_labels_from_logits_do_not_depend_on_the_block_size(block):
    rng = np.random.default_rng(6)
    logits = torch.from_numpy(rng.normal(size=(2, 19, 9, 11)).astype(np.float32))
    logits[1, :, 4, 7] = torch.nan  # one block (or the only one) falls back to argmax
    want = logits.argmax(dim=1)
    assert torch.equal(labels_from_logits(logits, block=block).long(), want)
    channels_last = logits.contiguous(memory_format=torch.channels_last)
    assert torch.equal(labels_from_logits(channels_last, block=block).long(), want)
    flat = logits.flatten(2)  # [B, C, N] logits work as well
    assert torch.equal(labels_from_logits(flat, block=block).long(), want.flatten(1))


def test_labels_from_logits_with_many_classes_use_argmax():
    logits = torch.randn(1, 300, 3, 4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(labels_from_logits(logits), logits.argmax(dim=1))


def test_labels_from_logits_take_the_first_maximum_on_ties():
    # integer scores in {0, 1, 2} over 6 channels: most pixels have tied maxima
    logits = torch.from_numpy(np.random.default_rng(4).integers(0, 3, size=(3, 6, 8, 8)))
    logits = logits.float()
    assert torch.equal(labels_from_logits(logits).long(), logits.argmax(dim=1))
    hand = torch.tensor([[[1.0]], [[3.0]], [[3.0]]]).unsqueeze(0)  # [1, 3, 1, 1]: tie 1 vs 2
    assert labels_from_logits(hand).item() == 1


def test_labels_from_logits_handle_nan_like_argmax():
    logits = torch.zeros(1, 4, 2, 2)
    logits[0, 2, 0, 1] = torch.nan
    logits[0, 3] = 1.0
    assert torch.equal(labels_from_logits(logits).long(), logits.argmax(dim=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_update_does_not_synchronise():
    rng = np.random.default_rng(5)
    target = labels(rng, 19, torch.uint8, [255]).cuda()
    logits = torch.from_numpy(rng.normal(size=(2, 19, 13, 17))).float().cuda()
    metric = ConfusionMatrix(19, ignore_index=255).cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        metric.update(logits, target)
        metric.update(logits.argmax(1), target)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = 2 * numpy_confmat(logits.argmax(1).cpu().numpy(), target.cpu().numpy(), 19, 255)
    np.testing.assert_array_equal(metric.confmat.cpu().numpy(), want)


QUICK_SCRIPTS = ["confmat", "train_step", "fast_paths", "slide", "loader", "ddp_cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("name", QUICK_SCRIPTS)
def test_benchmark_script_runs_quick(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    module.main(["--quick"])
    out = capsys.readouterr().out
    assert "Machine: " in out and f"## {module.TITLE}" in out  # after any progress bar
    rows = [line for line in out.splitlines() if line.startswith("| ")][1:]  # skip header
    assert rows, out
    # every timing row carries a ratio cell such as "1.23x" (the loader table gives img/s)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        ratios = [c for c in cells if c.endswith("x") and c[:-1].replace(".", "").isdigit()]
        assert ratios or name == "loader", row


# Convolutions of 16 channels, 3x3, padding 1, on a batch of 2 of 12x20, counted by hand
# (1 multiply-add = 2 FLOPs): depthwise (groups 16), forward 2 * 2 * 16 * 3 * 3 * (12 * 20) =
# 138_240; dense (groups 1) 16 times that; groups 4: 4 times; stride 2: 6x10 outputs. The
# input gradient and the weight gradient each cost the forward again.
CONV_CASES = [
    # groups, stride, input requires grad, forward FLOPs, backward FLOPs
    (16, 1, True, 138_240, 2 * 138_240),
    (16, 2, True, 34_560, 2 * 34_560),
    (16, 1, False, 138_240, 138_240),  # a first layer: weight gradient only
    (1, 1, True, 2_211_840, 2 * 2_211_840),
    (4, 1, True, 552_960, 2 * 552_960),
]


@pytest.mark.parametrize(("groups", "stride", "input_grad", "forward", "backward"), CONV_CASES)
def test_flop_counter_counts_convolutions_by_hand(groups, stride, input_grad, forward, backward):
    conv = nn.Conv2d(16, 16, 3, stride=stride, padding=1, groups=groups)
    x = torch.randn(2, 16, 12, 20, requires_grad=input_grad)
    with conv_layer_flops(conv) as layers:  # per-layer hooks, as the recipe table counts
        assert count_flops(lambda: conv(x).sum()) == (forward, backward)
    assert layers[""][:2] == [forward, backward]


def test_flop_counter_counts_a_grouped_transposed_convolution_by_hand():
    # [16 -> 16, groups 4, 3x3] transposed: 2 * 2 * 16 * (16 / 4) * 3 * 3 * (12 * 20) per pass
    conv = nn.ConvTranspose2d(16, 16, 3, stride=2, padding=1, groups=4)
    x = torch.randn(2, 16, 12, 20, requires_grad=True)
    assert count_flops(lambda: conv(x).sum()) == (552_960, 2 * 552_960)


def test_torch_flop_counter_counts_a_depthwise_weight_gradient_as_dense():
    # what the recipe section of BENCHMARKS.md reports: torch's own formula counts the
    # weight gradient of the depthwise layer above 16 times (its groups) too many
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16)
    x = torch.randn(2, 16, 12, 20, requires_grad=True)
    with conv_layer_flops(conv) as layers:
        assert count_flops(lambda: conv(x).sum(), corrected=False) == (138_240, 17 * 138_240)
    assert layers[""][2] == 17 * 138_240  # the per-layer column "torch's count"


@pytest.mark.slow
def test_recipe_step_quick_counts_and_times_the_recipe(capsys):
    module = importlib.import_module("benchmarks.recipe_step")
    module.main(["--quick"])
    out = capsys.readouterr().out
    tables = [
        [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]
        for block in out.split("\n\n")
        if block.startswith("| ")
    ]
    flops, rates, switches, variants = tables
    # halving both decoder widths quarters its dense 3x3 convolutions' FLOPs (each maps one
    # width to another: in x out channels)
    assert [row[0] for row in variants[:3]] == ["`256/128`", "`128/64`", "`64/32`"]
    dense = [float(row[3]) for row in variants]
    assert dense[0] / dense[1] == pytest.approx(4, rel=0.01)
    assert dense[1] / dense[2] == pytest.approx(4, rel=0.01)
    params = [float(row[1]) for row in variants]
    assert params[0] > params[1] > params[2]
    # frozen stages: fewer trainable parameters (Lite0's stem + stages 1-2 hold 0.006 M,
    # stage 3 another 0.05 M), no gradient FLOPs for them, the decoder unchanged
    assert params[1] > params[3] > params[4] and dense[3] == dense[4] == dense[1]
    step_flops = [float(row[2]) for row in variants]
    assert step_flops[1] > step_flops[3] > step_flops[4]
    # the larger encoders (Lite0/1/2: 3.4/4.2/4.9 M parameters with their classifier head,
    # Tan & Le's release) add parameters and step FLOPs under the same 128/64 decoder, whose
    # dense 3x3 convolutions see the same strides; freezing Lite2's stem + stages 1-2 removes
    # parameters and gradient FLOPs as for Lite0
    assert params[6] > params[5] > params[1] and params[6] > params[7]
    assert step_flops[6] > step_flops[5] > step_flops[1] and step_flops[6] > step_flops[7]
    assert dense[5] == dense[6] == dense[7] == dense[1]
    kinds = {row[0]: row for row in flops}
    # FPN on Lite0: the decoder's dense 3x3 convolutions carry most of the forward FLOPs,
    # and torch's formula overcounts only the depthwise layers' backward
    assert float(kinds["decoder + head dense 3x3"][3].rstrip("%")) > 50
    assert kinds["decoder + head dense 3x3"][6] == "1.00x"
    assert all(float(r[6].rstrip("x")) > 2 for k, r in kinds.items() if "depthwise" in k)
    assert "other operations" not in kinds  # every FLOP is in a convolution layer
    assert [r[0].split()[0] for r in rates] == ["fp32", "bf16"]
    names = [row[0] for row in switches]
    assert names == [
        "fp32 eager (reference)",
        "channels_last",
        "bf16-mixed",
        "bf16-mixed + channels_last",
    ]  # compile is skipped in --quick
    assert switches[0][5] == "1.00x"


@pytest.mark.slow
def test_suite_writes_markdown(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    command = [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)]
    subprocess.run([*command, "--only", "confmat"], check=True, cwd=PROJECT_ROOT, timeout=300)
    text = output.read_text()
    assert text.startswith("# Benchmarks") and "## Confusion-matrix update" in text
    assert "Machine: " in text and "python -m benchmarks --quick" in text


@pytest.mark.slow
def test_architectures_quick_counts_like_smp_and_writes_no_costs(capsys, monkeypatch, tmp_path):
    import segmentation_models_pytorch as smp

    module = importlib.import_module("benchmarks.architectures")
    monkeypatch.setattr(module, "COSTS", tmp_path / "costs.json")
    module.main(["--quick"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| `")][1:]  # skip header
    assert [row.split("|")[1].strip() for row in rows] == ["`fpn`", "`unet_lite0`"]
    # the parameter count of smp's own FPN on Lite0 with 11 classes, built here
    reference = smp.FPN(encoder_name="tu-tf_efficientnet_lite0", encoder_weights=None, classes=11)
    expected = sum(p.numel() for p in reference.parameters()) / 1e6
    assert rows[0].split("|")[2].strip() == f"{expected:.2f}"
    assert not (tmp_path / "costs.json").exists()  # only a full run writes RESULTS' costs
