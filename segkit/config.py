"""Where segkit's configs live, how a tool composes them, and the start-up check of their keys.

The configs are the checkout's ``conf/``, which the wheel ships as ``segkit/conf``
(:data:`CONF_DIR`), so train.py and every ``python -m segkit.cli.<tool>`` compose the same
configs from a checkout or from an installed wheel. ``${paths.root_dir}`` is where runs and
data go (:func:`project_root`: ``SEGKIT_ROOT``, else the checkout, else the current folder).
Importing :mod:`segkit` registers the resolvers the configs use: ``${segkit_root:}`` and
``${segkit_list:<module>.<CONSTANT>}`` (:func:`python_list`).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import textwrap
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
# The nodes a _target_ builds, each with the arguments the code passes itself: the task builds
# the optimiser and schedule, build_trainer passes the callbacks, loggers and plugins, the data
# module each dataset's split and transform. ".*" is every child node (each callback, logger).
_SUPPLIED = {
    "optimizer": ("params",),
    "scheduler": ("optimizer", "total_steps"),
    "task": ("model", "loss", "optimizer", "scheduler"),
    "task.inference": (),
    "loss": (),
    "loss.losses.*": (),
    "model": (),
    "data": (),
    "data.dataset": ("split", "transform"),
    "data.prepare": (),
    "trainer": ("callbacks", "logger", "plugins"),
    "trainer.profiler": (),
    "callbacks.*": (),
    "logger.*": (),
}
# Keys of every model node that are not its constructor's arguments: the whole-model weights,
# loaded after the model is built (segkit.models.weights.build_model).
WEIGHTS_KEYS = ("weights_path", "weights_strict")


class ConfigError(ValueError):
    """A config key that cannot work, found at start-up (before data or model are built)."""


def check_arguments(cfg: DictConfig, groups: tuple[str, ...] = tuple(_SUPPLIED)) -> None:
    """Check that every key of the ``groups`` nodes is an argument of its ``_target_``
    (for ``model``, or one of :data:`WEIGHTS_KEYS`): the optimiser, schedule, task, inference,
    loss (and its nested losses), model, data module, dataset, data preparation, trainer
    (and its profiler), every callback and every logger.

    ``+optimizer.learning_rate=1e-3`` would otherwise fail with a ``TypeError`` of AdamW
    once the data and the model are built. A callable that takes ``**kwargs`` is not checked,
    unless it is a segkit class that passes them on to its base class (the datasets'
    ``**options``): then the base's arguments count too. Reads the config and the callables'
    signatures only.

    Raises:
        ConfigError: naming each unknown key, its callable and that callable's valid keys,
            one paragraph per node.
    """
    problems = []
    for group in groups:
        for path, node in _nodes(cfg, group):
            target = node._target_
            try:
                arguments = _arguments(hydra.utils.get_object(target))
            except (ImportError, ValueError, TypeError, AttributeError):
                continue  # an unknown target fails with Hydra's own message when built
            if arguments is None:  # **kwargs taken by the callable itself
                continue
            valid = [n for n in arguments if n not in _SUPPLIED[group]]
            if group == "model":
                valid += WEIGHTS_KEYS
            unknown = [k for k in node if k not in _HYDRA_KEYS and k not in valid]
            if unknown:
                keys = ", ".join(f"{path}.{k}" for k in unknown)
                problems.append(
                    f"{keys} {'is not an argument' if len(unknown) == 1 else 'are not arguments'}"
                    f" of {target}; its arguments are {', '.join(f'{path}.{n}' for n in valid)}. "
                    f"Fix the name (e.g. {path}.{_closest(unknown[0], valid)}=...) and drop "
                    f"the '+'; where a config file set the key (an experiment, before "
                    f"another group replaced {path}), delete it with '~{path}.{unknown[0]}'."
                )
    if problems:
        raise ConfigError("\n".join(problems))


def _nodes(cfg: DictConfig, group: str) -> list[tuple[str, DictConfig]]:
    """``(dotted key, node)`` of each node ``group`` names (``callbacks.*``: every callback)
    that has a ``_target_``."""
    parent_key, _, last = group.rpartition(".")
    if last == "*":
        parent = _select_node(cfg, parent_key)
        children = list(parent) if isinstance(parent, DictConfig) else []
        found = [(f"{parent_key}.{k}", parent.get(k)) for k in children]
    else:
        found = [(group, _select_node(cfg, group))]
    return [(p, n) for p, n in found if isinstance(n, DictConfig) and "_target_" in n]


def _select_node(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key)
    except Exception:  # noqa: BLE001 (???, or an interpolation that does not resolve here)
        return None


def _arguments(target: Any) -> list[str] | None:
    """The keyword arguments ``target`` takes, or ``None`` when it takes any (``**kwargs``)."""
    parameters = inspect.signature(target).parameters
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    named = [n for n, p in parameters.items() if p.kind not in kinds and n != "self"]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return named
    forwarded = _forwarded_arguments(target)
    return None if forwarded is None else named + [n for n in forwarded if n not in named]


def _forwarded_arguments(cls: Any) -> list[str] | None:
    """The arguments a segkit class's ``**options`` may hold: those of its base's
    ``__init__`` that its own ``super().__init__(..., **options)`` call does not set (read
    from the source). ``None`` where that cannot be told (not a segkit class, no such call)."""
    if not isinstance(cls, type) or not cls.__module__.startswith("segkit."):
        return None
    base = next((b for b in cls.__mro__[1:] if "__init__" in vars(b)), object)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__)))
        base_arguments = None if base is object else _arguments(base)
    except (OSError, TypeError, ValueError, SyntaxError):
        return None
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "__init__"
        and any(keyword.arg is None for keyword in node.keywords)  # passes **options on
    ]
    if len(calls) != 1 or base_arguments is None:
        return None
    given = {keyword.arg for keyword in calls[0].keywords if keyword.arg}
    positional = sum(not isinstance(arg, ast.Starred) for arg in calls[0].args)
    return [n for n in base_arguments[positional:] if n not in given]


def _closest(name: str, valid: list[str]) -> str:
    """The valid key most like ``name`` (learning_rate -> lr), for the hint."""
    initials = "".join(part[0] for part in name.split("_") if part)
    if initials in valid:  # an abbreviation: learning_rate -> lr
        return initials
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.0)
    return close[0] if close else (valid[0] if valid else name)
