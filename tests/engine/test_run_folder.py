"""The "What a run leaves behind" table of docs/getting-started.md lists every file and folder
a run writes."""

from __future__ import annotations

import re

import pytest

from ..helpers import PROJECT_ROOT

HARNESS_FILES = {"stdout.txt", "stderr.txt"}  # helpers.run_train's copies of the console


def run_folder_table() -> list[tuple[list[str], bool]]:
    """Rows of the table: (the backticked paths of the first cell, whether the row is
    optional, i.e. its description starts with "only")."""
    text = (PROJECT_ROOT / "docs" / "getting-started.md").read_text()
    section = text.split("## What a run leaves behind", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] in ("file", "---"):
            continue
        rows.append((re.findall(r"`([^`]+)`", cells[0]), cells[1].startswith("only")))
    return rows


def pattern(entry: str) -> re.Pattern[str]:
    """A table entry as a regex: NNN = 3 digits, <n> = a number, * = any name; an entry
    ending in / is a folder and covers what it holds."""
    regex = re.escape(entry.rstrip("/"))
    regex = regex.replace("NNN", r"\d{3}").replace("<n>", r"\d+").replace(r"\*", r"[^/]*")
    return re.compile(regex + ("(/.*)?" if entry.endswith("/") else ""))


def test_the_table_parser_reads_entries_and_optional_rows():
    assert pattern("checkpoints/best_epochNNN.ckpt").fullmatch("checkpoints/best_epoch017.ckpt")
    assert not pattern("checkpoints/best_epochNNN.ckpt").fullmatch("checkpoints/best.ckpt")
    assert pattern("checkpoints/superseded/").fullmatch("checkpoints/superseded/best_epoch003.ckpt")
    assert pattern("tensorboard/events.out.tfevents.*").fullmatch(
        "tensorboard/events.out.tfevents.1.vm.2.0"
    )
    rows = run_folder_table()
    assert (["metrics.json"], False) in rows and (["fit-profile.txt"], True) in rows


@pytest.mark.slow
def test_docs_table_lists_every_file_a_run_writes(trained_run):
    # every file, and every folder that holds none (a folder with files is named by them)
    written = {
        path.relative_to(trained_run).as_posix()
        for path in trained_run.rglob("*")
        if (path.is_file() or not any(path.iterdir()))
        and not (path.parent == trained_run and path.name in HARNESS_FILES)
    }
    rows = run_folder_table()
    entries = [(pattern(entry), optional) for paths, optional in rows for entry in paths]
    unlisted = sorted(path for path in written if not any(p.fullmatch(path) for p, _ in entries))
    assert not unlisted, f"written by the run, not in the docs table: {unlisted}"
    missing = [
        p.pattern for p, optional in entries if not optional and not any(map(p.fullmatch, written))
    ]
    assert not missing, f"listed in the docs table, but the run wrote none: {missing}"
