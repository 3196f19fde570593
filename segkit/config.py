"""Where segkit's configs live, how a tool composes them, and the start-up check of their keys.

The configs are the checkout's ``conf/``, which the wheel ships as ``segkit/conf``
(:data:`CONF_DIR`), so train.py and every ``python -m segkit.cli.<tool>`` compose the same
configs from a checkout or from an installed wheel. ``${paths.root_dir}`` is where runs and
data go (:func:`project_root`: ``SEGKIT_ROOT``, else the checkout, else the current folder).
Importing :mod:`segkit` registers the resolvers the configs use: ``${segkit_root:}`` and
``${segkit_list:<module>.<CONSTANT>}`` (:func:`python_list`).
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent


def _checkout() -> Path | None:
    """The source checkout segkit is imported from (an editable install), else ``None``."""
    root = PACKAGE_DIR.parent
    return root if (root / "train.py").is_file() and (root / "conf").is_dir() else None


# The configs: the checkout's conf/ (edits take effect at once), else the copy that
# pyproject.toml ships in the wheel as the package data segkit/conf.
CONF_DIR = (_checkout() or PACKAGE_DIR) / "conf"

# conf/hydra/launcher/submitit_{slurm,local}.yaml have the names of the submitit plugin's
# schemas, so Hydra checks every key against them and warns that this matching is
# deprecated; each file is complete without the schema, so the warning asks nothing of us.
warnings.filterwarnings(
    "ignore", message=r"\s*'hydra/launcher/submitit_\w+' is validated against ConfigStore schema"
)


def project_root() -> Path:
    """``${paths.root_dir}``: where ``data/`` and ``logs/`` go.

    ``SEGKIT_ROOT`` when set, else the checkout segkit runs from, else the current folder
    (an installed wheel). Resolved when a config is read, so the environment variable may
    be set at any time before.
    """
    if os.environ.get("SEGKIT_ROOT"):
        return Path(os.environ["SEGKIT_ROOT"])
    return _checkout() or Path.cwd()


def python_list(path: str) -> list[Any]:
    """``${segkit_list:segkit.data.camvid.CLASS_NAMES}`` in a config: a Python sequence
    constant as a list (tuples become lists), so class names and palettes are written once,
    in the dataset's module, where the code that decodes the labels uses them too."""
    return [list(v) if isinstance(v, tuple) else v for v in hydra.utils.get_object(path)]


OmegaConf.register_new_resolver("segkit_root", lambda: str(project_root()), replace=True)
OmegaConf.register_new_resolver("segkit_list", python_list, replace=True)


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """``conf/<config_name>.yaml`` composed with Hydra command-line ``overrides``, outside a
    Hydra app (no run folder is made; ``${hydra:...}`` values do not resolve)."""
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra.compose(config_name, overrides=list(overrides))


# Keys of a Hydra node that are Hydra's, not the callable's.
_HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
# Arguments the code passes itself, per group (the task builds the optimiser and schedule).
_SUPPLIED = {
    "optimizer": ("params",),
    "scheduler": ("optimizer", "total_steps"),
    "task": ("model", "loss", "optimizer", "scheduler"),
    "loss": (),
    "model": (),
}
# Keys of every model node that are not its constructor's arguments: the whole-model weights,
# loaded after the model is built (segkit.models.weights.build_model).
WEIGHTS_KEYS = ("weights_path", "weights_strict")


class ConfigError(ValueError):
    """A config key that cannot work, found at start-up (before data or model are built)."""


def check_arguments(cfg: DictConfig, groups: tuple[str, ...] = tuple(_SUPPLIED)) -> None:
    """Check that every key of the ``groups`` nodes is an argument of its ``_target_``
    (for ``model``, or one of :data:`WEIGHTS_KEYS`).

    ``+optimizer.learning_rate=1e-3`` would otherwise fail with a ``TypeError`` of AdamW
    once the data and the model are built. Callables that take ``**kwargs`` are not
    checked; nested nodes (``loss.losses``) are checked when they are instantiated.

    Raises:
        ConfigError: naming the key, the callable and its valid keys.
    """
    for group in groups:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        target = node._target_
        try:
            parameters = inspect.signature(hydra.utils.get_object(target)).parameters
        except (ImportError, ValueError, TypeError, AttributeError):
            continue  # an unknown target fails with Hydra's own message when built
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        valid = [n for n in parameters if n not in _SUPPLIED[group] and n != "self"]
        if group == "model":
            valid += WEIGHTS_KEYS
        unknown = [k for k in node if k not in _HYDRA_KEYS and k not in valid]
        if unknown:
            keys = ", ".join(f"{group}.{k}" for k in unknown)
            raise ConfigError(
                f"{keys} {'is not an argument' if len(unknown) == 1 else 'are not arguments'} "
                f"of {target}; its arguments are {', '.join(f'{group}.{n}' for n in valid)}. "
                f"Fix the name (e.g. {group}.{_closest(unknown[0], valid)}=...) and drop the '+'."
            )


def _closest(name: str, valid: list[str]) -> str:
    """The valid key most like ``name`` (learning_rate -> lr), for the hint."""
    initials = "".join(part[0] for part in name.split("_") if part)
    if initials in valid:  # an abbreviation: learning_rate -> lr
        return initials
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.0)
    return close[0] if close else (valid[0] if valid else name)
