"""eval.py's run as a function (:func:`evaluate_checkpoint`): a trained checkpoint, or an
ensemble of several, scored on a split into the report files train.py writes
(``metrics.json``, ``confusion_matrix.npy``, ``per_class.csv``) and the per-class console
table. The command and its options: docs/evaluation.md.

The model, data and task come from the config stored in the checkpoint
(:func:`segkit.engine.ensemble.load_trained`); the ``data.*``/``task.*`` keys of the
command line are merged over it (:func:`command_line_overrides`), except the input
channels, normalisation and eval transform that a ``data=<group>`` brings, which the model
keeps from its training (:func:`keep_trained_input`). ``split=test`` scores a real test
split (:func:`choose_test_split`). The trainer is built by
:func:`segkit.engine.runner.build_trainer` from ``conf/eval.yaml``'s ``trainer``, as
train.py's is.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from segkit.config_values import check_config
from segkit.data.folder import DataError
from segkit.engine.checkpoints import load_checkpoint
from segkit.engine.ensemble import checkpoint_paths, load_trained
from segkit.engine.loading import Trained, given_groups
from segkit.engine.runner import build_trainer, check_splits, evaluate, print_results
from segkit.tasks.instance import InstanceSegmentationTask
from segkit.tasks.semantic import SemanticSegmentationTask

# data keys conf/eval.yaml declares as null, so they can be set without '+'
PLACEHOLDERS = ("dataset.root", "val_split", "test_split")
# data keys that fix how the trained model sees its input: a data=<group> brings its own
# defaults for them, which would score a model on inputs it was not trained on
TRAINED_INPUT_KEYS = ("in_channels", "mean", "std", "eval_transform", "dataset.mean", "dataset.std")


def command_line_overrides(cfg: DictConfig) -> dict:
    """The ``data`` and ``task`` keys given on the command line, to merge over the stored ones
    (plain containers, interpolations resolved here); unset :data:`PLACEHOLDERS` are left
    out, so the stored values stay."""
    given = given_groups(cfg)
    data = given.get("data", {})
    for key in PLACEHOLDERS:
        *parents, last = key.split(".")
        node = data
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(last, 0) is None:
            del node[last]
    if data.get("dataset") == {}:
        del data["dataset"]
    return {key: value for key, value in given.items() if value}


def keep_trained_input(given: dict) -> tuple[dict, dict[str, Any]]:
    """``given`` without the :data:`TRAINED_INPUT_KEYS` that a ``data=<group>`` brought (not
    named on the command line), so the model is scored on the normalisation and eval
    transform it was trained with; a key set on the command line (``data.mean=[...]``) is
    used.

    Returns:
        ``(overrides, brought)``: ``given`` less those keys, and ``{key: value}`` of each
        one left out, for :func:`say_kept_input`.
    """
    given = copy.deepcopy(given)
    brought = {}
    for key in TRAINED_INPUT_KEYS:
        *parents, last = key.split(".")
        mine = given.get("data") or {}
        for parent in parents:
            mine = mine.get(parent) if isinstance(mine, dict) else None
        if not isinstance(mine, dict) or last not in mine:
            continue
        # data.mean=... given by hand also sets the dataset's mean (an interpolation)
        if given_on_command_line(f"data.{key}") or given_on_command_line(f"data.{last}"):
            continue
        brought[key] = mine.pop(last)
    return given, brought


def say_kept_input(brought: dict[str, Any], stored: Mapping[str, Any]) -> None:
    """Print each key of ``brought`` (:func:`keep_trained_input`) whose value differs from
    the one in ``stored``, the checkpoint's config, which the model keeps."""
    for key, value in brought.items():
        trained = stored.get("data")
        for part in key.split("."):
            trained = trained.get(part) if isinstance(trained, Mapping) else None
        if value != trained:
            print(
                f"data.{key}: kept the checkpoint's {trained!r}, not {value!r} from the "
                f"data group (the model was trained on it); set data.{key}= to override."
            )


def given_on_command_line(key: str) -> bool:
    """Whether ``key`` (e.g. ``data.test_split``) was set on the command line."""
    if not HydraConfig.initialized():
        return False
    pattern = re.compile(rf"^[+~]*{re.escape(key)}=")
    return any(pattern.match(o) for o in HydraConfig.get().overrides.task)


