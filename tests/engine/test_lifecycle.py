"""A run's life: start-up checks, interrupts, resume, eval/predict inputs, and the
line that says where the results are.

Each test is one case of the issue and failed on the code before the change. Training runs
are tiny shapes runs (16 images of 64 px, batch 4: 4 steps per epoch) on one CPU thread.
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from segkit.config import ConfigError, check_arguments
from segkit.data.folder import DataError
from segkit.deploy.predictor import predict
from segkit.engine.callbacks.guards import NoTrainingBatchesError
from segkit.engine.checkpoints import (
    ResumeError,
    checkpoint_overrides,
    config_changes,
    refused_changes,
)
from segkit.engine.evaluate import evaluate_checkpoint
from segkit.engine.hydra_callbacks import SweepSummary
from segkit.engine.loggers import CSVLogger
from segkit.engine.predict import check_output, input_files
from segkit.engine.runner import continue_command
from segkit.engine.train import train
from segkit.evaluation.report import write_report
from segkit.tasks import build_task
from segkit.tasks.schedulers import poly_lr, set_total_steps

from ..helpers import (
    ENV,
    FAST,
    PROJECT_ROOT,
    SMALL_MODEL,
    compose_job,
    load,
    run,
    train_command,
)

CONF = PROJECT_ROOT / "conf"
# 16 images / batch 4 = 4 optimiser steps per epoch; lr logged every step
STEP_LOGGED = [
    *FAST,
    "data.prepare.num_train=16",
    "trainer.log_every_n_steps=1",
    "+trainer.enable_progress_bar=false",
]


def save_checkpoint(tmp_path: Path, overrides: list[str]) -> Path:
    """A train.py-style checkpoint (weights + resolved config) of an untrained model."""
    cfg = compose_job("train", tmp_path, tmp_path / "train_run", [*SMALL_MODEL, *overrides])
    torch.manual_seed(0)
    task = build_task(cfg)
    path = tmp_path / "model.ckpt"
    config = OmegaConf.to_container(cfg, resolve=True)
    torch.save({"state_dict": task.state_dict(), "config": config, "epoch": 0}, path)
    return path


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# --- case 3: a batch larger than the training set -------------------------------------


def test_batch_size_larger_than_the_training_split_stops_at_start_up(tmp_path):
    cfg = compose_job("train", tmp_path, tmp_path / "run", [*STEP_LOGGED, "data.batch_size=32"])
    with pytest.raises(NoTrainingBatchesError, match=r"data.batch_size=32 .* its 16 images"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()  # no untrained "result"


# --- case 11: a wrong optimiser key -------------------------------------------------------


def test_unknown_optimizer_key_stops_before_data_and_model_are_built(tmp_path):
    # the data root does not exist: had the data been built first, that error would show
    overrides = ["+optimizer.learning_rate=1e-3", "data=folder"]
    overrides += [f"data.dataset.root={tmp_path / 'nowhere'}", "data.num_classes=3"]
    overrides += ["data.class_names=[a,b,c]"]
    cfg = compose_job("train", tmp_path, tmp_path / "run", overrides)
    with pytest.raises(ConfigError) as error:
        train(cfg)
    message = str(error.value)
    assert "optimizer.learning_rate is not an argument of torch.optim.AdamW" in message
    assert "optimizer.lr" in message and "optimizer.weight_decay" in message
    assert "e.g. optimizer.lr=" in message
    # the scheduler partial too; its optimizer/total_steps come from the task
    with pytest.raises(ConfigError, match=r"scheduler.warmup is not .*scheduler.warmup_steps"):
        check_arguments(OmegaConf.create({"scheduler": {**cfg.scheduler, "warmup": 5}}))


# --- case 12: model=maskrcnn ----------------------------------------------------------


def test_model_maskrcnn_selects_the_instance_task_or_stops_naming_it(tmp_path):
    overrides = ["model=maskrcnn", "data=shapes_instances", "model.backbone=resnet18"]
    cfg = compose_job("train", tmp_path, tmp_path / "run", overrides)
    assert cfg.task._target_ == "segkit.tasks.instance.InstanceSegmentationTask"
    # the experiment that also sets it still composes
    cfg = compose_job("train", tmp_path, tmp_path / "run", ["experiment=shapes_maskrcnn"])
    assert cfg.task._target_ == "segkit.tasks.instance.InstanceSegmentationTask"
    # task=semantic forced on the command line: stop before training, naming the fix
    cfg = compose_job("train", tmp_path, tmp_path / "run", [*overrides, "task=semantic"])
    with pytest.raises(ConfigError, match="use task=instance"):
        train(cfg)
    assert not (tmp_path / "run").exists()


# --- the value train.py returns to sweepers ---------------------------------------------


def test_an_optimized_metric_the_task_never_logs_stops_at_start_up(tmp_path):
    overrides = [*STEP_LOGGED, "trainer.max_epochs=1", "optimized_metric=val/mIoU_typo"]
    cfg = compose_job("train", tmp_path, tmp_path / "run", overrides)
    with pytest.raises(ConfigError, match=r"optimized_metric=val/mIoU_typo: .*val/mIoU"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()  # stopped before training


# --- case 4 and 13: resume ------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> dict:
    """A finished 1-epoch run, resumed with trainer.max_epochs=2 in its folder.

    Before resuming, a copy of its best checkpoint is left as ``best_epoch001.ckpt``: a
    best checkpoint the interrupted part of a run wrote after the ``last.ckpt`` resumed
    from, which the restored state knows nothing about.
    """
    tmp_path = tmp_path_factory.mktemp("resume")
    run_dir = tmp_path / "run"
    run(train_command(tmp_path, run_dir, *STEP_LOGGED, "trainer.max_epochs=1"))
    first = {
        "config": (run_dir / ".hydra" / "config.yaml").read_text(),
        "rows": csv_rows(run_dir),
        "last": load(run_dir / "checkpoints" / "last.ckpt"),
    }
    stale = run_dir / "checkpoints" / "best_epoch001.ckpt"
    shutil.copy(run_dir / "checkpoints" / "best_epoch000.ckpt", stale)
    command = train_command(
        tmp_path, run_dir, *STEP_LOGGED, "trainer.max_epochs=2", "ckpt_path=last"
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-5000:]
    output = result.stdout + result.stderr
    return {
        "tmp": tmp_path,
        "run": run_dir,
        "output": output,
        "stdout": result.stdout,
        "first": first,
    }


@pytest.mark.slow
def test_resume_with_more_epochs_trains_every_extra_step_at_a_positive_rate(resumed):
    assert resumed["first"]["last"]["global_step"] == 4  # the poly schedule ended at lr 0
    assert "trainer.max_epochs: 1 -> 2" in resumed["output"]  # the printed difference
    assert "schedule now spans 8 optimiser steps (was 4)" in resumed["output"]
    rates = {int(r["step"]): float(r["lr-AdamW/head"]) for r in csv_rows(resumed["run"])
             if r.get("lr-AdamW/head")}  # fmt: skip
    assert sorted(rates) == list(range(8))
    for step in range(4, 8):  # poly over the new total: 2e-3 * (1 - step / 8) ** 0.9
        assert rates[step] > 0
        assert rates[step] == pytest.approx(2e-3 * (1 - step / 8) ** 0.9, rel=1e-9)
    assert load(resumed["run"] / "checkpoints" / "last.ckpt")["global_step"] == 8


@pytest.mark.slow
def test_resume_keeps_the_earlier_hydra_config(resumed):
    hydra_dir = resumed["run"] / ".hydra"
    assert (hydra_dir / "config.1.yaml").read_text() == resumed["first"]["config"]
    assert OmegaConf.load(hydra_dir / "config.1.yaml").trainer.max_epochs == 1
    assert OmegaConf.load(hydra_dir / "config.yaml").trainer.max_epochs == 2
    assert "ckpt_path=last" in OmegaConf.load(hydra_dir / "overrides.yaml")
    assert "ckpt_path=last" not in OmegaConf.load(hydra_dir / "overrides.1.yaml")


@pytest.mark.slow
def test_resume_keeps_every_logged_row(resumed):
    rows = csv_rows(resumed["run"])
    first = resumed["first"]["rows"]
    assert first and any(r.get("val/mIoU") for r in first)  # epoch 0 was logged
    for row in first:  # every earlier row is still there, values unchanged
        assert any(all(new.get(k, "") == v for k, v in row.items() if v) for new in rows), row
    assert {r["epoch"] for r in rows if r.get("val/mIoU")} >= {"0", "1"}


@pytest.mark.slow
def test_resume_moves_stale_best_checkpoints_aside(resumed):
    checkpoints = resumed["run"] / "checkpoints"
    best = sorted(p.name for p in checkpoints.glob("best_epoch*.ckpt"))
    assert len(best) == 1  # only the resumed run's own best
    state = next(v for k, v in load(checkpoints / "last.ckpt")["callbacks"].items()
                 if k.startswith("ModelCheckpoint"))  # fmt: skip
    assert Path(state["best_model_path"]).name == best[0]
    moved = checkpoints / "superseded" / "best_epoch001.ckpt"
    assert load(moved)["global_step"] == 4  # the stand-in, kept (nothing is deleted)
    assert "Moved 1 checkpoint(s)" in resumed["output"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (["optimizer.lr=1e-3"], r"optimizer.lr: 0.002 -> 0.001.*model.weights_path="),
        (["scheduler.power=2.0"], r"scheduler.power: 0.9 -> 2.0"),
        (["data.batch_size=8"], r"now has 2 optimiser steps, the checkpoint's run had 4 "
                                r"\(changed: .*data.batch_size: 4 -> 8"),
    ],
)  # fmt: skip
def test_resume_refuses_changes_the_restored_state_cannot_follow(
    resumed, tmp_path, change, expected
):
    run_dir = tmp_path / "run"
    shutil.copytree(resumed["run"], run_dir)
    data = [f"paths.data_dir={resumed['tmp'] / 'data'}"]
    cfg = compose_job("train", tmp_path, run_dir, [*data, *STEP_LOGGED, "ckpt_path=last", *change])
    with pytest.raises(ResumeError, match=expected):
        train(cfg)
    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 8  # untouched


def test_config_changes_and_which_are_refused():
    stored = {"optimizer": {"lr": 0.01}, "trainer": {"max_epochs": 1}, "ckpt_path": None}
    new = {"optimizer": {"lr": 0.01}, "trainer": {"max_epochs": 3}, "ckpt_path": "last"}
    new["data"] = {"num_workers": 0}
    changes = config_changes(stored, new)
    assert changes == [("data.num_workers", "<not set>", 0), ("trainer.max_epochs", 1, 3)]
    assert refused_changes(changes) == []
    new["optimizer"]["lr"] = 0.1
    assert refused_changes(config_changes(stored, new)) == [("optimizer.lr", 0.01, 0.1)]


def test_set_total_steps_gives_a_finished_poly_schedule_the_new_length():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = poly_lr(optimizer, total_steps=4, power=0.9)
    for _ in range(4):
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == 0.0
    assert set_total_steps(schedule, 10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 4 / 10) ** 0.9)
    optimizer.step()
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 5 / 10) ** 0.9)
    constant = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    assert not set_total_steps(constant, 10)  # not a segkit schedule: left alone


def test_csv_logger_appends_to_an_earlier_metrics_file(tmp_path):
    first = CSVLogger(tmp_path, name="csv", version="")
    first.log_metrics({"loss": 1.0}, step=0)
    first.save()
    second = CSVLogger(tmp_path, name="csv", version="")  # the resumed run's logger
    second.log_metrics({"loss": 0.5, "val/mIoU": 0.25}, step=1)
    second.save()
    with open(tmp_path / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["step"], r["loss"], r["val/mIoU"]) for r in rows] == [
        ("0", "1.0", ""),
        ("1", "0.5", "0.25"),
    ]


# --- case 13: interrupts ----------------------------------------------------------------


def interrupt(command: list[str], step_file: Path, after: int, signum: int, log: Path):
    """Start ``command``, send ``signum`` once the probe's step file shows a step past
    ``after``; the return code and the run's output."""
    with log.open("w") as out:  # a file: a full pipe would block the run
        process = subprocess.Popen(command, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (step_file.is_file() and int(step_file.read_text() or 0) > after):
            assert process.poll() is None, f"train.py ended before step {after + 1}"
            assert time.monotonic() < deadline, f"no step {after + 1} after 300 s"
            time.sleep(0.02)
        process.send_signal(signum)
        process.wait(timeout=300)
    return process.returncode, log.read_text()


def printed_command(output: str) -> list[str]:
    words = shlex.split(output.split("Continue with:\n", 1)[1].splitlines()[0].strip())
    assert words[:2] == ["python", str(PROJECT_ROOT / "train.py")] and words[-1] == "ckpt_path=last"
    return [sys.executable, *words[1:]]


@pytest.mark.slow
def test_interrupts_save_last_ckpt_and_the_printed_command_continues(tmp_path):
    # SIGINT in the first epoch, SIGTERM in the run its printed command resumes, then that
    # run's printed command to the end. A warm-up of 100 steps on a flat schedule never ends,
    # so the final lr pins the exact scheduler step: an uninterrupted run takes 2 epochs x 4
    # steps, and the warm-up rule (segkit.tasks.schedulers) gives
    # lr = 1e-3 * (0.001 + 0.999 * 8/100).
    step_file = tmp_path / "step.txt"
    args = [*STEP_LOGGED, "trainer.max_epochs=2", "callbacks.last_checkpoint.every_n_train_steps=0"]
    args += ["scheduler=exponential", "scheduler.end_factor=1.0", "scheduler.warmup_steps=100"]
    args += ["optimizer.lr=1e-3"]
    args += ["+callbacks.probe._target_=tests.engine.lifecycle_probe.StepFile"]
    args += [f"+callbacks.probe.path={step_file}", "+callbacks.probe.delay=0.5"]
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"

    command = train_command(tmp_path, run_dir, *args)
    code, output = interrupt(command, step_file, 0, signal.SIGINT, tmp_path / "first.txt")
    assert code == 128 + signal.SIGINT, output[-3000:]
    interrupted = load(checkpoints / "last.ckpt")  # loadable: written atomically
    assert 1 <= interrupted["global_step"] < 4, "not in the first epoch"
    assert not list(checkpoints.glob("best_epoch*.ckpt"))  # no epoch had ended
    assert "interrupted by SIGINT" in output
    command = printed_command(output)

    step = interrupted["global_step"]
    code, output = interrupt(command, step_file, step, signal.SIGTERM, tmp_path / "second.txt")
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert f"Resuming from {checkpoints / 'last.ckpt'}" in output
    assert "interrupted by SIGTERM" in output
    assert step < load(checkpoints / "last.ckpt")["global_step"] < 8
    assert printed_command(output) == command  # the same run folder, the same overrides

    resumed = run(command)  # exactly the printed command
    assert f"Resuming from {checkpoints / 'last.ckpt'}" in resumed
    end = load(checkpoints / "last.ckpt")
    assert end["global_step"] == 8 and end["epoch"] == 1
    assert end["lr_schedulers"][0]["last_epoch"] == 8
    lr = end["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-3 * (0.001 + 0.999 * 8 / 100), rel=1e-12)


def test_continue_command_pins_the_run_folder(tmp_path):
    cfg = compose_job(
        "train", tmp_path, tmp_path / "my run", ["trainer.max_epochs=3", "resume=auto"]
    )
    words = shlex.split(continue_command(cfg))
    assert words[0] == "python" and words[-1] == "ckpt_path=last"
    assert f"hydra.run.dir={tmp_path / 'my run'}" in words  # quoted: the space survives
    assert "trainer.max_epochs=3" in words and "resume=auto" not in words


# --- case 8: eval/predict overrides that contradict the checkpoint ---------------------


def test_eval_and_predict_refuse_class_overrides_that_contradict_the_checkpoint(tmp_path):
    ckpt = save_checkpoint(tmp_path, ["data.num_classes=5"])
    photo = tmp_path / "photo.png"  # a real input: predict.py checks it before loading
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(photo)
    commands = {"eval": evaluate_checkpoint, "predict": predict}
    for script, extra in (("eval", []), ("predict", [f"input={photo}", "output=out"])):
        overrides = [f"ckpt_path={ckpt}", "+data.num_classes=3", *extra]
        cfg = compose_job(script, tmp_path, tmp_path / script, overrides)
        with pytest.raises(ConfigError, match=r"data.num_classes=3 \(the checkpoint has 5\)"):
            commands[script](cfg)
    stored = torch.load(ckpt, weights_only=True)["config"]
    renamed = {"data": {"class_names": ["a", "b", "c", "d", "e"]}}
    with pytest.raises(ConfigError, match=r"data.class_names=\['a', .*the checkpoint has"):
        checkpoint_overrides(renamed, stored)
    same = {"data": {"num_classes": 5, "num_workers": 0}}
    assert checkpoint_overrides(same, stored) == same  # agreeing or unrelated keys pass


# --- case 9: eval.py split=test ---------------------------------------------------------


def write_camvid(root: Path, splits: dict[str, int]) -> Path:
    """A CamVid-layout folder (``<split>/``, ``<split>annot/``, ``<split>.txt``) of 32x64
    frames, classes 0-10, no void."""
    rng = np.random.default_rng(0)
    for split, count in splits.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(count):
            name = f"{split}{i:03d}.png"
            image = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / split / name)
            Image.fromarray(rng.integers(0, 11, (32, 64), dtype=np.uint8)).save(
                root / f"{split}annot" / name
            )
            lines.append(f"/{split}/{name} /{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_eval_split_test_scores_the_roots_test_split_or_says_it_has_none(tmp_path, capsys):
    shared = write_camvid(tmp_path / "shared_copy", {"train": 2, "val": 2})  # no test split
    full = write_camvid(tmp_path / "full_copy", {"train": 2, "val": 2, "test": 3})
    data = ["data=camvid", f"data.dataset.root={shared}", "data.num_workers=0"]
    ckpt = save_checkpoint(tmp_path, data)
    assert torch.load(ckpt, weights_only=True)["config"]["data"]["test_split"] == "val"

    cases = {  # the command, the same without '+', and data=camvid
        "plus": [f"+data.dataset.root={full}"],
        "plain": [f"data.dataset.root={full}"],
        "group": ["data=camvid", f"data.dataset.root={full}", "data.num_workers=0"],
    }
    for name, overrides in cases.items():
        out = tmp_path / name
        cfg = compose_job("eval", tmp_path, out, [f"ckpt_path={ckpt}", "split=test", *overrides])
        evaluate_checkpoint(cfg)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["split"] == "test", name
        assert np.load(out / "confusion_matrix.npy").sum() == 3 * 32 * 64, name  # 3 test frames
        assert f"Results: {out}" in capsys.readouterr().out

    cfg = compose_job("eval", tmp_path, tmp_path / "none", [f"ckpt_path={ckpt}", "split=test"])
    with pytest.raises(DataError, match=rf"data.dataset.root={shared} has no test split"):
        evaluate_checkpoint(cfg)
    assert not (tmp_path / "none" / "metrics.json").exists()


# --- case 10: the documented predict and notebook commands ---------------------------------


@pytest.mark.slow
def test_readme_predict_command_on_a_photo_in_the_current_folder(tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path, ["data.num_classes=5"])
    image = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")

    def predict_command(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(PROJECT_ROOT / "predict.py"), f"ckpt_path={ckpt}", *args]
        env = {**ENV, "SEGKIT_ROOT": str(tmp_path)}  # its run folder under tmp_path/logs
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)

    result = predict_command("input=photo.png", "output=preds/")  # as in docs/evaluation.md
    assert result.returncode == 0, result.stderr[-3000:]
    written = Image.open(tmp_path / "preds" / "photo.png")
    assert written.mode == "P" and written.size == (64, 32)
    assert f"Results: {tmp_path / 'preds'}" in result.stdout

    # the refusals, in-process (predict.py's own checks, on the documented relative paths,
    # from the same folder): a missing input; output=. would write ./photo.png over it
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="input=missing.png does not exist"):
        input_files(Path("missing.png"))
    files = input_files(Path("photo.png"))
    check_output(Path("preds"), Path("photo.png"), files)  # the documented case is fine
    with pytest.raises(ValueError, match="over the input image"):
        check_output(Path("."), Path("photo.png"), files)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "photo.png")), image)


