"""python -m segkit.cli.compare: the architecture table and chart of RESULTS.md from
published folders."""

from __future__ import annotations

import json
from pathlib import Path

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
