"""python -m segkit.cli.compare: the architecture table and chart of RESULTS.md from
published folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segkit.cli.compare import main


def result_folder(root: Path, name: str, miou: float, wall: int, epochs: int, best: int) -> Path:
    folder = root / name
    folder.mkdir()
    metrics = {
        "PA": 0.9, "MPA": 0.8, "mIoU": miou, "FWIoU": 0.85,
        "IoU": {"sky": miou + 0.1, "pole": None},
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    run = {"wall_seconds": wall, "epochs_trained": epochs, "best_epoch": best}
    (folder / "run.json").write_text(json.dumps(run))
    rows = "\n".join(f"{e},1.0,1.1,{miou * e / epochs}" for e in range(1, epochs + 1))
    (folder / "history.csv").write_text("epoch,train_loss,val_loss,val_mIoU\n" + rows + "\n")
    return folder


def test_rows_best_first_with_hand_computed_columns(tmp_path, capsys):
    slow = result_folder(tmp_path, "pspnet_lite0", 0.5, wall=3000, epochs=30, best=29)
    fast = result_folder(tmp_path, "fpn", 0.6, wall=1200, epochs=30, best=27)
    (tmp_path / "upernet").mkdir()  # still training: no metrics.json
    costs = tmp_path / "costs.json"
    fpn_costs = {"params_m": 4.712, "gmacs": 8.04, "eager_ms": 61.2, "onnxruntime_ms": 40.7}
    costs.write_text(json.dumps({"models": {"fpn": fpn_costs}}))
    chart = tmp_path / "chart.png"
    text = main([str(slow), str(fast), str(tmp_path / "upernet"), "--costs", str(costs),
                 "--chart", str(chart)])  # fmt: skip
    lines = text.splitlines()
    # fpn first (60.0 > 50.0); 1200 s / 30 epochs = 40 s per epoch, 20 min; best epoch 27 + 1
    assert lines[2] == (
        "| `fpn` | 4.71 | 8.0 | 40 | 20 | 61 | 41 | 90.0 | 80.0 | 60.0 | 85.0 | 28 |"
    )
    assert lines[3] == (
        "| `pspnet_lite0` | - | - | 100 | 50 | - | - | 90.0 | 80.0 | 50.0 | 85.0 | 30 |"
    )
    assert "| sky | 70.0 | 60.0 |" in lines and "| pole | - | - |" in lines
    assert lines[-1] == "Still to come (no metrics.json): upernet"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip() == text


def test_time_to_accuracy_from_measured_spaced_and_end_point_histories(tmp_path):
    from segkit.evaluation.compare import accuracy_over_time, load_result

    measured = result_folder(tmp_path, "fast", 0.5, wall=900, epochs=4, best=3)
    # validation every 2 epochs: NaN mIoU in epochs 1 and 3; their minutes still count
    (measured / "history.csv").write_text(
        "epoch,train_loss,val_mIoU,epoch_minutes\n"
        "1,1.0,,1.5\n2,0.9,0.4,2.0\n3,0.8,,2.5\n4,0.7,0.5,1.0\n"
    )
    spaced = result_folder(tmp_path, "old", 0.6, wall=1200, epochs=4, best=3)  # no minutes
    end_only = result_folder(tmp_path, "published_long_ago", 0.675, wall=5843, epochs=45, best=44)
    (end_only / "history.csv").unlink()  # published before history.csv existed

    curve = accuracy_over_time(load_result(measured))
    assert curve.source == "measured"
    assert curve.minutes.tolist() == [3.5, 7.0]  # 1.5 + 2.0; + 2.5 + 1.0
    assert curve.miou.tolist() == [40.0, 50.0]
    curve = accuracy_over_time(load_result(spaced))
    assert curve.source == "evenly spaced"
    assert curve.minutes.tolist() == [5.0, 10.0, 15.0, 20.0]  # 20 min over 4 epochs
    assert curve.miou == pytest.approx([15.0, 30.0, 45.0, 60.0])
    curve = accuracy_over_time(load_result(end_only))
    assert curve.source == "end point"
    assert curve.minutes.tolist() == [5843 / 60] and curve.miou.tolist() == [67.5]

    chart = tmp_path / "time.png"
    main([str(measured), str(spaced), str(end_only), "--time-chart", str(chart)])
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