def fake_run(folder: Path, confmat: np.ndarray) -> None:
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create([]), folder / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"data": {}}), folder / ".hydra" / "config.yaml")
    write_report(folder, confmat, ["sky", "road"], "val", extra={"epoch": 0})


@pytest.mark.slow
def test_readme_notebook_command_runs_as_written_and_keeps_the_notebook(tmp_path):
    clone = tmp_path / "clone"  # the project layout: notebooks/ and logs/ side by side
    (clone / "notebooks").mkdir(parents=True)
    notebook = clone / "notebooks" / "per_class_iou.ipynb"
    shutil.copy(PROJECT_ROOT / "notebooks" / "per_class_iou.ipynb", notebook)
    original = notebook.read_bytes()
    sweep = clone / "logs" / "train" / "multiruns" / "2026-01-01_00-00-00"
    fake_run(sweep / "0", np.array([[8, 2], [1, 5]]))
    fake_run(sweep / "1", np.array([[9, 1], [3, 3]]))
    jupyter = Path(sys.executable).parent / "jupyter"
    command = (  # docs/experiments.md's command, from the project root
        f"cd {shlex.quote(str(clone))} && SEGKIT_RUNS=logs/train/multiruns/2026-01-01_00-00-00 "
        f"{shlex.quote(str(jupyter))} execute notebooks/per_class_iou.ipynb "
        "--output=../logs/per_class_iou"
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert notebook.read_bytes() == original  # the tracked notebook is not rewritten
    executed = json.loads((clone / "logs" / "per_class_iou.ipynb").read_text())
    text = "".join(
        "".join(out.get("text", ""))
        for cell in executed["cells"]
        for out in cell.get("outputs", [])
    )
    assert "2 runs, 2 with metrics.json" in text


# --- every run says where its results are ------------------------------------------------


@pytest.mark.slow
def test_train_ends_with_the_results_folder(resumed):
    last = resumed["stdout"].strip().splitlines()[-1]
    assert last.startswith(f"Results: {resumed['run']} (")


def test_multirun_ends_with_the_sweep_folder_and_the_leaderboard_command(tmp_path, capsys):
    sweep = tmp_path / "multiruns" / "2026-01-01_00-00-00"
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"Results: {sweep}")
    assert lines[1] == f"Leaderboard: python -m segkit.cli.leaderboard {sweep}"
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra.compose("train", return_hydra_config=True)
    targets = [c._target_ for c in cfg.hydra.callbacks.values()]
    assert "segkit.engine.hydra_callbacks.SweepSummary" in targets
    assert "segkit.engine.hydra_callbacks.KeepEarlierConfigs" in targets
