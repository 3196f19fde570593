"""Score a trained checkpoint: python eval.py ckpt_path=<.ckpt> [split=test] [inference=slide]

Rebuilds the data module and the task from the config stored in the checkpoint (see
:class:`segkit.engine.callbacks.checkpointing.ConfigInCheckpoint`), scores the weights on a
split and writes ``metrics.json``, ``confusion_matrix.npy`` and ``per_class.csv`` into the
run folder (``logs/eval/runs/<time>``), exactly as train.py does, plus the per-class console
table.

``data.*``/``task.*`` given here are merged over the stored config; ``data=<group>`` merges
that whole data config, except the input channels, normalisation and eval transform the
model was trained with (``in_channels``, ``mean``, ``std``, ``eval_transform``:
:func:`keep_trained_input`). Class counts and names that differ from the checkpoint's stop
the run (:func:`segkit.engine.checkpoints.checkpoint_overrides`). ``split=test`` scores a real test
split: when the stored ``data.test_split`` is only the validation split standing in for a
missing one (CamVid's shared copy, Cityscapes), the root's own ``test`` split is scored if it
has one, and the run stops saying so if it has none (:func:`choose_test_split`).

``ckpt_path=[a.ckpt,b.ckpt]`` scores the ensemble of several checkpoints (softmax
probabilities averaged, ``ckpt_weights=[2,1]`` to weight them; :mod:`segkit.engine.ensemble`); the
data config is the first checkpoint's, and ``metrics.json`` lists every checkpoint, epoch
and weight.

``ckpt_path`` may also be a result published with ``python -m segkit.cli.publish`` (a
``model.pt`` holding the weights and config only, e.g. ``results/camvid/<recipe>/model.pt``).
"""

from __future__ import annotations

import re

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from segkit.data.folder import DataError
from segkit.engine.ensemble import checkpoint_paths, ensemble_task, is_ensemble, load_members
from segkit.engine.runner import evaluate, print_results, quiet_known_noise
from segkit.tasks.instance import InstanceSegmentationTask
from segkit.tasks.semantic import SemanticSegmentationTask

# data keys conf/eval.yaml declares as null, so they can be set without '+'
PLACEHOLDERS = ("dataset.root", "val_split", "test_split")
# data keys that fix how the trained model sees its input: a data=<group> brings its own
# defaults for them, which would score a model on inputs it was not trained on
TRAINED_INPUT_KEYS = ("in_channels", "mean", "std", "eval_transform", "dataset.mean", "dataset.std")


def stored_overrides(cfg: DictConfig) -> dict:
    """The ``data`` and ``task`` keys given on the command line, to merge over the stored ones
    (plain containers, interpolations resolved here); unset :data:`PLACEHOLDERS` are left
    out, so the stored values stay."""
    given = {
        key: OmegaConf.to_container(cfg[key], resolve=True)
        for key in ("data", "task")
        if cfg.get(key)
    }
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


def keep_trained_input(given: dict, stored: dict) -> dict:
    """``given`` with the :data:`TRAINED_INPUT_KEYS` that a ``data=<group>`` brought (not
    named on the command line) dropped where they differ from the checkpoint's, so the
    model is scored on the normalisation and eval transform it was trained with; each
    one kept is printed. A key set on the command line (``data.mean=[...]``) is used."""
    for key in TRAINED_INPUT_KEYS:
        *parents, last = key.split(".")
        mine, theirs = given.get("data") or {}, stored.get("data") or {}
        for parent in parents:
            mine = mine.get(parent) if isinstance(mine, dict) else None
            theirs = theirs.get(parent) if isinstance(theirs, dict) else None
        if not isinstance(mine, dict) or last not in mine:
            continue
        # data.mean=... given by hand also sets the dataset's mean (an interpolation)
        if given_on_command_line(f"data.{key}") or given_on_command_line(f"data.{last}"):
            continue
        trained = theirs.get(last) if isinstance(theirs, dict) else None
        if mine[last] != trained:
            print(
                f"data.{key}: kept the checkpoint's {trained!r}, not {mine[last]!r} from the "
                f"data group (the model was trained on it); set data.{key}= to override."
            )
        del mine[last]
    return given


def given_on_command_line(key: str) -> bool:
    """Whether ``key`` (e.g. ``data.test_split``) was set on the command line."""
    if not HydraConfig.initialized():
        return False
    pattern = re.compile(rf"^[+~]*{re.escape(key)}=")
    return any(pattern.match(o) for o in HydraConfig.get().overrides.task)


def choose_test_split(stored: DictConfig) -> L.LightningDataModule:
    """The data module for ``split=test``, scoring a real test split.

    A stored ``data.test_split`` equal to ``data.val_split`` stands in for a test split the
    training data did not have. Unless ``data.test_split`` was given on the command line,
    the split named ``test`` of the (possibly new) ``data.dataset.root`` is scored instead.

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


def evaluate_task(
    cfg: DictConfig, stored: DictConfig, task: L.LightningModule, epoch: int | None
) -> dict:
    """Confusion-matrix scores (and COCO AP for instance tasks) of ``task``, which already
    holds the checkpoint's weights, on ``cfg.split``; writes the report files."""
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
    quiet_known_noise()  # as build_trainer does for train.py
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        precision=cfg.precision,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=cfg.paths.output_dir,
    )
    loaded = (cfg.ckpt_path, epoch)
    return evaluate(trainer, task, datamodule, cfg.split, None, cfg.paths.output_dir, loaded)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    # one checkpoint, or an ensemble of several (segkit/engine/ensemble.py)
    members = load_members(
        checkpoint_paths(cfg.ckpt_path),
        lambda stored: keep_trained_input(stored_overrides(cfg), stored),
    )
    stored, task, epoch = members[0].config, members[0].task, members[0].epoch
    if is_ensemble(cfg.ckpt_path) or cfg.get("ckpt_weights") is not None:
        task, epoch = ensemble_task(members, cfg.get("ckpt_weights")), None
    if not isinstance(task, SemanticSegmentationTask | InstanceSegmentationTask):
        raise TypeError(f"eval.py cannot score a {type(task).__name__} checkpoint yet.")
    metrics = evaluate_task(cfg, stored, task, epoch)
    print_results(cfg.paths.output_dir, "metrics.json, per_class.csv, confusion_matrix.npy")
    # instance tasks: the same report, plus COCO AP in metrics.json
    key = "mask_AP" if isinstance(task, InstanceSegmentationTask) else "mIoU"
    return metrics.get(key)


if __name__ == "__main__":
    main()
