"""Every option of every conf/ group composes, and its node instantiates to the right thing."""

from __future__ import annotations

import io
import logging
import logging.config
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from optuna.samplers import BaseSampler

from segkit.engine.sweeps import check_optimized_metric, check_searched_keys
from segkit.models.weights import build_model
from segkit.tasks import build_task
from segkit.tasks.class_weights import CHOICES as CLASS_WEIGHT_CHOICES

from .helpers import PROJECT_ROOT, compose

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


def check_job_logging(cfg, run_dir: Path) -> None:
    """Hydra's job logging as conf/hydra sets it: the console gets the bare message, the
    run folder's log file the time and source too; the folders resolve under the test root."""
    assert Path(cfg.hydra.run.dir).is_relative_to(cfg.paths.log_dir)
    assert Path(cfg.hydra.sweep.dir).is_relative_to(cfg.paths.log_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = OmegaConf.to_container(cfg.hydra.job_logging, resolve=True)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    console = io.StringIO()
    try:
        logging.config.dictConfig(settings)
        for handler in root.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.setStream(console)
        logging.getLogger("segkit.probe").info("epoch 1 done")
        for handler in root.handlers:
            handler.flush()
        log_file = run_dir / f"{cfg.hydra.job.name}.log"
        written = log_file.read_text()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert console.getvalue() == "epoch 1 done\n"
    assert "[segkit.probe]" in written and written.rstrip().endswith("epoch 1 done")
    assert written[1:5].isdigit()  # starts with the time: [YYYY-...


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
        assert isinstance(build_model(cfg.model), torch.nn.Module)
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
        # every searched key names something in the composed config, the metric is one the
        # task logs, and the sampler the file names builds (the storage is the sweep's own
        # file, created only when a sweep starts)
        check_searched_keys(cfg)
        check_optimized_metric(cfg)
        assert isinstance(hydra.utils.instantiate(cfg.hydra.sweeper.sampler), BaseSampler)
    elif group == "paths":
        # every path resolves, absolute, inside the root the test chose (nothing is written
        # beside the checkout or the data), and output_dir is the run's own folder
        paths = OmegaConf.to_container(cfg.paths, resolve=True)
        assert all(Path(value).is_relative_to(tmp_path) for value in paths.values()), paths
        assert paths["output_dir"] == str(tmp_path / "run")
    elif group == "hydra":
        check_job_logging(cfg, tmp_path / "run")
    elif group == "augment":  # behaviour: tests/data/test_augment.py
        transform = hydra.utils.instantiate(cfg.data).train_transform
        out = transform(image=np.zeros((80, 72, 3), np.uint8), mask=np.zeros((80, 72), np.uint8))
        # default: shapes' flip and jitter keep the size; presets crop to data.crop_size
        assert out["mask"].shape == ((80, 72) if option == "default" else (96, 96))
    elif group == "inference":
        task = build_task(cfg).eval()
        assert task.inference is not None
        with torch.no_grad():
            scores = task.inference(task, torch.randn(1, 3, 40, 48))
        assert scores.shape == (1, cfg.data.num_classes, 40, 48)
    else:
        pytest.fail(f"no check for group {group}: add one")
