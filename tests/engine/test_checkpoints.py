"""Checkpoints written before the sub-package layout (issue 28) still load: their stored
``_target_`` paths name the old flat modules (``segkit.losses.CrossEntropyLoss``), which
:data:`~segkit.engine.checkpoints.MOVED_MODULES` maps to today's."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from segkit.engine import checkpoints
from segkit.engine.callbacks.checkpointing import ResumeGuard
from segkit.engine.checkpoints import (
    config_changes,
    load_checkpoint,
    task_from_checkpoint,
    upgrade_targets,
)
from segkit.models.weights import WeightsError, build_model, read_state_dict
from segkit.tasks import build_task

from ..helpers import PROJECT_ROOT, SMALL_DATA, SMALL_MODEL, compose_job

# Written by hand from the layout before issue 28, independently of MOVED_MODULES: today's
# module -> where a checkpoint of that time names it.
OLD_MODULE = {
    "segkit.tasks.losses": "segkit.losses",
    "segkit.tasks.schedulers": "segkit.schedulers",
    "segkit.engine.callbacks.checkpointing": "segkit.callbacks",
    "segkit.engine.callbacks.guards": "segkit.callbacks",
    "segkit.engine.callbacks.figures": "segkit.callbacks",
    "segkit.engine.loggers": "segkit.loggers",
    "segkit.evaluation.inference": "segkit.inference",
}
RESULTS = PROJECT_ROOT / "results"


def targets(node: Any) -> list[str]:
    """Every ``_target_`` value in a plain config (dicts and lists), at any depth."""
    if isinstance(node, dict):
        own = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return own + [t for value in node.values() for t in targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in targets(value)]
    return []


def with_old_targets(node: Any) -> Any:
    """``node`` with the ``_target_`` paths a checkpoint from before the layout holds."""
    if isinstance(node, dict):
        node = {key: with_old_targets(value) for key, value in node.items()}
        module, _, name = str(node.get("_target_", "")).rpartition(".")
        if module in OLD_MODULE:
            node["_target_"] = f"{OLD_MODULE[module]}.{name}"
        return node
    if isinstance(node, list):
        return [with_old_targets(value) for value in node]
    return node


@pytest.fixture
def old_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, Any], torch.nn.Module]:
    """A checkpoint of the small model whose config names the old modules; its config as
    today's layout names it; the task it was saved from."""
    overrides = [*SMALL_MODEL, *SMALL_DATA, "inference=slide", "scheduler=poly"]
    cfg = compose_job("train", tmp_path, tmp_path / "run", overrides)
    torch.manual_seed(0)
    task = build_task(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    old = with_old_targets(config)
    moved = {t for t in targets(old) if t.rpartition(".")[0] in OLD_MODULE.values()}
    assert {t.rpartition(".")[0] for t in moved} == set(OLD_MODULE.values())  # all five kinds
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": task.state_dict(), "config": old, "epoch": 3}, path)
    return path, config, task


def test_an_old_checkpoint_loads_with_todays_targets_and_the_same_logits(old_checkpoint):
    path, config, task = old_checkpoint
    checkpoint = load_checkpoint(path)
    assert checkpoint["config"] == config
    _, rebuilt = task_from_checkpoint(checkpoint)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.model(x), task.eval().model(x), rtol=0, atol=0)


def test_an_old_checkpoint_loads_as_weights_path(old_checkpoint):
    path, config, task = old_checkpoint
    model = build_model({**config["model"], "weights_path": str(path)})
    for key, value in task.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_resuming_an_old_checkpoint_sees_no_config_change(old_checkpoint):
    path, config, _ = old_checkpoint
    guard = ResumeGuard(config)
    guard.on_load_checkpoint(None, None, torch.load(path, weights_only=True))
    assert guard.stored_config == config
    assert config_changes(guard.stored_config, config) == []


def test_upgrade_keeps_everything_but_moved_targets():
    stored = {
        "loss": {"_target_": "segkit.losses.DiceLoss", "ignore_index": 255},
        "model": {"_target_": "segkit.models.unet.UNet", "note": "segkit.losses.DiceLoss"},
        "callbacks": [{"_target_": "segkit.hydra_callbacks.SweepSummary"}],
        "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True},
    }
    assert upgrade_targets(stored) == {
        "loss": {"_target_": "segkit.tasks.losses.DiceLoss", "ignore_index": 255},
        "model": {"_target_": "segkit.models.unet.UNet", "note": "segkit.losses.DiceLoss"},
        "callbacks": [{"_target_": "segkit.engine.hydra_callbacks.SweepSummary"}],
        "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True},
    }
    assert stored["loss"]["_target_"] == "segkit.losses.DiceLoss"  # a copy: the input is kept


