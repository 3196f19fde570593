"""Per-class loss weights computed from the training split's label counts.

``loss.class_weights`` (of :class:`~segkit.tasks.losses.CrossEntropyLoss`,
:class:`~segkit.tasks.losses.FocalLoss`, also nested, e.g. ``loss.losses.ce.class_weights``)
takes

* ``null``: every class weighs 1;
* a list of ``C`` floats, used as given (e.g. a paper's published weights);
* ``median_frequency``: median-frequency balancing (Eigen & Fergus, ICCV 2015, Sec. 4.1):
  ``freq(c) = pixels of c / labelled pixels of the images in which c appears`` and
  ``weight(c) = median(freq) / freq(c)``;
* ``sqrt_median_frequency``: the element-wise square root of ``median_frequency``
  (``sqrt(median(freq) / freq(c))``), a milder balancing: the ratio of two classes' weights
  is the square root of their ratio under ``median_frequency``;
* ``inverse_frequency``: scikit-learn's ``class_weight="balanced"``:
  ``weight(c) = total / (K * pixels of c)``, ``total`` the labelled pixels of the split and
  ``K`` the number of classes present, so the weight averaged over the labelled pixels is 1.

The names are resolved by :func:`resolve_class_weights`, a step of ``train()`` that prints
the vectors before the task is built (building a task never reads data), from the training
split's masks as the dataset maps them (label map, labelIds -> trainIds), without
augmentation; ignored pixels count nowhere (neither as a class nor in any total). A class
with no pixel in the training split gets weight 0 (it never occurs in a training target, so
the weight has no effect) with a warning, and the median and ``K`` are taken over the
present classes only. The counts come from :func:`segkit.data.stats.label_counts` (the
start-up label checks read the same counts, counted once and cached under
``data.cache_dir``; ``python -m segkit.cli.check_data`` prints both vectors).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from segkit.data.io import DataError
from segkit.data.stats import SplitStats, label_counts

CHOICES = ("median_frequency", "sqrt_median_frequency", "inverse_frequency")


def _present(pixels: np.ndarray) -> np.ndarray:
    present = np.asarray(pixels) > 0
    if not present.any():
        raise DataError(
            "the training split has no labelled pixel (every pixel is ignored or the split is "
            "empty): no class weight can be computed from it."
        )
    return present


def median_frequency_weights(pixels: Sequence[int], image_pixels: Sequence[int]) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015).

    Args:
        pixels: ``[C]`` pixels of each class in the split.
        image_pixels: ``[C]`` labelled pixels of the images in which each class appears.

    Returns:
        float64 ``[C]``: ``median(freq) / freq(c)`` with ``freq = pixels / image_pixels``, the
        median over the classes present; 0 for a class with no pixel.
    """
    pixels = np.asarray(pixels, np.float64)
    present = _present(pixels)
    freq = pixels[present] / np.asarray(image_pixels, np.float64)[present]
    weights = np.zeros_like(pixels)
    weights[present] = np.median(freq) / freq
    return weights


def sqrt_median_frequency_weights(pixels: Sequence[int], image_pixels: Sequence[int]) -> np.ndarray:
    """The element-wise square root of :func:`median_frequency_weights`.

    Args:
        pixels: ``[C]`` pixels of each class in the split.
        image_pixels: ``[C]`` labelled pixels of the images in which each class appears.

    Returns:
        float64 ``[C]``: ``sqrt(median(freq) / freq(c))``, the median over the classes
        present; 0 for a class with no pixel.
    """
    return np.sqrt(median_frequency_weights(pixels, image_pixels))


def inverse_frequency_weights(pixels: Sequence[int]) -> np.ndarray:
    """Inverse class frequency, as scikit-learn's ``class_weight="balanced"``.

    Args:
        pixels: ``[C]`` pixels of each class in the split.

    Returns:
        float64 ``[C]``: ``total / (K * pixels(c))`` over the ``K`` classes present (``total``
        their pixel sum); 0 for a class with no pixel.
    """
    pixels = np.asarray(pixels, np.float64)
    present = _present(pixels)
    weights = np.zeros_like(pixels)
    weights[present] = pixels.sum() / (present.sum() * pixels[present])
    return weights


