"""Fine-tuning controls: parameter groups, a frozen backbone, frozen BatchNorm, weight EMA.

Every semantic model exposes its pretrained part as ``model.backbone`` (``None`` when it has
none) and splits its parameters into ``model.backbone_parameters()`` and
``model.head_parameters()`` (:class:`segkit.models.base.SegmentationModel`). On that:

* :func:`parameter_groups`: up to four optimiser groups - backbone / head, each with and
  without weight decay. The learning rate of a group is ``optimizer.lr * lr_mult``
  (``task.backbone_lr_mult``, ``task.head_lr_mult``); with ``no_decay_norm_bias`` the
  weights of normalisation layers and every bias get ``weight_decay=0`` (the common
  practice of detection/segmentation codebases: decaying a BatchNorm scale towards 0 only
  fights the normalisation).
* :func:`build_optimizer`: calls the optimiser partial on those groups and scales each
  group's ``lr`` by its ``lr_mult``, before any scheduler records ``initial_lr``, so every
  schedule keeps the ratios.
* :func:`set_backbone_frozen` (``task.freeze_backbone_epochs``), :func:`freeze_batch_norm`
  (``task.freeze_bn``) and :func:`freeze_modules` (``task.frozen_modules``): frozen
  parameters have ``requires_grad=False``, so they get no gradient and optimisers skip them
  (no update, no weight decay: bit-identical), and frozen layers stay in eval mode
  (BatchNorm running statistics unchanged). Frozen modules at the input end of the network
  (an encoder's stem and first stages) also save their whole backward pass: nothing before
  them needs a gradient.
* :class:`WeightEMA` (``task.ema_decay``): an exponential moving average of the weights and
  buffers, ``ema = decay * ema + (1 - decay) * weights`` after every optimiser step
  (:class:`torch.optim.swa_utils.AveragedModel`; the first update copies the weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

# the mark of a module frozen for the whole run (freeze_batch_norm, freeze_modules)
FROZEN_ALL_RUN = "segkit_frozen_all_run"
# Normalisation layers whose affine weights get no weight decay (torchvision's reference
# scripts use the same list for their "norm_weight_decay" option).
NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def backbone_of(model: nn.Module) -> nn.Module | None:
    """The pretrained part of ``model`` (its ``backbone`` attribute), or ``None``."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else None


def no_decay_parameters(model: nn.Module) -> set[nn.Parameter]:
    """Parameters of normalisation layers, and every parameter named ``bias``."""
    found: set[nn.Parameter] = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if isinstance(module, NORM_LAYERS) or name == "bias":
                found.add(parameter)
    return found


def parameter_groups(
    model: nn.Module,
    backbone_lr_mult: float = 1.0,
    head_lr_mult: float = 1.0,
    no_decay_norm_bias: bool = True,
) -> list[dict[str, Any]]:
    """Optimiser parameter groups of ``model`` (see the module docstring).

    Args:
        model: a segkit model; without a ``backbone`` every parameter is "head".
        backbone_lr_mult: learning-rate multiplier of ``model.backbone``'s parameters.
        head_lr_mult: learning-rate multiplier of every other parameter.
        no_decay_norm_bias: put norm-layer weights and biases in groups with
            ``weight_decay=0``.

    Returns:
        non-empty groups, each ``{"name", "params", "lr_mult"}`` plus ``"weight_decay": 0.0``
        for the no-decay ones; the optimiser's own ``weight_decay`` applies to the others.
        Frozen parameters are included (they join in when unfrozen).
    """
    backbone = backbone_of(model)
    in_backbone = set() if backbone is None else set(backbone.parameters())
    no_decay = no_decay_parameters(model) if no_decay_norm_bias else set()
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for parameter in model.parameters():
        part = "backbone" if parameter in in_backbone else "head"
        groups.setdefault((part, parameter in no_decay), []).append(parameter)
    result = []
    for (part, decay_free), params in sorted(groups.items()):
        group: dict[str, Any] = {
            "name": f"{part}{'/no_decay' if decay_free else ''}",
            "params": params,
            "lr_mult": backbone_lr_mult if part == "backbone" else head_lr_mult,
        }
        if decay_free:
            group["weight_decay"] = 0.0
        result.append(group)
    return result


