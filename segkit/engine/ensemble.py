"""Ensembles of trained checkpoints: softmax probabilities averaged, optionally weighted.

    python eval.py ckpt_path=[a.ckpt,b.ckpt] [ckpt_weights=[2,1]]
    python predict.py ckpt_path=[a.ckpt,b.ckpt] input=... output=...

Each member is rebuilt from its own checkpoint (:func:`load_ensemble`, with
:func:`segkit.engine.loading.load_task`) and scores an image with its own inference
(``class_scores``: whole, sliding window or multi-scale, as its config says, or as
``inference=`` sets for all), so members may differ in architecture.
The ensemble's score of a pixel is ``log(sum_i w_i softmax(s_i))`` with the weights
normalised to sum 1 (equal weights by default): the log of the averaged probabilities, the
convention of :class:`segkit.evaluation.inference.Inference`, so ``argmax`` and the losses
work on it unchanged. An ensemble of one is its member's ``log_softmax``: the same labels.

Members must share the class set (``data.num_classes`` and ``data.class_names``) and the
input normalisation (``data.mean``, ``data.std``): the images are read and normalised once,
with the first checkpoint's data config, which also gives the data, palette and split.

:func:`load_trained` loads what ``ckpt_path`` names: one checkpoint, or the ensemble of a
list (``ckpt_path=[a.ckpt]`` too) or of a checkpoint given ``ckpt_weights``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from segkit.config import ConfigError
from segkit.engine.loading import Trained, load_task
from segkit.tasks.semantic import SemanticSegmentationTask

# Keys every member must share: the classes (fixed by the weights) and the normalisation
# of the one input all members see.
SHARED_KEYS = ("num_classes", "class_names", "mean", "std")


def checkpoint_paths(ckpt_path: str | Sequence[str]) -> list[str]:
    """``ckpt_path`` as a list: one path, or the list given as ``ckpt_path=[a,b]``.

    Raises:
        ConfigError: an empty list.
    """
    if isinstance(ckpt_path, str):
        return [ckpt_path]
    paths = [str(p) for p in ckpt_path]
    if not paths:
        raise ConfigError("ckpt_path=[] names no checkpoint; give one path or a list of them.")
    return paths


def load_ensemble(
    paths: Sequence[str],
    overrides: Mapping[str, Any] | None = None,
    weights: Sequence[float] | None = None,
) -> Trained:
    """Load every checkpoint of ``paths`` (:func:`~segkit.engine.loading.load_task`, each with
    the same ``overrides``) and average them (:func:`ensemble_task`).

    Returns:
        the ensemble: ``path`` lists the members' files, ``config`` is the first member's,
        ``epoch`` is ``None``, ``members`` holds each member.

    Raises:
        ConfigError: the members do not share :data:`SHARED_KEYS` (:func:`check_members`), or
            ``weights`` are not one positive number per member.
        TypeError: a member is not a semantic segmentation task.
    """
    members = [load_task(path, overrides) for path in paths]
    check_members(members)
    task = ensemble_task(members, weights)
    return Trained([m.path for m in members], members[0].config, task, None, members)


def load_trained(
    ckpt_path: str | Sequence[str],
    overrides: Mapping[str, Any] | None = None,
    weights: Sequence[float] | None = None,
) -> Trained:
    """What ``ckpt_path`` names: one checkpoint (:func:`~segkit.engine.loading.load_task`),
    or the ensemble (:func:`load_ensemble`) of a list, or of one checkpoint given ``weights``
    (``ckpt_weights``)."""
    paths = checkpoint_paths(ckpt_path)
    if is_ensemble(ckpt_path) or weights is not None:
        return load_ensemble(paths, overrides, weights)
    return load_task(paths[0], overrides)


def check_members(members: Sequence[Trained]) -> None:
    """Refuse an ensemble whose members differ in a :data:`SHARED_KEYS` data key.

    Raises:
        ConfigError: naming each differing ``data.<key>``, both checkpoints and values.
    """
    first = members[0]
    problems = []
    for member in members[1:]:
        for key in SHARED_KEYS:
            mine, theirs = _data_value(first.config, key), _data_value(member.config, key)
            if mine != theirs:
                problems.append(
                    f"data.{key}: {first.path} has {mine!r}, {member.path} has {theirs!r}"
                )
    if problems:
        raise ConfigError(
            f"ckpt_path: the checkpoints of an ensemble must share their classes and input "
            f"normalisation ({'; '.join(problems)}). Average only models trained on the same "
            "classes with the same data.mean/data.std."
        )


def _data_value(config: DictConfig, key: str) -> Any:
    value = OmegaConf.select(config, f"data.{key}")
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def ensemble_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """``ckpt_weights`` normalised to sum 1; ``None`` gives equal weights.

    Raises:
        ConfigError: not one positive number per checkpoint.
    """
    if weights is None:
        return [1.0 / count] * count
    values = [float(w) for w in weights]
    if len(values) != count or min(values) <= 0 or not all(map(math.isfinite, values)):
        raise ConfigError(
            f"ckpt_weights={values} must hold one positive number per checkpoint "
            f"({count} in ckpt_path), e.g. ckpt_weights=[{','.join(['1'] * count)}]; "
            "they are normalised to sum 1."
        )
    total = sum(values)
    return [w / total for w in values]


class Ensemble(nn.Module):
    """Weighted average of the members' softmax probabilities (see the module docstring).

    Args:
        members: semantic tasks, each scoring ``[B, 3, H, W]`` images with ``class_scores``
            (logits or log-probabilities ``[B, C, H, W]``).
        weights: one positive weight per member, normalised here; ``None``: equal.
    """

    def __init__(
        self,
        members: Sequence[SemanticSegmentationTask],
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weights = ensemble_weights(weights, len(members))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` log of the weighted mean probabilities (``exp`` sums to 1)."""
        total: torch.Tensor | None = None
        for member, weight in zip(self.members, self.weights, strict=True):
            log_probs = F.log_softmax(member.class_scores(images).float(), dim=1)
            log_probs = log_probs + math.log(weight)
            # log(sum w_i p_i) without leaving log space
            total = log_probs if total is None else torch.logaddexp(total, log_probs)
        assert total is not None
        return total