def weights_from_stats(name: str, stats: SplitStats) -> np.ndarray:
    """The weight vector ``name`` (one of :data:`CHOICES`) of one split's counts, ``[C]``."""
    if name == "median_frequency":
        return median_frequency_weights(stats.pixels, stats.image_pixels)
    if name == "sqrt_median_frequency":
        return sqrt_median_frequency_weights(stats.pixels, stats.image_pixels)
    if name == "inverse_frequency":
        return inverse_frequency_weights(stats.pixels)
    raise ValueError(f"unknown class weighting {name!r}; choose one of {list(CHOICES)}")


def _weight_nodes(node: Any, path: str) -> list[tuple[DictConfig, str]]:
    """Every ``(parent, dotted key)`` holding a ``class_weights`` key under ``node``."""
    if isinstance(node, DictConfig):
        keys: list[Any] = list(node.keys())
    elif isinstance(node, ListConfig):
        keys = list(range(len(node)))
    else:
        return []
    found = []
    for key in keys:
        if key == "class_weights":
            found.append((node, f"{path}.{key}"))
        elif not OmegaConf.is_missing(node, key):
            found += _weight_nodes(node[key], f"{path}.{key}")
    return found


def resolve_class_weights(
    loss_cfg: DictConfig, datamodule: Any, key: str = "loss"
) -> list[tuple[str, str, list[float]]]:
    """Replace every named ``class_weights`` in ``loss_cfg`` by its list of ``C`` floats.

    Works **in place**, so a config stored afterwards (e.g. in a checkpoint) holds the
    numbers and rebuilding the loss needs no data. Lists are checked for length ``C``;
    ``null`` is left alone. The training split's counts are read only when a name is found,
    once for all of them (:func:`~segkit.data.stats.label_counts`: cached under the data
    module's ``cache_dir``).

    Args:
        loss_cfg: the ``loss`` config node (any depth: ``losses.ce.class_weights`` too).
        datamodule: the instantiated data module (see :func:`~segkit.data.stats.label_counts`).
        key: the node's name in messages (``loss.losses.ce.class_weights``).

    Returns:
        ``(dotted key, name, weights)`` of every name replaced, in config order (``[]``
        when none was named).

    Raises:
        ValueError: an unknown name, a list whose length is not ``num_classes``, or a
            dataset whose labels cannot be counted.
    """
    num_classes = int(datamodule.num_classes)
    stats = None
    resolved = []
    for parent, path in _weight_nodes(loss_cfg, key):
        value = parent.class_weights
        if value is None:
            continue
        if isinstance(value, str):
            if value not in CHOICES:
                raise ValueError(
                    f"{path}={value!r} is not a choice: use null, a list of {num_classes} "
                    f"floats, or one of {list(CHOICES)}."
                )
            if stats is None:
                stats = label_counts(datamodule)
                absent = np.flatnonzero(stats.pixels == 0)
                if absent.size:
                    names = getattr(datamodule, "class_names", None)
                    listed = [names[i] for i in absent] if names else absent.tolist()
                    warnings.warn(
                        f"classes {listed} have no pixel in training split {stats.name!r}: "
                        f"{path}={value} gives them weight 0.",
                        stacklevel=2,
                    )
            parent.class_weights = weights_from_stats(value, stats).tolist()
            resolved.append((path, value, list(parent.class_weights)))
        elif isinstance(value, (ListConfig, list, tuple)):
            if len(value) != num_classes:
                raise ValueError(
                    f"{path} has {len(value)} values but data.num_classes is {num_classes}: "
                    "give one weight per class, or a name such as median_frequency."
                )
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{path}={list(value)} must hold {num_classes} numbers.")
        else:
            raise ValueError(
                f"{path}={value!r} is neither null, a list of {num_classes} floats, nor one "
                f"of {list(CHOICES)}."
            )
    return resolved
