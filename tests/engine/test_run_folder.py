"""The "What a run leaves behind" table of docs/getting-started.md lists every file and folder
a run writes; a fresh run never writes into a folder that holds a run
(:func:`segkit.engine.checkpoints.check_run_folder`)."""

from __future__ import annotations

import re
from pathlib import Path

import hydra
import pytest

from segkit.engine.checkpoints import check_run_folder
from segkit.engine.train import train
from segkit.outputs import OutputExistsError

from ..helpers import PROJECT_ROOT, compose_job

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


def listing(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def earlier_run(run_dir: Path) -> None:
    """The files of a finished run (stand-ins), and Hydra's own, which are no run."""
    files = {
        "metrics.json": b'{"mIoU": 0.5}\n',
        "per_class.csv": b"class,IoU\n",
        "confusion_matrix.npy": b"matrix",
        "checkpoints/last.ckpt": b"last",
        "checkpoints/best_epoch001.ckpt": b"best",
        ".hydra/config.yaml": b"{}\n",
        "train.log": b"",
    }
    for name, data in files.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes(data)


def test_a_fresh_run_into_a_run_folder_stops_before_anything_is_built(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    earlier_run(run_dir)
    cfg = compose_job("train", tmp_path, run_dir, ["trainer.accelerator=cpu"])
    before = listing(tmp_path)

    def built(*args, **kwargs):
        raise AssertionError("the data or a model was built")

    monkeypatch.setattr(hydra.utils, "instantiate", built)
    with pytest.raises(OutputExistsError) as error:
        train(cfg)
    message = str(error.value)
    assert f"{run_dir} already holds a run ({run_dir / 'metrics.json'})" in message
    assert f"hydra.run.dir={run_dir} ckpt_path=last" in message  # continue it
    assert "give a new hydra.run.dir=<folder>" in message  # or start afresh elsewhere
    assert listing(tmp_path) == before  # every byte kept, nothing added


def test_hydra_files_resumed_runs_and_fresh_folders_pass_the_run_folder_check(tmp_path):
    def check(run_dir: Path, *overrides: str) -> None:
        check_run_folder(compose_job("train", tmp_path, run_dir, list(overrides)))

    fresh = tmp_path / "fresh"
    (fresh / ".hydra").mkdir(parents=True)  # what Hydra writes before train() runs
    (fresh / "train.log").write_text("")
    check(fresh)
    check(fresh, "resume=auto")  # nothing to resume: a fresh start
    run_dir = tmp_path / "run"
    earlier_run(run_dir)
    before = listing(run_dir)
    check(run_dir, "ckpt_path=last")
    check(run_dir, "resume=auto")  # finds last.ckpt: continues
    check(run_dir, f"ckpt_path={run_dir / 'checkpoints' / 'best_epoch001.ckpt'}")
    with pytest.raises(OutputExistsError, match="already holds a run"):
        check(run_dir, f"ckpt_path={fresh / 'other.ckpt'}")  # another run's state, here
    (run_dir / "checkpoints" / "last.ckpt").rename(tmp_path / "last.ckpt")
    with pytest.raises(OutputExistsError, match="already holds a run"):
        check(run_dir, "resume=auto")  # no last*.ckpt: would start afresh over the report
    (tmp_path / "last.ckpt").rename(run_dir / "checkpoints" / "last.ckpt")
    assert listing(run_dir) == before
