"""python -m segkit.cli.leaderboard: hand-made runs with known scores, and the shared tiny sweep."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from segkit.cli.leaderboard import main
from segkit.evaluation.analysis import load_runs
from segkit.evaluation.leaderboard import (
    BEST,
    leaderboard_rows,
    leaderboard_table,
    varying_overrides,
)
from segkit.evaluation.report import write_report


def fake_run(folder: Path, confmat: list[list[int]] | None, overrides: list[str]) -> Path:
    """A run dir as train.py leaves it: .hydra/ files, and the report unless confmat is None."""
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    if confmat is not None:
        write_report(folder, np.array(confmat), ["road", "car"], "val", extra={"epoch": 3})
        start = (folder / ".hydra" / "config.yaml").stat().st_mtime
        os.utime(folder / "metrics.json", (start + 90, start + 90))  # finished 90 s later
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    common = ["data=shapes"]
    # rows = ground truth. good: IoU road 3/(3+1+0) = 0.75, car 4/(4+0+1) = 0.8
    fake_run(tmp_path / "0", [[3, 1], [0, 4]], [*common, "loss=ce"])
    # bad: IoU road 1/(1+3+2) = 1/6, car 2/(2+2+3) = 2/7; PA 3/8
    fake_run(tmp_path / "1", [[1, 3], [2, 2]], [*common, "loss=dice"])
    fake_run(tmp_path / "2", None, [*common, "loss=focal"])  # failed: no metrics.json
    return tmp_path


def test_rows_are_sorted_and_carry_the_hand_computed_scores(sweep):
    rows = leaderboard_rows(load_runs(sweep))
    assert [row["run"] for row in rows] == ["0", "1", "2"]
    good, bad, failed = rows
    assert good["mIoU"] == pytest.approx((0.75 + 0.8) / 2)
    assert good["PA"] == pytest.approx(7 / 8) and bad["PA"] == pytest.approx(3 / 8)
    assert good["MPA"] == pytest.approx((3 / 4 + 4 / 4) / 2)
    # FWIoU = sum(freq * IoU), freq = 4/8 for both classes
    assert bad["FWIoU"] == pytest.approx(0.5 * (1 / 6) + 0.5 * (2 / 7))
    assert good["epoch"] == 3 and good["seconds"] == pytest.approx(90, abs=0.1)
    assert failed["status"] == "no metrics.json" and failed["mIoU"] is None
    assert failed["overrides"] == "data=shapes loss=focal"
    assert [r["run"] for r in leaderboard_rows(load_runs(sweep), sort="PA")] == ["0", "1", "2"]


def test_table_shows_varying_overrides_and_highlights_the_best(sweep):
    runs = load_runs(sweep)
    assert varying_overrides(runs) == [["loss=ce"], ["loss=dice"], ["loss=focal"]]
    table = leaderboard_table(runs)
    miou = list(table.columns[2].cells)
    assert miou == [f"[{BEST}]77.50[/]", f"{100 * (1 / 6 + 2 / 7) / 2:.2f}", "-"]
    assert list(table.columns[1].cells) == ["loss=ce", "loss=dice", "loss=focal"]


def test_cli_writes_csv_next_to_the_runs(sweep, capsys):
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert "77.50" in printed and "loss=dice" in printed
    with open(sweep / "leaderboard.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run"] for row in rows] == ["0", "1", "2"]
    assert float(rows[0]["mIoU"]) == json.loads((sweep / "0" / "metrics.json").read_text())["mIoU"]
    assert rows[2]["mIoU"] == "" and rows[2]["status"] == "no metrics.json"

    assert main([str(sweep), "--per-class", "--csv", str(sweep / "pc.csv")]) == 0
    with open(sweep / "pc.csv") as handle:
        per_class = list(csv.DictReader(handle))
    assert [row["class"] for row in per_class] == ["road", "car"]
    assert float(per_class[0]["0"]) == pytest.approx(0.75)
    assert float(per_class[1]["1"]) == pytest.approx(2 / 7)
    assert "2" not in per_class[0]  # the failed run has no IoU column


def test_cli_names_a_missing_or_empty_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nope")])
    assert "nope: no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "no run dirs" in capsys.readouterr().err


@pytest.mark.slow
def test_leaderboard_of_a_sweep_matches_every_metrics_json(optuna_sweep, tmp_path):
    job_dirs = sorted(p.parent.parent for p in optuna_sweep.rglob(".hydra/overrides.yaml"))
    assert main([str(optuna_sweep), "--csv", str(tmp_path / "lb.csv")]) == 0
    with open(tmp_path / "lb.csv") as handle:
        rows = {Path(row["path"]): row for row in csv.DictReader(handle)}
    assert sorted(rows) == job_dirs
    finished = [d for d in job_dirs if (d / "metrics.json").is_file()]
    assert 0 < len(finished) < len(job_dirs)  # the failed trial is listed too
    for run_dir in finished:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        row = rows[run_dir]
        for key in ("mIoU", "MPA", "PA", "FWIoU"):
            assert float(row[key]) == metrics[key], (run_dir, key)
        assert int(row["epoch"]) == metrics["epoch"]
        assert float(row["seconds"]) > 0
    ordered = [float(row["mIoU"]) for row in rows.values() if row["mIoU"]]  # in file order
    assert ordered == sorted(ordered, reverse=True)

    assert main([str(optuna_sweep), "--per-class", "--csv", str(tmp_path / "pc.csv")]) == 0
    with open(tmp_path / "pc.csv") as handle:
        per_class = {row["class"]: row for row in csv.DictReader(handle)}
    runs = {run.path: run for run in load_runs(optuna_sweep)}
    for run_dir in finished:
        iou = json.loads((run_dir / "metrics.json").read_text())["IoU"]
        name = runs[run_dir].name
        for cls, value in iou.items():
            assert float(per_class[cls][name]) == value, (run_dir, cls)


def test_a_continued_run_counts_its_starts_but_not_the_pause_between(tmp_path):
    import os
    import time

    from segkit.evaluation.analysis import run_seconds

    run = tmp_path / "run"
    hydra = run / ".hydra"
    hydra.mkdir(parents=True)
    t0 = time.mktime((2026, 12, 7, 2, 0, 0, 0, 0, -1))  # local time, as logging writes it
    first, second = hydra / "config.1.yaml", hydra / "config.yaml"
    first.write_text("{}")
    second.write_text("{}")
    os.utime(first, (t0, t0))  # first start
    os.utime(second, (t0 + 1000, t0 + 1000))  # continued 1000 s later
    (run / "train.log").write_text(
        "[2026-12-07 02:01:40,000][segkit.progress][INFO] - epoch 1/3\n"
        "[2026-12-07 02:05:00,500][segkit.progress][INFO] - epoch 2/3\n"  # cut after this
        "not a log line\n"
        "[2026-12-07 02:18:20,000][segkit.progress][INFO] - epoch 3/3\n"
    )
    metrics = run / "metrics.json"
    metrics.write_text("{}")
    os.utime(metrics, (t0 + 1500, t0 + 1500))
    # first start: 0 -> 300.5 s (its last log line); second: 1000 -> 1500 s
    assert run_seconds(run) == pytest.approx(300.5 + 500)
    first.unlink()  # one start: config write to metrics.json
    assert run_seconds(run) == pytest.approx(500)