# Written by hand: the module of segkit/engine/callbacks/ that holds each callback class of
# the single callbacks module (segkit/callbacks.py, then segkit/engine/callbacks.py).
CALLBACK_MODULE = {
    "ConfigInCheckpoint": "checkpointing",
    "LastCheckpoint": "checkpointing",
    "ResumeGuard": "checkpointing",
    "TrainingBatchesCheck": "guards",
    "NonFiniteGuard": "guards",
    "EpochLines": "console",
    "RunOverview": "console",
    "FastPaths": "speed",
    "ValidationFigures": "figures",
}


@pytest.mark.parametrize("old_module", ["segkit.callbacks", "segkit.engine.callbacks"])
def test_a_callback_of_the_single_callbacks_module_names_its_module_now(old_module):
    for name, module in CALLBACK_MODULE.items():
        today = f"segkit.engine.callbacks.{module}.{name}"
        stored = {"callbacks": {"c": {"_target_": f"{old_module}.{name}", "every_n": 1}}}
        assert upgrade_targets(stored) == {"callbacks": {"c": {"_target_": today, "every_n": 1}}}
        assert hydra.utils.get_class(today).__name__ == name


@pytest.mark.parametrize(
    "path",
    sorted(RESULTS.rglob("model.pt")) + sorted(RESULTS.rglob("config.yaml")),
    ids=lambda p: str(p.relative_to(RESULTS)),
)
def test_every_target_of_a_shipped_result_resolves(path):
    """The shipped results (``model.pt`` as eval.py reads it, ``config.yaml`` as stored)."""
    if path.suffix == ".pt":
        config = load_checkpoint(path)["config"]
    else:
        config = upgrade_targets(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    found = targets(config)
    assert any(t.startswith("segkit.") for t in found)
    for target in found:
        assert callable(hydra.utils.get_object(target)), target


@pytest.mark.parametrize(
    "path", sorted(RESULTS.rglob("model.pt")), ids=lambda p: str(p.relative_to(RESULTS))
)
def test_a_shipped_model_with_the_weights_keys_in_its_config_loads(path, tmp_path):
    """Stored model configs carry ``weights_path``/``weights_strict``, which no constructor
    takes: eval.py and predict.py rebuild the model (:func:`task_from_checkpoint`, the
    training run's ``weights_path`` file long gone), and the file loads as ``weights_path``."""
    checkpoint = load_checkpoint(path)
    stored = checkpoint["config"]["model"]
    assert {"weights_path", "weights_strict"} <= set(stored)
    stored["weights_path"] = str(tmp_path / "the_run_started_from.pth")  # does not exist
    _, task = task_from_checkpoint(checkpoint)
    model = build_model({**stored, "encoder_weights": None, "weights_path": str(path)})
    for key, value in task.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


# --- files given as a checkpoint or as weights that are none ---------------------------------

CONFIG = {"model": {"_target_": "segkit.models.unet.UNet", "num_classes": 3}}  # stored config
STATE = {"model.head.weight": torch.ones(3, 8, 1, 1), "model.head.bias": torch.zeros(3)}


def _segkit_checkpoint(path: Path) -> None:
    torch.save({"state_dict": STATE, "config": CONFIG, "epoch": 3}, path)


def _folder(path: Path) -> None:
    path.mkdir()
    _segkit_checkpoint(path / "last.ckpt")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    _segkit_checkpoint(path)
    path.write_bytes(path.read_bytes()[:-100])


def _text(path: Path) -> None:
    path.write_text("epoch: 3\nstate_dict: see the cluster\n")


def _lfs_pointer(path: Path) -> None:
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 9000\n")


def _onnx(path: Path) -> None:
    path.write_bytes(b"\x08\x07\x12\x07pytorch\x1a\x052.4.0:\x00")  # an ONNX ModelProto's start


def _torchscript(path: Path) -> None:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))


def _python_objects(path: Path) -> None:
    torch.save({"state_dict": STATE, "config": CONFIG, "best": np.float64(0.5)}, path)


def _pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"epoch": 3}, protocol=4))


UNREADABLE = [  # (writer, file name, what the message says is there)
    pytest.param(_folder, "run", r"is a folder, not a (checkpoint )?file", id="folder"),
    pytest.param(_empty, "e.ckpt", r"is empty \(0 bytes\): the save or the copy", id="empty"),
    pytest.param(_truncated, "t.ckpt", r"is a damaged zip archive.*cut short", id="truncated"),
    pytest.param(_text, "t.ckpt", r"is a text file \(first line: 'epoch: 3'\)", id="text"),
    pytest.param(_lfs_pointer, "l.ckpt", r"is a Git LFS pointer.*git lfs pull", id="lfs"),
    pytest.param(_onnx, "model.onnx", r"is an ONNX model \(export\.py's output\)", id="onnx"),
    pytest.param(_torchscript, "model.pt", r"is a TorchScript archive", id="torchscript"),
    pytest.param(_python_objects, "o.ckpt", r"holds Python objects besides tensors", id="objects"),
    pytest.param(_pickle, "p.pkl", r"is a pickle .*torch\.save did not write it", id="pickle"),
]


