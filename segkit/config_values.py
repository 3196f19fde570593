"""The valid values of every config key, and :func:`check_values`, the start-up check of them.

:data:`RULES` is the one table of valid values (docs/configuration.md, "Valid values"). Each
:class:`Rule` names a key of a composed config (``conf/train.yaml``, ``eval.yaml``,
``predict.yaml`` or ``export.yaml``, with any group choice), what is valid there, a valid
example and why. A key is a dotted path as on the command line; ``*`` stands for one level
(any callback, any list item) and ``**`` for any number of levels, so ``loss.**.class_weights``
is ``loss.class_weights`` and ``loss.losses.ce.class_weights``. A rule applies wherever its key
is present: ``model.output_stride`` checks every model config that has one.

The keys no rule fits (names, paths, albumentations' own arguments) are in :data:`FREE` with
what they take, and the data keys that :func:`segkit.data.checks.check_config` checks when the
data module is built in :data:`CHECKED_WHEN_BUILT`; tests/test_config_values.py checks that the
three tables cover every key of every shipped config, and every rule at its edges.

:func:`check_values` reads the composed config and nothing else: no file, no data, no model,
and no segkit sub-package (this root module lies below them all), so it runs before anything
is built, in milliseconds. The few sets that code elsewhere holds too (norm layers, backends,
logged score names, Lightning's precisions) are written here, and the tests keep them equal
to that code. Unknown keys are :func:`segkit.config.check_arguments`' job.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from segkit.config import ConfigError, check_arguments

_MISSING = object()  # "???": a value the user must give
_ABSENT = object()  # no such key
_UNRESOLVED = object()  # an interpolation that does not resolve here (${hydra:...} outside an app)


class _Skip(Exception):
    """A key a rule compares with is absent or unset: there is nothing to compare."""


def _select(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key``, or :data:`_MISSING`, :data:`_ABSENT`, :data:`_UNRESOLVED`."""
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except MissingMandatoryValue:
        return _MISSING
    except Exception:  # noqa: BLE001 (an interpolation's resolver may raise anything)
        return _UNRESOLVED


def _command(cfg: DictConfig) -> str:
    """Which config ``cfg`` is: ``train``, ``eval``, ``predict`` or ``export``."""
    if "returns" in cfg:
        return "export"
    if "backend" in cfg:
        return "predict"
    return "eval" if "split" in cfg else "train"


@dataclass(frozen=True)
class Context:
    """Where a rule is evaluated: the whole config and the concrete key (``callbacks.x.mode``)."""

    cfg: DictConfig
    path: str

    def get(self, key: str) -> Any:
        """The resolved value of ``key``, a dotted path from the root.

        Raises:
            _Skip: the key is absent, ``???`` or does not resolve here.
        """
        value = _select(self.cfg, key)
        if value is _MISSING or value is _ABSENT or value is _UNRESOLVED:
            raise _Skip(key)
        return value

    def sibling(self, name: str) -> Any:
        """:meth:`get` of the key ``name`` beside this one (``.monitor`` beside ``.mode``)."""
        parent = self.path.rpartition(".")[0]
        return self.get(f"{parent}.{name}" if parent else name)

    def value_or(self, key: str, default: Any = "?") -> Any:
        """:meth:`get`, or ``default`` where there is nothing to get."""
        try:
            return self.get(key)
        except _Skip:
            return default


def _try(get: Callable[[], Any]) -> Any:
    """``get()``, or ``?`` where a key it reads is absent or of the wrong kind (for messages)."""
    try:
        return get()
    except (_Skip, TypeError, ValueError):
        return "?"


Test = Callable[[Any, Context], bool]


@dataclass(frozen=True)
class Check:
    """What is valid at a key: ``text`` says it (a string, or ``ctx -> str`` where it names
    other keys' values), ``test(value, ctx)`` decides it and may raise :class:`_Skip`."""

    text: str | Callable[[Context], str]
    test: Test

    def describe(self, ctx: Context) -> str:
        return self.text(ctx) if callable(self.text) else self.text


@dataclass(frozen=True)
class Rule:
    """One line of the table: ``key`` must pass ``check`` because of ``why``.

    Attributes:
        key: dotted path; ``*`` one level, ``**`` any number of levels.
        check: what is valid.
        example: a valid value for the message, or ``ctx -> value``.
        why: the reason, one line: what goes wrong outside the range.
        command: only in this config (``eval``, ``predict``, ``export``); ``None``: in any.
    """

    key: str
    check: Check
    example: Any
    why: str
    command: str | None = None


# --- kinds of value -------------------------------------------------------------------------


def _is_number(value: Any, integer: bool = False) -> bool:
    return isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, ListConfig))


def _is_mapping(value: Any) -> bool:
    return isinstance(value, (Mapping, DictConfig))


def _positive_int(value: Any) -> bool:
    return _is_number(value, integer=True) and value > 0