def build_optimizer(
    factory: Callable[..., Optimizer], groups: Iterable[dict[str, Any]]
) -> Optimizer:
    """``factory(params=groups)`` with each group's ``lr`` multiplied by its ``lr_mult``."""
    optimizer = factory(params=list(groups))
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_mult", 1.0)
    return optimizer


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """(Un)freeze ``model.backbone``'s parameters; frozen, the backbone runs in eval mode.

    Modules frozen for the whole run (:func:`freeze_batch_norm`, :func:`freeze_modules`)
    stay frozen.
    """
    backbone = backbone_of(model)
    if backbone is None:
        raise ValueError(f"{type(model).__name__} has no backbone to freeze")
    for module in backbone.modules():
        if getattr(module, FROZEN_ALL_RUN, False):
            continue
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(not frozen)
    backbone.segkit_frozen = frozen
    backbone.train(model.training)
    apply_eval_modes(model)


def freeze_batch_norm(model: nn.Module) -> int:
    """Freeze every BatchNorm layer of ``model.backbone`` (statistics and affine parameters).

    Returns:
        the number of layers frozen. They are marked and kept in eval mode by
        :func:`apply_eval_modes` after every ``train()`` call.
    """
    backbone = backbone_of(model)
    if backbone is None:
        raise ValueError(f"{type(model).__name__} has no backbone whose BatchNorm to freeze")
    count = 0
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            setattr(module, FROZEN_ALL_RUN, True)
            module.requires_grad_(False)
            count += 1
    return count


def freeze_modules(model: nn.Module, names: Sequence[str]) -> int:
    """Freeze the submodules of ``model`` named in ``names`` for the whole run: no gradient,
    eval mode (kept by :func:`apply_eval_modes`).

    Args:
        model: the task's model.
        names: keys of ``model.named_modules()``, e.g. ``model.encoder.model.conv_stem``.

    Returns:
        the number of parameters frozen.

    Raises:
        ValueError: a name that is no submodule of ``model``, naming ``task.frozen_modules``
            and the submodules whose names are closest.
    """
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or not name:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            nearby = [n for n in modules if n and n.rsplit(".", 1)[0] == parent][:12]
            if not nearby:
                nearby = [n for n in modules if n and "." not in n]
            raise ValueError(
                f"task.frozen_modules: {name!r} is no submodule of {type(model).__name__}. "
                f"Submodules at that level: {', '.join(nearby)} (all names: "
                "dict(task.model.named_modules()))."
            )
    frozen = 0
    for name in names:
        for module in modules[name].modules():
            setattr(module, FROZEN_ALL_RUN, True)
        for parameter in modules[name].parameters():
            frozen += parameter.numel() if parameter.requires_grad else 0
            parameter.requires_grad_(False)
    return frozen


def apply_eval_modes(model: nn.Module) -> None:
    """Put a frozen backbone and the modules frozen for the whole run (back) into eval mode.

    ``nn.Module.train()`` sets every submodule to training mode; the task calls this after
    it, after freezing, and at the start of every training epoch, so frozen parts never
    update their running statistics.
    """
    backbone = backbone_of(model)
    if backbone is not None and getattr(backbone, "segkit_frozen", False):
        backbone.eval()
    for module in model.modules():
        if getattr(module, FROZEN_ALL_RUN, False):
            module.eval()


class WeightEMA(AveragedModel):
    """Exponential moving average of a model's parameters and buffers.

    ``ema = decay * ema + (1 - decay) * weights`` per :meth:`update_parameters` call (the
    first call copies the weights). Its parameters never require gradients, so optimisers
    and DDP leave them alone. In a task's state dict it sits under ``ema_model.module.*``
    (plus ``ema_model.n_averaged``); :func:`segkit.models.weights.read_state_dict` takes those
    weights from a checkpoint that has them.

    Args:
        model: the model to average (deep-copied).
        decay: in (0, 1), e.g. 0.999.

    Raises:
        ValueError: ``decay`` outside (0, 1), naming ``task.ema_decay``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(
                f"task.ema_decay={decay} must lie in (0, 1), e.g. 0.999 (or null for no EMA)"
            )
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = decay
        self.requires_grad_(False)