@pytest.mark.parametrize(("write", "name", "found"), UNREADABLE)
def test_a_ckpt_path_that_is_no_checkpoint_names_what_is_there_and_the_fix(
    tmp_path, write, name, found
):
    path = tmp_path / name
    write(path)
    for read in (checkpoints.load_checkpoint, checkpoints.checkpoint_epoch):
        pattern = rf"ckpt_path={re.escape(str(path))} .*{found}"
        with pytest.raises(Exception, match=pattern) as error:
            read(path)
        assert isinstance(error.value, checkpoints.CheckpointError)
        assert "Give the .ckpt of a train.py run" in str(error.value)
        if path.is_dir():  # the checkpoints inside are named
            assert f"It holds ['{path / 'last.ckpt'}']: give one of them" in str(error.value)


@pytest.mark.parametrize(("write", "name", "found"), UNREADABLE)
def test_a_weights_path_that_is_no_state_dict_names_what_is_there_and_the_fix(
    tmp_path, write, name, found
):
    path = tmp_path / name
    write(path)
    pattern = rf"model\.weights_path={re.escape(str(path))} .*{found}.*weights_path=null"
    with pytest.raises(WeightsError, match=pattern):
        read_state_dict(path)


def test_a_broken_link_as_ckpt_path_says_where_it_points(tmp_path):
    path = tmp_path / "best.ckpt"
    path.symlink_to(tmp_path / "moved" / "best.ckpt")
    pattern = rf"ckpt_path={path} is a symbolic link to {tmp_path / 'moved' / 'best.ckpt'}, which"
    with pytest.raises(FileNotFoundError, match=pattern):
        checkpoints.load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "found"),
    [
        pytest.param(STATE, r"holds a plain state dict \(2 tensors", id="plain state dict"),
        pytest.param(
            {"state_dict": STATE, "epoch": 1, "hyper_parameters": {"lr": 0.1}},
            r"holds a Lightning checkpoint of another program \(keys \['epoch', 'hyper_parameters'",
            id="another program's lightning checkpoint",
        ),
    ],
)
def test_weights_without_a_segkit_config_say_how_to_train_from_them(tmp_path, content, found):
    path = tmp_path / "weights.ckpt"
    torch.save(content, path)
    with pytest.raises(Exception, match=rf"ckpt_path={path} {found}") as error:
        checkpoints.load_checkpoint(path)
    assert isinstance(error.value, checkpoints.CheckpointError)
    assert f"model.weights_path={path}" in str(error.value)
    # resuming from them stops as well, before Lightning restores anything
    task = torch.nn.ModuleDict({"model": torch.nn.ModuleDict({"head": torch.nn.Conv2d(8, 3, 1)})})
    cfg = OmegaConf.create({"ckpt_path": str(path), "resume": None, "paths": {"output_dir": "x"}})
    pattern = rf"{found}.*not the checkpoint of a segkit run.*model\.weights_path="
    with pytest.raises(Exception, match=pattern) as error:
        checkpoints.resume_checkpoint(cfg, task)
    assert isinstance(error.value, checkpoints.CheckpointError)


def test_a_run_folder_as_train_ckpt_path_gives_the_resume_command(tmp_path):
    run = tmp_path / "run"
    _folder(run)
    cfg = OmegaConf.create({"ckpt_path": str(run), "resume": None, "paths": {"output_dir": "x"}})
    pattern = rf"ckpt_path={run} is a folder.*hydra\.run\.dir={run} ckpt_path=last.*last\.ckpt"
    with pytest.raises(Exception, match=pattern) as error:
        checkpoints.resume_checkpoint(cfg)
    assert isinstance(error.value, checkpoints.CheckpointError)


def test_a_checkpoint_in_torchs_legacy_format_loads_memory_mapped_or_not(tmp_path):
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": STATE, "config": CONFIG}, path, _use_new_zipfile_serialization=False)
    for mmap in (False, True):  # eval.py maps a checkpoint to read its config
        checkpoint = checkpoints.load_checkpoint(path, mmap=mmap)
        assert checkpoint["config"] == CONFIG
        torch.testing.assert_close(checkpoint["state_dict"], STATE)