def _show(value: Any) -> str:
    """``value`` as the command line writes it (``null``, ``true``, ``[1,2]``, ``???``)."""
    if value is _MISSING:
        return "???"
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            value = OmegaConf.to_container(value, resolve=True)
        except Exception:  # noqa: BLE001 (an interpolation that does not resolve here)
            value = OmegaConf.to_container(value, resolve=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_show(k)}:{_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


# --- checks -----------------------------------------------------------------------------------


def _bound(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    integer: bool = False,
    null: bool = False,
) -> Check:
    """A number (an integer with ``integer``) within the bounds; ``null`` also allows null."""
    kind = "an integer" if integer else "a number"
    lo, hi = _bound(low), _bound(high)
    if low is not None and high is not None:
        text = f"{kind} in {'(' if open_low else '['}{lo}, {hi}{')' if open_high else ']'}"
    elif low is not None:
        text = f"{kind} {'>' if open_low else '>='} {lo}"
    elif high is not None:
        text = f"{kind} {'<' if open_high else '<='} {hi}"
    else:
        text = kind

    def test(value: Any, ctx: Context) -> bool:
        if value is None:
            return null
        if not _is_number(value, integer):
            return False
        if low is not None and (value <= low if open_low else value < low):
            return False
        return high is None or (value < high if open_high else value <= high)

    return Check(f"null or {text}" if null else text, test)


def choice(*values: Any) -> Check:
    """One of ``values`` (``None`` for null), of the same type (``1`` is not ``true``)."""
    shown = [_show(v) for v in values]
    text = " or ".join(shown) if len(shown) <= 2 else "one of " + ", ".join(shown)
    text = f"only {text}" if len(shown) == 1 else text

    def test(value: Any, ctx: Context) -> bool:
        return any(value == v and type(value) is type(v) for v in values)

    return Check(text, test)


def sizes(*, null: bool = False, square: bool = False) -> Check:
    """``[H, W]``, two positive integers; ``square`` also allows one integer for both sides."""
    text = "[H, W]: two positive integers" + (" (or one for both)" if square else "")

    def test(value: Any, ctx: Context) -> bool:
        if value is None:
            return null
        if square and _positive_int(value):
            return True
        return _is_list(value) and len(value) == 2 and all(_positive_int(v) for v in value)

    return Check(f"null or {text}" if null else text, test)


def positive_ints(length: int | None = None) -> Check:
    """A non-empty list of positive integers (of ``length`` of them)."""
    text = f"{length} positive integers" if length else "a non-empty list of positive integers"

    def test(value: Any, ctx: Context) -> bool:
        right_length = len(value) == length if length else len(value) > 0
        return right_length and all(_positive_int(v) for v in value)

    return Check(text, lambda value, ctx: _is_list(value) and test(value, ctx))


def same_as(key: str) -> Check:
    """Equal to the value at ``key`` (no check where ``key`` is absent or unset)."""
    return Check(
        lambda ctx: f"equal to {key} ({_show(ctx.value_or(key))})",
        lambda value, ctx: _plain(value) == _plain(ctx.get(key)),
    )


def relation(text: str | Callable[[Context], str], test: Test) -> Check:
    """A check between keys. A value of the wrong kind passes: the key's own rule reports it."""

    def guarded(value: Any, ctx: Context) -> bool:
        try:
            return test(value, ctx)
        except (TypeError, ValueError, AttributeError):
            return True

    return Check(text, guarded)


def _from(key: str) -> Callable[[Context], Any]:
    """An example: the value at ``key``."""
    return lambda ctx: ctx.value_or(key)


BOOL = choice(True, False)

# Sets that code elsewhere holds too; tests/test_config_values.py keeps each equal to its source.
NORMS = ("batch", "group", "frozen_batch")  # segkit.models.blocks.NORMS
FCN_SKIPS = ("32s", "16s", "8s")  # segkit.models.fcn.SKIPS
MASKRCNN_VARIANTS = ("v1", "v2")  # segkit.models.maskrcnn.VARIANTS
SMP_ARCHS = (  # segmentation_models_pytorch.MODEL_ARCHITECTURES_MAPPING (case-insensitive)
    "Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
    "PAN", "UPerNet", "Segformer", "DPT",
)  # fmt: skip
CLASS_WEIGHT_NAMES = (  # segkit.tasks.class_weights.CHOICES
    "median_frequency", "sqrt_median_frequency", "inverse_frequency",
)  # fmt: skip
BACKENDS = ("eager", "channels_last", "compile", "onnxruntime")  # deploy.backends.BACKENDS
EXPORT_FORMATS = ("onnx", "torchscript")  # segkit.deploy.export.FORMATS
EXPORT_RETURNS = ("logits", "labels")  # segkit.deploy.graph.RETURNS
PREDICT_FORMATS = ("palette", "cityscapes")  # segkit.engine.predict.output_format
PRECISIONS = (  # Lightning's _PRECISION_INPUT
    "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "32", "16", "bf16",
    "64", 32, 16, 64, "transformer-engine", "transformer-engine-float16",
)  # fmt: skip
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")  # Lightning's registry, auto, gpu
PROFILERS = ("simple", "advanced", "pytorch", "xla")  # Lightning's profiler names
SEED_MAX = 2**32 - 1  # numpy's seed range, which Lightning's seed_everything keeps to
LABEL_MAX = 65535  # the largest value of a 16-bit label image

# --- what the task logs: the names monitor and optimized_metric may follow -------------------

SEMANTIC_TASK = "segkit.tasks.semantic.SemanticSegmentationTask"
INSTANCE_TASK = "segkit.tasks.instance.InstanceSegmentationTask"
HEADLINE_KEYS = ("PA", "MPA", "mIoU", "FWIoU", "mDice")  # segkit.tasks.base.HEADLINE_KEYS
AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # segkit.tasks.instance.AP_KEYS values
AP_TYPES = ("box", "mask")  # segkit.tasks.instance.IOU_TYPES values
CITYSCAPES_DATASET = "segkit.data.cityscapes.CityscapesDataset"  # batches with instance ids


def logged_metrics(cfg: DictConfig) -> list[str] | None:
    """The names the configured task logs that a callback or a sweeper can follow (the
    training loss, and ``val/*`` after each validation), or ``None`` for a task segkit does
    not know or classes not given yet. What each task logs: the docstrings of
    segkit/tasks/semantic.py and segkit/tasks/instance.py."""
    target = _select(cfg, "task._target_")
    names = _select(cfg, "data.class_names")
    if not _is_list(names):
        return None
    scores = [f"val/{key}" for key in HEADLINE_KEYS]
    if target == SEMANTIC_TASK:
        logged = ["train/loss_step", "train/loss_epoch", "val/loss", *scores]
        if _select(cfg, "task.membrane_class") not in (None, _MISSING, _ABSENT, _UNRESOLVED):
            logged += ["val/pixel_error", "val/rand_error"]
        if _select(cfg, "data.dataset._target_") == CITYSCAPES_DATASET:
            logged += ["val/iIoU_class", "val/iIoU_category"]
        return logged + [f"val/IoU/{name}" for name in names]
    if target == INSTANCE_TASK:
        logged = ["train/loss", "train/loss_step", "train/loss_epoch", *scores]
        logged += [f"val/{kind}_{ap}" for kind in AP_TYPES for ap in AP_NAMES]
        return logged + [f"val/{kind}_AP/{name}" for kind in AP_TYPES for name in names]
    return None


def metric_mode(metric: str) -> str:
    """``min`` for losses and errors, ``max`` for scores: the direction that is better."""
    return "min" if "loss" in metric or metric.endswith("_error") else "max"


def _logged_text(ctx: Context) -> str:
    logged = logged_metrics(ctx.cfg) or []
    listed = [name for name in logged if "/IoU/" not in name and "_AP/" not in name]
    per_class = "val/IoU/<class>" if "val/loss" in logged else "val/{box,mask}_AP/<class>"
    return f"a name the task logs: {', '.join(listed)}, {per_class}"


def _logged_test(value: Any, ctx: Context) -> bool:
    logged = logged_metrics(ctx.cfg)
    if logged is None:
        raise _Skip("task._target_")
    return value in logged


LOGGED = Check(_logged_text, _logged_test)
LOGGED_OR_NULL = Check(
    lambda ctx: "null or " + _logged_text(ctx),
    lambda value, ctx: value is None or _logged_test(value, ctx),
)


def _monitor(ctx: Context) -> Any:
    """The ``monitor`` beside this ``mode``."""
    return ctx.sibling("monitor")


def _monitor_mode_test(value: Any, ctx: Context) -> bool:
    monitor = _monitor(ctx)
    if not isinstance(monitor, str):
        raise _Skip("monitor")
    return value == metric_mode(monitor)


def _mode_example(ctx: Context) -> str:
    try:
        return metric_mode(str(_monitor(ctx)))
    except _Skip:
        return "max"


MODE_OF_MONITOR = Check(
    lambda ctx: f"{_mode_example(ctx)}, as the monitored {_try(lambda: _monitor(ctx))} improves",
    _monitor_mode_test,
)


# --- checks of one key's structure, and between keys ----------------------------------------


def _num_classes(ctx: Context) -> int:
    value = ctx.get("data.num_classes")
    if not _is_number(value, integer=True):
        raise _Skip("data.num_classes")
    return value


def _class_weights_test(value: Any, ctx: Context) -> bool:
    if value is None or isinstance(value, str):
        return value is None or value in CLASS_WEIGHT_NAMES
    if not _is_list(value) or not all(_is_number(v) and v >= 0 for v in value):
        return False
    return any(v > 0 for v in value) and len(value) == ctx.value_or("data.num_classes", len(value))


CLASS_WEIGHTS = Check(
    lambda ctx: (
        f"null, {', '.join(CLASS_WEIGHT_NAMES)}, or "
        f"{ctx.value_or('data.num_classes', 'C')} numbers >= 0 (one per class, not all 0)"
    ),
    _class_weights_test,
)


def _label_map_test(value: Any, ctx: Context) -> bool:
    if value is None:
        return True
    if not _is_mapping(value):
        return False
    classes, ignore = _num_classes(ctx), ctx.value_or("data.ignore_index", None)
    return all(
        _is_number(raw, True) and 0 <= raw <= LABEL_MAX and _is_number(index, True)
        and (0 <= index < classes or index == ignore)
        for raw, index in value.items()
    )  # fmt: skip


LABEL_MAP = Check(
    lambda ctx: (
        f"null or {{stored value 0..{LABEL_MAX}: a class 0..C-1 "
        f"(C=data.num_classes={ctx.value_or('data.num_classes')}) or data.ignore_index}}"
    ),
    _label_map_test,
)


def _palette_test(value: Any, ctx: Context) -> bool:
    return value is None or (
        _is_list(value)
        and all(
            _is_list(c) and len(c) == 3 and all(_is_number(v, True) and 0 <= v <= 255 for v in c)
            for c in value
        )
    )


PALETTE = Check("null or [[r,g,b],...]: integers 0..255, one colour per class", _palette_test)
CLASS_NAMES = Check(
    "distinct names",
    lambda v, ctx: _is_list(v) and all(isinstance(n, str) for n in v) and len(set(v)) == len(v),
)
SCALES = Check(
    "a non-empty list of numbers > 0",
    lambda v, ctx: _is_list(v) and len(v) > 0 and all(_is_number(s) and s > 0 for s in v),
)
MILESTONES = Check(
    "rising fractions of the run, each in (0, 1)",
    lambda v, ctx: _is_list(v) and len(v) > 0 and all(_is_number(m) and 0 < m < 1 for m in v)
    and all(a < b for a, b in zip(v, list(v)[1:], strict=False)),
)  # fmt: skip
BETAS = Check(
    "two numbers in [0, 1)",
    lambda v, ctx: _is_list(v) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
)
DEVICE = Check(
    "cpu, cuda, cuda:<index> or mps",
    lambda v, ctx: isinstance(v, str) and bool(re.fullmatch(r"cpu|cuda(:\d+)?|mps", v)),
)
SMP_ARCH = Check(
    "an smp architecture: " + ", ".join(SMP_ARCHS),
    lambda v, ctx: isinstance(v, str) and v.lower() in {a.lower() for a in SMP_ARCHS},
)
MAX_STEPS = Check(
    "-1 (no limit) or an integer >= 1",
    lambda v, ctx: _is_number(v, True) and (v == -1 or v >= 1),
)
SAVE_TOP_K = Check(
    "-1 (every one) or an integer >= 1",
    lambda v, ctx: _is_number(v, True) and (v == -1 or v >= 1),
)
FAST_DEV_RUN = Check(
    "true, false or an integer >= 0",
    lambda v, ctx: isinstance(v, bool) or (_is_number(v, True) and v >= 0),
)
MAX_TIME = Check(
    "null, DD:HH:MM:SS or a mapping of timedelta arguments",
    lambda v, ctx: v is None or _is_mapping(v)
    or (isinstance(v, str) and bool(re.fullmatch(r"\d+:\d\d:\d\d:\d\d", v))),
)  # fmt: skip
PROFILER = Check(
    f"null, {', '.join(PROFILERS)} or a _target_ node",
    lambda v, ctx: v is None or v in PROFILERS or isinstance(v, DictConfig),
)


def _batches(zero: bool = False) -> Check:
    """``limit_*_batches``: null, a fraction in (0, 1] or a count >= 1 (or 0 with ``zero``)."""

    def test(value: Any, ctx: Context) -> bool:
        if value is None:
            return not zero
        if not _is_number(value):
            return False
        if zero and value == 0:
            return True
        return 0 < value <= 1 if isinstance(value, float) else value >= 1

    start = "0 (off)" if zero else "null"
    return Check(f"{start}, a fraction in (0.0, 1.0] or a count >= 1", test)


def _devices_test(value: Any, ctx: Context) -> bool:
    if value == "auto" or (_is_number(value, True) and (value == -1 or value >= 1)):
        return True
    if isinstance(value, str):
        return bool(re.fullmatch(r"\s*(-1|\d+|\d+\s*(,\s*\d+\s*)*,?)\s*", value))
    return _is_list(value) and len(value) > 0 and all(_is_number(v, True) and v >= 0 for v in value)


DEVICES = Check("an integer >= 1, -1 (all), auto, or a list of indices", _devices_test)


# Lightning's StrategyRegistry names (tests/test_config_values.py checks each one matches).
STRATEGY = Check(
    "auto or a Lightning strategy: ddp, ddp_spawn, ddp_fork, ddp_notebook (each also with "
    "_find_unused_parameters_true/false), fsdp, deepspeed, single_device, xla, ...",
    lambda v, ctx: (
        not isinstance(v, str)  # a strategy node (_target_) is checked when built
        or re.fullmatch(
            r"auto|ddp(_spawn|_fork|_notebook)?(_find_unused_parameters_(true|false))?"
            r"|fsdp(_cpu_offload)?|deepspeed(_stage_[123](_offload(_nvme)?)?)?"
            r"|single_(device|xla|tpu)|xla(_debug)?",
            v,
        )
        is not None
    ),
)


def _max_epochs_test(value: Any, ctx: Context) -> bool:
    if _is_number(value, True) and value >= 1:
        return True
    if value is not None and not (_is_number(value, True) and value == -1):
        return False
    steps = ctx.value_or("trainer.max_steps", -1)
    limited = _is_number(steps, True) and steps >= 1
    return limited or ctx.value_or("trainer.max_time", None) not in (None, "?")


MAX_EPOCHS = Check(
    "an integer >= 1, or -1 or null with trainer.max_steps >= 1 or trainer.max_time",
    _max_epochs_test,
)


def _check_val_test(value: Any, ctx: Context) -> bool:
    if value is None:
        return _is_number(ctx.value_or("trainer.val_check_interval", None), True)
    return _is_number(value, True) and value >= 1


CHECK_VAL_EVERY = Check(
    "an integer >= 1 (null only with an integer trainer.val_check_interval)", _check_val_test
)


def _fpn_width_test(value: Any, ctx: Context) -> bool:
    arch = ctx.get("model.arch")
    return str(arch).lower() != "fpn" or not _is_number(value, True) or value % 32 == 0


def _decoder_channels_test(value: Any, ctx: Context) -> bool:
    if str(ctx.value_or("model.arch", "")).lower() == "unet":
        return _is_list(value) and len(value) > 0 and all(_positive_int(v) for v in value)
    return _positive_int(value)


def _validates_test(value: Any, ctx: Context) -> bool:
    epochs = ctx.get("trainer.max_epochs")
    return not (_is_number(epochs, True) and epochs >= 1) or epochs % value == 0


def _rates_test(value: Any, ctx: Context) -> bool:
    rates = value.get(ctx.sibling("output_stride")) if _is_mapping(value) else None
    return _is_list(rates) and len(rates) == 3 and all(_positive_int(r) for r in rates)


def _lowest_group_lr(ctx: Context) -> float:
    """``optimizer.lr`` x the smallest task lr multiplier above 0: the lowest group rate."""
    lr = ctx.get("optimizer.lr")
    mults = [ctx.value_or(f"task.{k}", 1.0) for k in ("backbone_lr_mult", "head_lr_mult")]
    return lr * min([m for m in mults if _is_number(m) and m > 0] or [1.0])


def _stride_test(value: Any, ctx: Context) -> bool:
    if value is None:
        return True
    crop = ctx.sibling("crop_size")
    if crop is None:
        return False
    crop = [crop, crop] if _is_number(crop) else list(crop)
    stride = [value, value] if _is_number(value) else list(value)
    return all(s <= c for s, c in zip(stride, crop, strict=True))


def _ensemble_weights_test(value: Any, ctx: Context) -> bool:
    if value is None:
        return True
    if not _is_list(value) or not all(_is_number(v) and v > 0 for v in value):
        return False
    paths = ctx.get("ckpt_path")
    return len(value) == (len(paths) if _is_list(paths) else 1)


def _loss_names(ctx: Context) -> list[str]:
    losses = ctx.value_or("loss.losses", {})
    return list(losses.keys()) if _is_mapping(losses) else []


# --- the table ----------------------------------------------------------------------------------
# Rule(key, what is valid, a valid example, why), grouped as conf/ is.

# fmt: off
RULES: tuple[Rule, ...] = (
    # --- run: top-level keys of conf/train.yaml, eval.yaml, predict.yaml, export.yaml
    Rule("seed", number(0, SEED_MAX, integer=True, null=True), 42,
         "Lightning replaces a seed outside uint32 by a random one: the run would not repeat"),
    Rule("train", BOOL, True, "whether to fit"),
    Rule("test", BOOL, True, "whether to score the test split after fitting"),
    Rule("overwrite", BOOL, False, "true replaces the files an earlier run wrote"),
    Rule("resume", choice(None, "auto"), "auto", "auto: the newest last.ckpt of the run folder"),
    Rule("resume", relation("null when ckpt_path is set",
                            lambda v, c: v is None or c.value_or("ckpt_path", None) is None),
         None, "ckpt_path and resume both say where to start; keep one"),
    Rule("optimized_metric", LOGGED, "val/mIoU",
         "the best checkpoint and sweeps follow it: a name never logged is never compared"),
    Rule("ckpt_weights", relation("null or one number > 0 per checkpoint of ckpt_path",
                                  _ensemble_weights_test), None,
         "the members' probabilities are averaged with these weights"),
    Rule("split", choice("val", "test"), "val", "eval.py scores data.val_split or test_split",
         command="eval"),
    Rule("accelerator", choice(*ACCELERATORS), "auto", "Lightning's accelerators"),
    Rule("precision", choice(*PRECISIONS), "32-true", "Lightning's precisions"),
    Rule("format", choice(*PREDICT_FORMATS), "palette",
         "palette: class-index PNGs and overlays; cityscapes: labelId PNGs", command="predict"),
    Rule("device", DEVICE, "cpu", "a torch device", command="predict"),
    Rule("backend", choice("auto", *BACKENDS), "auto", "predict.py's paths (BENCHMARKS.md)",
         command="predict"),
    Rule("backend", relation("not onnxruntime unless device=cpu",
                             lambda v, c: v != "onnxruntime" or c.get("device") == "cpu"),
         "auto", "onnxruntime runs on the CPU here", command="predict"),
    Rule("overlay_alpha", number(0, 1), 0.5, "the weight of the class colours over the image",
         command="predict"),
    Rule("format", choice(*EXPORT_FORMATS), "onnx", "the exporters checked against PyTorch",
         command="export"),
    Rule("dynamic", BOOL, False, "false: one input size; true: any batch and size",
         command="export"),
    Rule("returns", choice(*EXPORT_RETURNS), "logits", "float logits or int64 labels",
         command="export"),
    Rule("input_size", sizes(null=True), [360, 480], "the size a static graph runs on",
         command="export"),

    # --- data: conf/data/*.yaml, augment/*.yaml (data.train_transform)
    Rule("data.num_classes", number(2, integer=True), 2,
         "softmax over C classes: with 1 every pixel is class 0; a binary task has 2"),
    Rule("data.class_names", CLASS_NAMES, ["background", "object"],
         "a name keys val/IoU/<name> and a report row: a repeated one hides a class"),
    Rule("data.ignore_index", number(0, LABEL_MAX, integer=True), 255,
         "a value a label image can hold; 255 is the usual void"),
    Rule("data.palette", PALETTE, None, "the colours of predictions and figures"),
    Rule("data.crop_size", sizes(null=True), [512, 512],
         "the training crop of the data recipe and the augment presets"),
    Rule("data.batch_size", number(1, integer=True), 8, "samples per training step and process"),
    Rule("data.eval_batch_size", number(1, integer=True, null=True), 1,
         "samples per val/test step; null: data.batch_size"),
    Rule("data.num_workers", number(0, integer=True), 2, "loader processes; 0 loads in-process"),
    Rule("data.pin_memory", BOOL, False, "page-locked batches copy faster to a GPU"),
    Rule("data.persistent_workers", BOOL, True, "keep the loader processes between epochs"),
    Rule("data.check_labels", BOOL, True, "count the training labels once, stop on bad ones"),
    Rule("data.prepare.num_train", number(1, integer=True), 320, "a split needs an image"),
    Rule("data.prepare.num_val", number(1, integer=True), 64, "a split needs an image"),
    Rule("data.prepare.num_test", number(1, integer=True), 64, "a split needs an image"),
    Rule("data.prepare.size", number(16, integer=True), 96,
         "the smallest shape spans 7% of the side: below 16 px a pixel or two"),
    Rule("data.prepare.seed", number(0, SEED_MAX, integer=True), 0, "numpy's seed range"),
    Rule("data.dataset.num_classes", same_as("data.num_classes"), _from("data.num_classes"),
         "the dataset checks its masks against the classes the model predicts"),
    Rule("data.dataset.class_names", same_as("data.class_names"), _from("data.class_names"),
         "the dataset numbers its categories by these names"),
    Rule("data.dataset.ignore_index", same_as("data.ignore_index"), _from("data.ignore_index"),
         "the dataset writes the value that the loss and the metrics leave out"),
    Rule("data.dataset.mean", same_as("data.mean"), _from("data.mean"),
         "predict.py and export normalise with data.mean"),
    Rule("data.dataset.std", same_as("data.std"), _from("data.std"),
         "predict.py and export normalise with data.std"),
    Rule("data.dataset.reduce_zero_label", BOOL, False, "true: 0 unlabelled, classes 1..C"),
    Rule("data.dataset.label_map", LABEL_MAP, None,
         "every stored value must become a class or the ignored value"),
    Rule("data.dataset.decoded_cache", BOOL, False, "decode the label files once, into cache_dir"),
    Rule("data.dataset.startup_check", number(0, integer=True), 8, "samples read at start-up"),
    Rule("data.train_transform.**.fill_mask", same_as("data.ignore_index"),
         _from("data.ignore_index"), "padding and uncovered corners must be ignored, not learnt"),
    Rule("data.eval_transform.**.fill_mask", same_as("data.ignore_index"),
         _from("data.ignore_index"), "padding must not be scored as a class"),
    Rule("data.train_transform.**.size", sizes(), [512, 512],
         "a crop size; the augment presets crop to data.crop_size, which must be set"),
    Rule("data.train_transform.**.p", number(0, 1), 0.5, "a probability"),
    Rule("data.eval_transform.**.p", number(0, 1), 1.0, "a probability"),
    Rule("data.train_transform.**.height", number(1, integer=True), 512, "pixels"),
    Rule("data.train_transform.**.width", number(1, integer=True), 512, "pixels"),
    Rule("data.eval_transform.**.height", number(1, integer=True), 512, "pixels"),
    Rule("data.eval_transform.**.width", number(1, integer=True), 512, "pixels"),

    # --- model: conf/model/*.yaml (every model config with the key)
    Rule("model.num_classes", same_as("data.num_classes"), _from("data.num_classes"),
         "one output channel per class of the data"),
    Rule("model.in_channels", same_as("data.in_channels"), _from("data.in_channels"),
         "the model reads the images the data gives"),
    Rule("model.norm", choice(None, *NORMS), "batch", "the norm layers segkit builds"),
    Rule("model.norm_groups", number(1, integer=True), 32, "GroupNorm groups"),
    Rule("model.output_stride", choice(8, 16, 32), 16, "an encoder dilated to 8 or 16, or 32"),
    Rule("model.atrous_rates", relation(
        lambda c: "{output stride: [3 positive rates]} with an entry for model.output_stride="
                  f"{c.value_or('model.output_stride')}", _rates_test),
         {16: [6, 12, 18], 8: [12, 24, 36]}, "the ASPP takes the rates of its output stride"),
    Rule("model.aux_head", BOOL, False, "an auxiliary FCN head, weighted by task.aux_weight"),
    Rule("model.dropout", number(0, 1, open_high=True), 0.5, "1 drops every feature"),
    Rule("model.skip", choice(*FCN_SKIPS), "8s", "FCN-32s, FCN-16s, FCN-8s"),
    Rule("model.inter_channels", number(1, integer=True), 128, "channels of the LR-ASPP head"),
    Rule("model.bn_momentum", number(0, 1, open_low=True), 0.1,
         "the weight of a new batch in the running statistics: 0 never updates them"),
    Rule("model.bins", positive_ints(), [1, 2, 3, 6], "grid sizes of the pyramid pooling"),
    Rule("model.channels", number(1, integer=True), 512, "channels after the pyramid pooling"),
    Rule("model.arch", SMP_ARCH, "FPN", "smp.create_model builds these"),
    Rule("model.decoder", relation("null or a mapping of smp decoder arguments",
                                   lambda value, ctx: value is None or _is_mapping(value)),
         None, "passed to smp.create_model by name (segkit.models.smp.smp_model)"),
    Rule("model.decoder.decoder_pyramid_channels", number(1, integer=True), 256,
         "FPN's lateral and top-down width"),
    Rule("model.decoder.decoder_segmentation_channels", number(1, integer=True), 128,
         "FPN's / SegFormer's head width"),
    Rule("model.decoder.decoder_segmentation_channels", relation(
        "a multiple of 32 for model.arch=FPN", _fpn_width_test), 64,
        "FPN's segmentation blocks normalise with GroupNorm of 32 groups"),
    Rule("model.decoder.decoder_channels", relation(
        "a positive integer, or a list of positive integers for model.arch=Unet",
        _decoder_channels_test), 256, "the decoder's width (Unet: one per decoder stage)"),
    Rule("model.decoder.psp_out_channels", number(1, integer=True), 512,
         "PSPNet's width after the pyramid pooling"),
    Rule("model.weights_strict", BOOL, True, "false loads the tensors that fit, keeps the rest"),
    Rule("model.variant", choice(*MASKRCNN_VARIANTS), "v1", "torchvision's Mask R-CNN heads"),
    Rule("model.trainable_layers", number(0, 5, integer=True), 5, "ResNet stages trained"),
    Rule("model.min_size", number(1, integer=True), 800, "the short side images are resized to"),
    Rule("model.max_size", number(1, integer=True), 1333, "the longest side after resizing"),
    Rule("model.max_size", relation("at least model.min_size",
                                    lambda v, c: v >= c.sibling("min_size")),
         _from("model.min_size"), "the long side cannot be below the short one"),
    Rule("model.fpn_channels", number(1, integer=True), 256, "FPN channels"),
    Rule("model.anchor_sizes", positive_ints(5), [32, 64, 128, 256, 512],
         "one anchor size per FPN level P2-P6"),
    Rule("model.box_roi_output_size", number(1, integer=True), 7, "RoIAlign size, box head"),
    Rule("model.mask_roi_output_size", number(1, integer=True), 14, "RoIAlign size, mask head"),
    Rule("model.roi_sampling_ratio", number(0, integer=True), 2, "0: adaptive"),
    Rule("model.mask_head_layers", positive_ints(), [256, 256, 256, 256], "mask head channels"),
    Rule("model.mask_head_dilation", number(1, integer=True), 1, "mask head dilation"),
    Rule("model.box_head_width", number(1, integer=True), 1024, "box head width"),
    Rule("model.rpn_proposals_train", number(1, integer=True), 2000, "proposals kept"),
    Rule("model.rpn_proposals_test", number(1, integer=True), 1000, "proposals kept"),
    Rule("model.box_batch_size_per_image", number(1, integer=True), 512, "RoIs per image"),
    Rule("model.box_score_threshold", number(0, 1), 0.05, "a detection score"),
    Rule("model.box_detections_per_img", number(1, integer=True), 100, "detections kept"),

    # --- loss: conf/loss/*.yaml, and the losses inside loss=ce_dice and loss=ce_lovasz
    Rule("loss.**.ignore_index", same_as("data.ignore_index"), _from("data.ignore_index"),
         "the loss must leave out the pixels the data marks as ignored"),
    Rule("loss.**.class_weights", CLASS_WEIGHTS, "median_frequency",
         "a negative weight rewards a class's errors; all 0 learns nothing"),
    Rule("loss.**.label_smoothing", number(0, 1, open_high=True), 0.1,
         "1 makes every target uniform: nothing is left to learn"),
    Rule("loss.**.gamma", number(0), 2.0, "the focal exponent; 0 is cross-entropy"),
    Rule("loss.**.smooth", number(0), 1.0, "added to the Dice numerator and denominator"),
    Rule("loss.**.per_image", BOOL, True, "Dice or Lovasz per image, or over the batch"),
    Rule("loss.**.absent", choice("include", "exclude"), "include", "absent classes in Dice"),
    Rule("loss.**.thresh", number(0, 1, open_low=True, null=True), 0.7,
         "a true-class probability; at 0 no pixel is below it"),
    Rule("loss.**.min_kept", number(0, integer=True), 100000, "pixels kept per image"),
    Rule("loss.**.min_kept", relation("> 0 when thresh is null",
                                      lambda v, c: v > 0 or c.sibling("thresh") is not None),
         100000, "without a threshold only min_kept pixels are kept: 0 keeps none"),
    Rule("loss.weights.*", number(0), 1.0, "a negative weight maximises that loss"),
    Rule("loss.weights.*", relation(lambda c: f"the name of a loss in loss.losses: "
                                    f"{', '.join(_loss_names(c))}",
                                    lambda v, c: c.path.rpartition(".")[2] in _loss_names(c)),
         1.0, "a weight of no loss changes nothing"),

    # --- optimizer: conf/optimizer/*.yaml (any torch optimiser with the key)
    Rule("optimizer.lr", number(0, 1, open_low=True), 1e-3,
         "0 moves no weight; above 1 the updates diverge"),
    Rule("optimizer.weight_decay", number(0), 1e-4, "a negative decay grows the weights"),
    Rule("optimizer.weight_decay", relation("below 1 / optimizer.lr",
                                            lambda v, c: v * c.get("optimizer.lr") < 1), 1e-4,
         "a step scales the weights by 1 - lr x weight_decay: at 1 or more they vanish"),
    Rule("optimizer.momentum", number(0, 1, open_high=True), 0.9,
         "1 never forgets a gradient: the steps grow without bound"),
    Rule("optimizer.dampening", number(0, 1, open_high=True), 0.0, "1 ignores every gradient"),
    Rule("optimizer.nesterov", BOOL, False, "Nesterov momentum"),
    Rule("optimizer.nesterov", relation("false unless optimizer.momentum > 0",
                                        lambda v, c: not v or c.get("optimizer.momentum") > 0),
         False, "torch's SGD refuses Nesterov without momentum"),
    Rule("optimizer.betas", BETAS, [0.9, 0.999], "Adam's averaging factors: 1 never forgets"),
    Rule("optimizer.eps", number(0, open_low=True), 1e-8, "it keeps a division off zero"),
    Rule("optimizer.amsgrad", BOOL, False, "the AMSGrad variant"),

    # --- scheduler: conf/scheduler/*.yaml (any schedule with the key)
    Rule("scheduler.warmup_steps", number(0, integer=True), 100, "optimiser steps of warm-up"),
    Rule("scheduler.warmup_factor", number(0, 1), 0.001, "the warm-up starts at this x the rate"),
    Rule("scheduler.power", number(0, open_low=True), 0.9,
         "the poly exponent: 0 keeps the rate, below 0 it rises"),
    Rule("scheduler.min_lr", number(0), 0.0, "the rate the schedule ends at"),
    Rule("scheduler.min_lr", relation(
        lambda c: f"at most optimizer.lr x the smallest task lr multiplier "
                  f"({_show(_try(lambda: _lowest_group_lr(c)))})",
        lambda v, c: v <= _lowest_group_lr(c)), 0.0, "a floor above a group's rate raises it"),
    Rule("scheduler.restarts", number(0, integer=True), 0, "warm restarts after the first cycle"),
    Rule("scheduler.cycle_mult", number(0, open_low=True), 1.0, "a cycle's length over the last"),
    Rule("scheduler.end_factor", number(0, 1, open_low=True), 0.01,
         "the fraction of the rate the run ends at; 0 is never reached"),
    Rule("scheduler.milestones", MILESTONES, [0.615, 0.846], "where in the run the rate drops"),
    Rule("scheduler.gamma", number(0, 1, open_low=True), 0.1, "the rate's factor per milestone"),
    Rule("scheduler.monitor", LOGGED, "val/mIoU", "the score the schedule follows"),
    Rule("scheduler.mode", choice("min", "max"), "max", "whether the score improves down or up"),
    Rule("scheduler.mode", MODE_OF_MONITOR, _mode_example,
         "the wrong direction lowers the rate while the score improves"),
    Rule("scheduler.factor", number(0, 1, open_low=True, open_high=True), 0.1,
         "1 never lowers the rate, 0 stops training"),
    Rule("scheduler.patience", number(0, integer=True), 5, "validations without improvement"),
    Rule("scheduler.threshold", number(0), 1e-4, "the relative improvement that counts"),

    # --- task: conf/task/*.yaml
    Rule("task.num_classes", same_as("data.num_classes"), _from("data.num_classes"),
         "the metrics count the classes of the data"),
    Rule("task.class_names", same_as("data.class_names"), _from("data.class_names"),
         "the logged names are the data's"),
    Rule("task.ignore_index", same_as("data.ignore_index"), _from("data.ignore_index"),
         "the metrics leave out the pixels the data ignores"),
    Rule("task.aux_weight", number(0), 0.4, "a negative weight rewards the aux head's errors"),
    Rule("task.backbone_lr_mult", number(0), 1.0, "0 keeps the backbone as initialised"),
    Rule("task.head_lr_mult", number(0, open_low=True), 1.0, "0 never trains the head"),
    Rule("task.no_decay_norm_bias", BOOL, True, "no weight decay on norm weights and biases"),
    Rule("task.freeze_backbone_epochs", number(0, integer=True), 0, "0: never frozen"),
    Rule("task.freeze_bn", BOOL, False, "backbone BatchNorm fixed all run"),
    Rule("task.frozen_modules", Check("a list of distinct module names",
                                      CLASS_NAMES.test), ["model.encoder.model.conv_stem"],
         "names of task.model's submodules (checked when the model is built)"),
    Rule("task.ema_decay", number(0, 1, open_high=True, null=True), 0.999,
         "1 never moves the average off the initial weights"),
    Rule("task.membrane_class", relation(
        lambda c: f"null or a class 0..C-1 (C=data.num_classes={c.value_or('data.num_classes')})",
        lambda v, c: v is None or (_is_number(v, True) and 0 <= v < _num_classes(c))),
         None, "the class whose map the ISBI 2012 errors score"),
    Rule("task.score_threshold", number(0, 1), 0.5, "a detection score"),
    Rule("task.mask_threshold", number(0, 1), 0.5, "a mask probability"),

    # --- inference: conf/inference/*.yaml (at task.inference)
    Rule("task.inference.scales", SCALES, [1.0], "image scales"),
    Rule("task.inference.flip", BOOL, False, "also the mirrored image"),
    Rule("task.inference.crop_size", sizes(null=True, square=True), [512, 512], "window size"),
    Rule("task.inference.stride", sizes(null=True, square=True), [341, 341], "window step"),
    Rule("task.inference.stride", relation("null, or at most task.inference.crop_size per side",
                                           _stride_test), None,
         "a step past the window leaves pixels that no window covers"),
    Rule("task.inference.window_batch", number(1, integer=True, null=True), None,
         "windows per forward pass; null: about half a megapixel"),

    # --- trainer: conf/trainer/*.yaml, debug/*.yaml, eval.yaml's trainer
    Rule("trainer.accelerator", choice(*ACCELERATORS), "auto", "Lightning's accelerators"),
    Rule("trainer.strategy", STRATEGY, "ddp", "Lightning's strategies"),
    Rule("trainer.devices", DEVICES, 1, "devices per node"),
    Rule("trainer.devices", choice(1), 1, "one process writes the report", command="eval"),
    Rule("trainer.num_nodes", number(1, integer=True), 1, "machines"),
    Rule("trainer.precision", choice(*PRECISIONS), "32-true", "Lightning's precisions"),
    Rule("trainer.max_epochs", MAX_EPOCHS, 20,
         "0 trains nothing; -1 or null with no other limit never stops (null: 1000)"),
    Rule("trainer.min_epochs", number(0, integer=True, null=True), None, "epochs at least"),
    Rule("trainer.max_steps", MAX_STEPS, -1, "0 trains nothing"),
    Rule("trainer.min_steps", number(0, integer=True, null=True), None, "steps at least"),
    Rule("trainer.max_time", MAX_TIME, "00:12:00:00", "a time limit"),
    Rule("trainer.limit_train_batches", _batches(), 1.0, "0 trains nothing"),
    Rule("trainer.limit_val_batches", _batches(), 1.0,
         "0 skips validation: no val/ score, so no best checkpoint"),
    Rule("trainer.limit_test_batches", _batches(), 1.0, "0 scores nothing; test=false skips it"),
    Rule("trainer.limit_predict_batches", _batches(), 1.0, "0 predicts nothing"),
    Rule("trainer.overfit_batches", _batches(zero=True), 0, "the batches fitted again and again"),
    Rule("trainer.val_check_interval", _batches(), 1.0, "0 never validates"),
    Rule("trainer.check_val_every_n_epoch", CHECK_VAL_EVERY, 1, "0 never validates"),
    Rule("trainer.check_val_every_n_epoch", relation("a divisor of trainer.max_epochs",
                                                     _validates_test),
         _from("trainer.max_epochs"), "the last epoch must be validated: else the final "
         "weights are never scored, or no validation runs at all"),
    Rule("trainer.num_sanity_val_steps", number(-1, integer=True), 2, "-1: the whole split"),
    Rule("trainer.log_every_n_steps", number(0, integer=True), 10, "0: no per-step values"),
    Rule("trainer.accumulate_grad_batches", number(1, integer=True), 1,
         "batches per optimiser step: 0 never steps"),
    Rule("trainer.gradient_clip_val", number(0, null=True), None, "null or 0: no clipping"),
    Rule("trainer.gradient_clip_algorithm", choice(None, "norm", "value"), "norm", "Lightning's"),
    Rule("trainer.deterministic", choice(True, False, "warn", None), False, "Lightning's"),
    Rule("trainer.benchmark", choice(True, False, None), False, "cuDNN autotuning"),
    Rule("trainer.fast_dev_run", FAST_DEV_RUN, False, "batches of a smoke run"),
    Rule("trainer.enable_checkpointing", BOOL, True, "Lightning's checkpoint switch"),
    Rule("trainer.enable_progress_bar", BOOL, True, "the progress bar"),
    Rule("trainer.enable_model_summary", BOOL, False, "Lightning's layer table"),
    Rule("trainer.inference_mode", BOOL, True, "torch.inference_mode in val/test"),
    Rule("trainer.detect_anomaly", BOOL, False, "autograd anomaly detection"),
    Rule("trainer.barebones", BOOL, False, "Lightning without its extras"),
    Rule("trainer.use_distributed_sampler", BOOL, True, "Lightning's sampler under DDP"),
    Rule("trainer.sync_batchnorm", BOOL, False, "BatchNorm statistics across processes"),
    Rule("trainer.reload_dataloaders_every_n_epochs", number(0, integer=True), 0, "0: never"),
    Rule("trainer.profiler", PROFILER, None, "Lightning's profilers"),

    # --- callbacks: conf/callbacks/*.yaml (every callback with the key)
    Rule("callbacks.*.monitor", LOGGED_OR_NULL, "val/mIoU",
         "a name never logged is never compared: no best checkpoint, no early stop"),
    Rule("callbacks.*.mode", choice("min", "max"), "max", "whether the score improves down or up"),
    Rule("callbacks.*.mode", MODE_OF_MONITOR, _mode_example,
         "the wrong direction keeps the worst checkpoint, or stops at the best"),
    Rule("callbacks.*.save_top_k", SAVE_TOP_K, 1, "0 writes no best checkpoint"),
    Rule("callbacks.*.save_last", choice(True, False, "link", None), False, "a last.ckpt"),
    Rule("callbacks.*.auto_insert_metric_name", BOOL, False, "metric names in file names"),
    Rule("callbacks.*.every_n_train_steps", number(0, integer=True, null=True), 500,
         "0: at epoch ends only"),
    Rule("callbacks.*.save_on_signal", BOOL, True, "save last.ckpt on Ctrl-C or SIGTERM"),
    Rule("callbacks.*.skip_nonfinite", BOOL, False, "drop NaN/Inf updates, or stop"),
    Rule("callbacks.*.logging_interval", choice("step", "epoch", None), "step", "when to log"),
    Rule("callbacks.*.every_n_epochs", number(0, integer=True, null=True), 1, "0: off"),
    Rule("callbacks.*.num_images", number(0, integer=True), 4, "0: the matrix only"),
    Rule("callbacks.*.max_size", number(1, integer=True, null=True), 512, "pixels; null: full"),
    Rule("callbacks.*.palette", PALETTE, None, "the colours of the panels"),
    Rule("callbacks.*.patience", number(1, integer=True), 5,
         "0 stops at the first validation that does not improve"),
    Rule("callbacks.*.min_delta", number(0), 0.0, "a negative delta counts a drop as progress"),
    Rule("callbacks.*.check_finite", BOOL, True, "stop on a NaN or Inf score"),
    Rule("callbacks.*.channels_last", BOOL, True, "the NHWC layout"),
    Rule("callbacks.*.compile", BOOL, False, "torch.compile"),
    Rule("callbacks.*.verbose", BOOL, False, "Lightning's messages"),

    # --- logger: conf/logger/*.yaml
    Rule("logger.*.offline", BOOL, True, "false streams the run to the W&B server"),
    Rule("logger.*.log_model", choice(True, False, "all"), False, "W&B checkpoint upload"),
    Rule("logger.*.required", BOOL, True, "false leaves a missing tracker out with a warning"),
    Rule("logger.*.flush_logs_every_n_steps", number(1, integer=True), 100, "CSV writes"),
)
# fmt: on

# Keys no rule fits: names, paths, other libraries' own arguments, with what they take.
FREE: dict[str, str] = {
    "task_name": "a name: the folder under logs/",
    "ckpt_path": "null, a checkpoint file, last (train.py), or a list of files (an ensemble)",
    "input": "an image file or a folder of images",
    "output": "a folder (predict.py); null or a file (export.py)",
    "paths.*": "folders",
    "data.dataset.root": "the data folder (layouts: docs/data.md)",
    "data.dataset.sbd_root": "null or the SBD folder (data.train_split=train_aug)",
    "data.dataset.cache_dir": "null or a folder",
    "data.dataset.val_stems": "file stems of the held-out slices",
    "data.cache_dir": "null or a folder",
    "data.prepare": "null, or the function run once before the datasets are built",
    "data.prepare.root": "a folder",
    "data.train_split": "a split name: its file list is checked when the data is built",
    "data.val_split": "a split name, or null (segkit.data.checks.split_name_problems)",
    "data.test_split": "a split name, or null",
    "data.train_transform.**": "null or an albumentations transform: its arguments are checked "
    "by albumentations when it is built",
    "data.eval_transform.**": "null or an albumentations transform (as data.train_transform)",
    "model.encoder_name": "an encoder name: the model's build lists the valid ones",
    "model.backbone": "a torchvision ResNet or ResNeXt name",
    "model.encoder_weights": "null, a weights name or a file (docs/models.md)",
    "model.weights_path": "null, a state-dict file or a segkit checkpoint",
    "trainer.default_root_dir": "a folder",
    "trainer.profiler.**": "the profiler's own arguments (a folder, a file name)",
    "callbacks.*.dirpath": "a folder",
    "callbacks.*.filename": "a file name pattern, e.g. best_epoch{epoch:03d}",
    "logger.*.save_dir": "a folder",
    "logger.*.name": "a name; null: the tracker picks one",
    "logger.*.version": "a name or number; '' writes into the named folder",
    "logger.*.project": "a W&B project name",
    "logger.*.tags": "null, a list of names (W&B) or a mapping (MLflow)",
    "logger.*.tracking_uri": "an MLflow store: sqlite:///..., file:..., http://...",
    "logger.*.experiment_name": "an MLflow experiment name",
    "logger.*.run_name": "null or an MLflow run name",
    "logger.*.artifact_location": "null or a folder",
}

# Data keys that segkit.data.checks.check_config checks when the data module is built (the
# first thing built), with every other problem of the data settings; not repeated above. It
# also checks, beside the rules above: data.class_names holds data.num_classes names,
# data.palette one colour per class, data.ignore_index is no class (outside 0..C-1), and
# every required data.dataset argument is set.
CHECKED_WHEN_BUILT: dict[str, str] = {
    "data.in_channels": "3 (RGB) or 1 (greyscale)",
    "data.mean": "one value per input channel, on the 0-1 scale",
    "data.std": "one value > 0 per input channel, on the 0-1 scale",
}


# --- reading the config ---------------------------------------------------------------------


def key_pattern(key: str) -> re.Pattern[str]:
    """The regular expression of a table key, matched against ``"." + path``: ``*`` is one
    level, ``**`` any number of levels (none too)."""
    return re.compile(
        "".join(
            r"(?:\.[^.]+)*"
            if part == "**"
            else r"\." + ("[^.]+" if part == "*" else re.escape(part))
            for part in key.split(".")
        )
    )


def matches(key: str, path: str) -> bool:
    """Whether the table key ``key`` names the config key ``path``."""
    return key_pattern(key).fullmatch(f".{path}") is not None


def entries(node: DictConfig | ListConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, resolved value)`` of every key below ``node``, nodes and list items too;
    Hydra's own keys (``_target_``, ...) are left out. A ``???`` value is :data:`_MISSING`, an
    interpolation that does not resolve here :data:`_UNRESOLVED`."""
    keys: Sequence[Any] = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        if isinstance(key, str) and key.startswith("_") and key.endswith("_"):
            continue
        if not prefix and key == "hydra":  # Hydra's own settings (tests compose them in)
            continue
        path = f"{prefix}.{key}" if prefix else str(key)
        if OmegaConf.is_missing(node, key):
            yield path, _MISSING
            continue
        try:
            value = node[key]
        except Exception:  # noqa: BLE001 (${hydra:...} outside an app; a resolver's error)
            yield path, _UNRESOLVED
            continue
        yield path, value
        if isinstance(value, (DictConfig, ListConfig)) and not OmegaConf.is_interpolation(
            node, key
        ):
            yield from entries(value, path)


_PATTERNS = {rule.key: key_pattern(rule.key) for rule in RULES}


def violations(cfg: DictConfig) -> list[str]:
    """The lines of :func:`check_values`' message, in the order of the table ([] if none)."""
    found = list(entries(cfg))
    command = _command(cfg)
    lines = []
    for rule in RULES:
        if rule.command not in (None, command):
            continue
        pattern = _PATTERNS[rule.key]
        for path, value in found:
            if value is _UNRESOLVED or not pattern.fullmatch(f".{path}"):
                continue
            ctx = Context(cfg, path)
            try:
                ok = value is not _MISSING and rule.check.test(value, ctx)
            except _Skip:
                continue
            if not ok:
                example = rule.example(ctx) if callable(rule.example) else rule.example
                lines.append(
                    f"{path}={_show(value)}: {rule.check.describe(ctx)} ({rule.why}); "
                    f"e.g. {path}={_show(example)}"
                )
    return list(dict.fromkeys(lines))  # a value that fails two rules of one text: once


def check_values(cfg: DictConfig) -> None:
    """Stop on every value of ``cfg`` outside its valid range (:data:`RULES`).

    ``cfg`` is a composed ``conf/train.yaml``, ``eval.yaml``, ``predict.yaml`` or
    ``export.yaml``; only the config is read. A key a rule covers that is still ``???`` is
    out of range; interpolations that do not resolve outside a Hydra app are left alone.

    Raises:
        ConfigError: one line per value: ``<key>=<value>: <what is valid> (<why>); e.g.
            <key>=<a valid value>``.
    """
    lines = violations(cfg)
    if len(lines) == 1:
        raise ConfigError(lines[0])
    if lines:
        listed = "\n  ".join(lines)
        raise ConfigError(f"{len(lines)} config values cannot work:\n  {listed}")


def check_config(cfg: DictConfig) -> None:
    """The config half of the input contract, the first thing train.py, eval.py, predict.py
    and export.py do: every key an argument of its ``_target_``
    (:func:`segkit.config.check_arguments`), then every value in its range
    (:func:`check_values`). Reads the config only.

    Raises:
        ConfigError: naming each key, what is valid and an example.
    """
    check_arguments(cfg)
    check_values(cfg)
