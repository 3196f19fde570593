"""check_data's progress on stderr: periodic lines in a log, a bar on a terminal."""

from __future__ import annotations

import io
import re

import hydra

from segkit.cli.check_data import ScanProgress, check_splits, main

from ..helpers import compose, write_folder_dataset

FOLDER = ["data=folder", "data.num_classes=3", "data.class_names=[a,b,c]"]


def datamodule(tmp_path, num_images: int = 10):
    root = write_folder_dataset(tmp_path / "data", num_images=num_images)  # train/val halves
    cfg = compose(tmp_path, [*FOLDER, f"data.dataset.root={root}"])
    return hydra.utils.instantiate(cfg.data)


def test_plain_lines_every_n_files_and_one_per_finished_split(tmp_path):
    stream = io.StringIO()  # not a terminal
    check_splits(datamodule(tmp_path), progress=ScanProgress(stream, every=2))
    lines = stream.getvalue().splitlines()
    # 5 files per split, a line after files 2 and 4, then the split's last line
    pattern = r"scanning split '{}': {}/5 files \({}%\), [\d.]+ files/s, \d+ s left"
    for offset, split in ((0, "train"), (3, "val")):
        assert re.fullmatch(pattern.format(split, 2, 40), lines[offset]), lines
        assert re.fullmatch(pattern.format(split, 4, 80), lines[offset + 1]), lines
        assert re.fullmatch(rf"scanned split '{split}': 5 files in [\d.]+ s", lines[offset + 2])
    assert len(lines) == 6


def test_main_writes_a_line_per_tenth_to_stderr_and_keeps_stdout_for_the_report(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "data", num_images=40)  # 20 files per split
    assert main([*FOLDER, f"data.dataset.root={root}"]) == 0
    captured = capsys.readouterr()
    for split in ("train", "val"):
        done = re.findall(rf"scanning split '{split}': (\d+)/20 files", captured.err)
        assert done == ["2", "4", "6", "8", "10", "12", "14", "16", "18"]  # every tenth
        assert f"scanned split '{split}': 20 files in" in captured.err
    assert "scanning" not in captured.out and "no problems found" in captured.out


def test_a_terminal_gets_a_progress_bar(tmp_path):
    stream = io.StringIO()
    check_splits(datamodule(tmp_path), progress=ScanProgress(stream, bar=True))
    text = stream.getvalue()
    assert "\x1b[" in text  # terminal control sequences, not plain lines
    for split in ("train", "val"):
        assert f"split '{split}'" in text and "5/5" in text
    assert "scanning split" not in text
