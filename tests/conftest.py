"""Shared fixtures: tiny datasets written to tmp folders, the one Optuna sweep and the one
small train.py run of the session. The code they call, and every constant and path that
test modules share, is in ``helpers.py``: test modules import from there, never from here."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from hypothesis import settings

from .helpers import write_folder_dataset

# `make test` runs the suite in pytest-xdist workers, one per core: each worker and every
# process it starts computes on one thread, so the workers share the cores instead of
# oversubscribing them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]
) -> Path:
    """What ``build(folder)`` returns, for a ``folder`` built once per pytest run.

    Under pytest-xdist every worker is its own session, so a session fixture would be built
    once per worker; the workers share the parent of their base temp folder, and a file lock
    there lets the first worker build while the others wait for it (pytest-xdist's
    documented recipe). ``<folder>/.built`` records the result path once the build is done.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = root / name, root / name / ".built"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # an earlier worker's failed build
            folder.mkdir()
            done.write_text(str(build(folder)))
    return Path(done.read_text())


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return write_folder_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def optuna_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep dir of :func:`helpers.tiny_optuna_sweep`, run once per pytest run."""
    from .helpers import tiny_optuna_sweep

    return built_once(tmp_path_factory, "tiny_optuna_sweep", tiny_optuna_sweep)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run dir of the session's one small train.py run (:data:`helpers.TINY`: 2 epochs of
    U-Net ResNet-18 on 16 shapes, scored on val and test), started from a
    ``model.weights_path`` file that is deleted once training is done, so eval.py and
    predict.py must rebuild the model from the checkpoint alone. Shared by the artifact,
    eval, predict and publish tests; they only read it."""
    import hydra

    from segkit.models.weights import build_model

    from .helpers import CONF, TINY, run_train

    def build(folder: Path) -> Path:
        torch.manual_seed(0)
        start = folder / "start.pth"
        with hydra.initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = hydra.compose("train", ["data.num_classes=5"])
        torch.save(build_model(cfg.model).state_dict(), start)
        run = run_train(folder, *TINY, f"model.weights_path={start}")
        start.unlink()
        return run

    return built_once(tmp_path_factory, "trained_run", build)


# Generated-input tests (hypothesis): a bounded search in `make test`, a long one on demand
# with SEGKIT_HYPOTHESIS=long.
settings.register_profile("ci", max_examples=20, derandomize=True)
settings.register_profile("long", max_examples=500)
settings.load_profile(os.environ.get("SEGKIT_HYPOTHESIS", "ci"))