def ensemble_task(
    members: Sequence[Trained], weights: Sequence[float] | None = None
) -> SemanticSegmentationTask:
    """A semantic task whose model is the :class:`Ensemble` of ``members`` (eval mode).

    It scores like the members' first (classes, ignore index, loss for ``val/loss``) and
    has no inference of its own (each member applies its own). Its ``extra_scores`` name the
    checkpoints, epochs and normalised weights, so eval.py's ``metrics.json`` records them.

    Raises:
        TypeError: a member is not a semantic segmentation task.
    """
    for member in members:
        if not isinstance(member.task, SemanticSegmentationTask):
            raise TypeError(
                f"ckpt_path: {member.path} holds a {type(member.task).__name__}; ensembles "
                "average the class probabilities of semantic segmentation models only."
            )
    first = members[0].task
    model = Ensemble([m.task for m in members], weights)
    task = SemanticSegmentationTask(
        model=model,
        loss=first.loss,
        optimizer=None,  # never trained
        scheduler=None,
        num_classes=first.num_classes,
        class_names=first.class_names,
        ignore_index=first.ignore_index,
    )
    record = {
        "checkpoint": [m.path for m in members],
        "epoch": [m.epoch for m in members],
        "ensemble_weights": model.weights,
    }
    task.extra_scores = {split: dict(record) for split in ("val", "test")}
    return task.eval()


def is_ensemble(ckpt_path: Any) -> bool:
    """Whether ``ckpt_path`` was given as a list (``ckpt_path=[a.ckpt]`` too)."""
    return isinstance(ckpt_path, list | tuple | ListConfig)
