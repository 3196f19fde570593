"""segkit.cli.model_summary: FLOPs and output stride against hand counts, CLI output,
the table of docs/models.md."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from segkit.cli.model_summary import (
    count_parameters,
    format_summary,
    main,
    measure,
    model_table,
    summarize,
)
from segkit.config import compose
from segkit.models.weights import build_model


def tiny_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # 10x10 -> 10x10
        nn.ReLU(),
        nn.Conv2d(8, 4, 1, stride=2),  # 10x10 -> 5x5
        nn.Upsample(size=(10, 10)),
    )


def test_flops_and_stride_of_a_tiny_conv_model_by_hand():
    flops, shape, stride = measure(tiny_model(), torch.zeros(1, 3, 10, 10))
    # 2 FLOPs per multiply-add: conv1 has 8*10*10 outputs of 3*3*3 MACs, conv2 4*5*5 of 8
    assert flops == 2 * (8 * 10 * 10 * 27) + 2 * (4 * 5 * 5 * 8) == 44800
    assert shape == (1, 4, 10, 10)
    assert stride == 2


def test_summary_labels_gmacs_and_gflops_by_hand():
    cfg = OmegaConf.create({"_target_": f"{__name__}.tiny_model"})
    text = format_summary(summarize(cfg, (1000, 1000)))
    # conv1: 8*1000*1000 outputs of 27 MACs, conv2: 4*500*500 of 8: 224e6 multiply-adds
    assert "GMACs:          0.22  (multiply-add = 1)" in text
    assert "GFLOPs:         0.45  (multiply-add = 2 FLOPs)" in text


def test_gmacs_follow_torchvision_published_count():
    from torchvision.models.segmentation import LRASPP_MobileNet_V3_Large_Weights

    # torchvision's "GFLOPS" (meta "_ops") count a multiply-add once, at 520x520, 21 classes
    published = LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1.meta["_ops"]
    summary = summarize(compose(["model=lraspp", "data.num_classes=21"]).model, (520, 520))
    assert summary.macs / 1e9 == pytest.approx(published, rel=0.01)  # 2.100 vs 2.086
    assert summary.flops == 2 * summary.macs


def test_parameter_counts_by_hand():
    total, trainable, blocks = count_parameters(tiny_model())
    assert blocks == {"0": 8 * 3 * 9, "1": 0, "2": 4 * 8 + 4, "3": 0}
    assert total == trainable == 216 + 36


def test_config_summary_on_meta_equals_a_real_run():
    cfg = compose(["model=lraspp", "data.num_classes=3"])
    summary = summarize(cfg.model, (64, 96))
    torch.manual_seed(0)
    flops, shape, stride = measure(torch.nn.Module.eval(_real(cfg)), torch.zeros(1, 3, 64, 96))
    assert (summary.flops, summary.output_shape, summary.output_stride) == (flops, shape, stride)
    assert summary.output_shape == (1, 3, 64, 96) and summary.output_stride == 16
    assert sum(summary.block_params.values()) == summary.total_params


def _real(cfg):
    return build_model(cfg.model)


def test_cli_prints_summary(capsys):
    main(["model=pspnet", "model.encoder_name=resnet18", "+input_size=[48,80]"])
    out = capsys.readouterr().out
    assert "output:         [1, 5, 48, 80]" in out  # shapes has 5 classes
    assert "output stride:  8" in out
    assert "aux" in out and "encoder" in out


class DetectionLike(nn.Module):
    """Output shape depends on the data (like detection models): no meta kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.nonzero(self.conv(x) > 0)]


def test_data_dependent_model_is_run_on_cpu_or_left_unmeasured():
    cfg = OmegaConf.create({"_target_": f"{__name__}.DetectionLike"})
    unmeasured = summarize(cfg, (4, 4), cpu_fallback=False)
    assert (unmeasured.flops, unmeasured.output_shape) == (None, None)
    assert unmeasured.total_params == 6
    measured = summarize(cfg, (4, 4))
    assert measured.flops == 2 * (2 * 4 * 4 * 3) and measured.output_shape is None


def test_table_rows():
    table = model_table(["+input_size=[64,64]"], names=["lraspp", "unet_r18"])
    lines = table.splitlines()
    header = "| model | class | params (M) | GMACs | GFLOPs | output stride | CamVid val mIoU |"
    assert header in lines
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| `")]
    # LR-ASPP: 3.2M parameters (torchvision docs); 3.9 GMACs / 7.9 GFLOPs at 512x1024 scale
    # to 0.03 / 0.06 at 64x64
    assert [cell.strip() for cell in rows[0]][:6] == [
        "`lraspp`",
        "LRASPP",
        "3.2",
        "0.0",
        "0.1",
        "16",
    ]
    assert [cell.strip() for cell in rows[1]][:2] == ["`unet_r18`", "smp Unet/resnet18"]
    assert "1x3x64x64, 19 classes" in table


def test_camvid_column_reads_the_published_row(tmp_path):
    from segkit.cli.model_summary import camvid_cell

    (tmp_path / "pspnet_lite0").mkdir()
    (tmp_path / "pspnet_lite0" / "metrics.json").write_text('{"mIoU": 0.4321}')
    link = "(../RESULTS.md#camvid-architecture-table)"
    assert camvid_cell("pspnet_lite0", tmp_path) == f"[43.2]{link}"
    assert camvid_cell("pspnet", tmp_path) == f"[43.2]{link} (`pspnet_lite0`)"  # its Lite0 row
    assert camvid_cell("segnet", tmp_path) == f"[see table]{link}"
    assert camvid_cell("unet", tmp_path).startswith("[ISBI 2012](../RESULTS.md#isbi-2012-em-u-net")
