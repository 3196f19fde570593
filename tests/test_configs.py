"""Every option of every conf/ group composes, and its node instantiates to the right thing."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import pytest
import torch

from segkit.class_weights import CHOICES as CLASS_WEIGHT_CHOICES
from segkit.tasks import build_task

from .conftest import PROJECT_ROOT
from .helpers import compose

CONF = PROJECT_ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def folder_overrides(root: Path) -> list[str]:
    return [f"data.dataset.root={root}", "data.num_classes=3", "data.class_names=[a,b,c]"]


def test_every_group_has_options():
    expected = {
        "data",
        "model",
        "loss",
        "optimizer",
        "scheduler",
        "trainer",
        "callbacks",
        "logger",
        "paths",
        "experiment",
        "hparams_search",
        "debug",
        "task",
        "hydra",
    }
    assert expected <= set(GROUPS)
    for group in expected:
        assert options(group), group


CASES = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_instantiates(group, option, tmp_path, folder_dataset):
    overrides = [f"{group}={option}"]
    if group == "data" and option == "folder":
        overrides += folder_overrides(folder_dataset)
    if group == "trainer" and option == "gpu" and not torch.cuda.is_available():
        overrides += ["trainer.accelerator=cpu", "trainer.precision=32-true"]
    cfg = compose(tmp_path, overrides)
    node = cfg.get(group)

    if group == "data":
        dm = hydra.utils.instantiate(cfg.data)
        assert isinstance(dm, L.LightningDataModule) and dm.num_classes == len(dm.class_names)
    elif group == "model":
        assert isinstance(hydra.utils.instantiate(cfg.model), torch.nn.Module)
    elif group == "loss":
        loss = hydra.utils.instantiate(cfg.loss)
        logits = torch.randn(2, cfg.data.num_classes, 8, 8)
        value = loss(logits, torch.randint(0, cfg.data.num_classes, (2, 8, 8)))
        assert value.ndim == 0 and torch.isfinite(value)
    elif group in ("optimizer", "scheduler", "task"):
        task = build_task(cfg)
        optimizer = hydra.utils.instantiate(cfg.optimizer)(params=task.parameters())
        assert isinstance(optimizer, torch.optim.Optimizer)
        if cfg.scheduler:
            scheduler = hydra.utils.instantiate(cfg.scheduler)(optimizer, total_steps=10)
            assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    elif group == "trainer" or group == "debug":
        assert isinstance(hydra.utils.instantiate(cfg.trainer), L.Trainer)
    elif group in ("callbacks", "logger"):
        for sub in (node or {}).values():
            hydra.utils.instantiate(sub)
    elif group == "experiment":
        for node in (cfg.loss, *(cfg.loss.get("losses") or {}).values()):
            if isinstance(node.get("class_weights"), str):  # computed from data at train time
                assert node.class_weights in CLASS_WEIGHT_CHOICES
                node.class_weights = None
        assert isinstance(build_task(cfg), L.LightningModule)
        hydra.utils.instantiate(cfg.data)
    elif group == "hparams_search":
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        assert cfg.optimized_metric.startswith("val/")
    elif group == "paths":
        assert Path(cfg.paths.data_dir).is_relative_to(tmp_path)
    elif group == "hydra":
        assert cfg.hydra.job.chdir is False
    elif group == "inference":
        task = build_task(cfg).eval()
        assert task.inference is not None
        with torch.no_grad():
            scores = task.inference(task, torch.randn(1, 3, 40, 48))
        assert scores.shape == (1, cfg.data.num_classes, 40, 48)
    else:
        pytest.fail(f"no check for group {group}: add one")