def choose_test_split(stored: DictConfig) -> L.LightningDataModule:
    """The data module for ``split=test``, scoring a real test split.

    A stored ``data.test_split`` equal to ``data.val_split`` stands in for a test split the
    training data did not have (CamVid's shared copy, Cityscapes). Unless
    ``data.test_split`` was given on the command line, the split named ``test`` of the
    (possibly new) ``data.dataset.root`` is scored instead.

    Raises:
        DataError: that root has no ``test`` split either.
    """
    data = stored.data
    if data.test_split != data.val_split or given_on_command_line("data.test_split"):
        return hydra.utils.instantiate(data)
    stand_in = data.test_split
    data.test_split = "test"
    datamodule = hydra.utils.instantiate(data)
    root = OmegaConf.select(data, "dataset.root")
    try:
        datamodule.prepare_data()
        datamodule.build_dataset("test")
    except DataError as error:
        raise DataError(
            f"split=test: the checkpoint's config scores data.test_split={stand_in!r} in place "
            f"of a test split, and data.dataset.root={root} has no test split either ({error}). "
            "Score split=val, point data.dataset.root at data with a test split, or name the "
            "split to score with data.test_split=<name>."
        ) from error
    print(
        f"data.test_split: the checkpoint's config scored {stand_in!r} in place of a test "
        f"split; {root} has a 'test' split, which is scored."
    )
    return datamodule


def score_split(cfg: DictConfig, trained: Trained) -> dict:
    """Confusion-matrix scores (and COCO AP for instance tasks) of ``trained.task``, which
    already holds the checkpoint's weights, on ``cfg.split``; writes the report files."""
    stored = trained.config
    if cfg.split not in ("val", "test"):
        raise ValueError(
            f"split={cfg.split} must be val or test; to score another split name set "
            f"data.val_split=<name> (the stored val split is {stored.data.val_split!r})."
        )
    datamodule = (
        choose_test_split(stored) if cfg.split == "test" else hydra.utils.instantiate(stored.data)
    )
    inference = OmegaConf.select(stored, "task.inference")
    print(
        f"evaluating {cfg.ckpt_path} on split {cfg.split} (data.{cfg.split}_split="
        f"{datamodule.splits[cfg.split]!r}), inference: {inference or 'whole'}"
    )
    check_splits(datamodule, [cfg.split])  # before the trainer: check_data's checks
    trainer = build_trainer(cfg)  # conf/eval.yaml's trainer: one device, no logger
    loaded = (cfg.ckpt_path, trained.epoch)
    output_dir = cfg.paths.output_dir
    return evaluate(trainer, trained.task, datamodule, cfg.split, None, output_dir, loaded)


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """``python eval.py``: score ``cfg.ckpt_path`` (one checkpoint, or an ensemble) on
    ``cfg.split`` of ``conf/eval.yaml``'s composed config.

    Returns:
        ``{"metrics": the metrics.json dict, "score": its mIoU (mask_AP for an instance
        task), "trained": the loaded checkpoint(s) (:class:`~segkit.engine.loading.Trained`)}``.
    """
    check_config(cfg)  # keys and values of the command line, before a file is read
    overrides, brought = keep_trained_input(command_line_overrides(cfg))
    if brought:  # compared with each checkpoint's stored config (mapped, the weights unread)
        for path in checkpoint_paths(cfg.ckpt_path):
            say_kept_input(brought, load_checkpoint(path, mmap=True)["config"])
    trained = load_trained(cfg.ckpt_path, overrides, cfg.get("ckpt_weights"))
    task = trained.task
    if not isinstance(task, SemanticSegmentationTask | InstanceSegmentationTask):
        raise TypeError(f"eval.py cannot score a {type(task).__name__} checkpoint yet.")
    metrics = score_split(cfg, trained)
    print_results(cfg.paths.output_dir, "metrics.json, per_class.csv, confusion_matrix.npy")
    # instance tasks: the same report, plus COCO AP in metrics.json
    key = "mask_AP" if isinstance(task, InstanceSegmentationTask) else "mIoU"
    return {"metrics": metrics, "score": metrics.get(key), "trained": trained}
