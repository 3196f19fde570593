"""Blocks shared by the model files: padding, unpooling, the norm choice,
conv-norm-activation, heads.

``model.norm`` picks the normalisation of every layer segkit builds itself (not of a
pretrained backbone, which keeps its own):

* ``batch``: :class:`torch.nn.BatchNorm2d`;
* ``group``: :class:`torch.nn.GroupNorm` with ``model.norm_groups`` groups (32 in Wu & He,
  "Group Normalization", ECCV 2018); independent of the batch size, so batch-1 training
  works where batch norm after a global pooling cannot;
* ``frozen_batch``: torchvision's :class:`~torchvision.ops.FrozenBatchNorm2d` (fixed
  statistics and affine parameters), for fine-tuning from ``weights_path``; from scratch it
  is the identity;
* ``null``: no normalisation (the convolution then has a bias).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.ops import Conv2dNormActivation, FrozenBatchNorm2d
from torchvision.ops.misc import ConvNormActivation

NORMS = ("batch", "group", "frozen_batch")
NormLayer = Callable[[int], nn.Module]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad ``x`` ``[B, C, H, W]`` at the bottom/right so both sides divide by ``multiple``.

    Zero is the dataset mean after normalisation.

    Returns:
        ``[B, C, H', W']`` with ``H' = ceil(H / multiple) * multiple`` (same for ``W'``).
    """
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % multiple, 0, -height % multiple))


class MaxUnpool(nn.Module):
    """Undo a 2x2, stride-2 max-pool: each value back at its window's argmax, zeros elsewhere.

    The same values as ``F.max_unpool2d(x, indices, kernel_size=2, stride=2)``, written as
    a scatter: ``max_unpool2d`` checks its output size with a Python condition that the
    TorchScript-based ONNX exporter and ``torch.jit.trace`` cannot follow at a dynamic size
    ("cond must be a bool, but got a Tensor"); a scatter exports at any size (ONNX
    ``ScatterElements``) and has the same gradient (a gather at ``indices``). A module, so
    the export check can see (and replay) the indices each unpooling receives.
    """

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, C, h, w]`` at ``indices`` ``[B, C, h, w]`` (int64 positions in each
        flattened ``2h x 2w`` plane, as ``nn.MaxPool2d(2, 2, return_indices=True)`` gives
        them) -> ``[B, C, 2h, 2w]``."""
        batch, channels, height, width = x.shape
        planes = x.new_zeros(batch, channels, 4 * height * width)
        planes = planes.scatter(2, indices.flatten(2), x.flatten(2))
        return planes.view(batch, channels, 2 * height, 2 * width)


def norm_layer(norm: str | None, groups: int = 32) -> NormLayer | None:
    """The factory ``channels -> norm module`` for ``model.norm`` (see the module docstring).

    Args:
        norm: ``"batch"``, ``"group"``, ``"frozen_batch"`` or ``None`` (no norm).
        groups: GroupNorm's group count (``model.norm_groups``).

    Raises:
        ValueError: an unknown ``norm``; with ``"group"``, the factory raises for a channel
            count that ``groups`` does not divide.
    """
    if norm is None:
        return None
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "frozen_batch":
        return FrozenBatchNorm2d
    if norm == "group":
        if groups < 1:
            raise ValueError(f"model.norm_groups must be a positive integer, got {groups}")

        def group_norm(channels: int) -> nn.GroupNorm:
            if channels % groups:
                raise ValueError(
                    f"model.norm=group: a layer with {channels} channels cannot be split into "
                    f"model.norm_groups={groups} groups; use a divisor of {channels}, e.g. "
                    f"model.norm_groups={math.gcd(channels, groups)}."
                )
            return nn.GroupNorm(groups, channels)

        return group_norm
    raise ValueError(f"model.norm={norm!r} is not one of {', '.join(NORMS)} or null.")


class ConvTranspose2dNormActivation(ConvNormActivation):
    """torchvision's :class:`~torchvision.ops.Conv2dNormActivation` with a transposed conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        norm_layer: NormLayer | None,
        activation_layer: Callable[..., nn.Module] | None,
        dilation: int,
        bias: bool | None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            norm_layer=norm_layer,
            activation_layer=activation_layer,
            dilation=dilation,
            bias=bias,
            conv_layer=nn.ConvTranspose2d,
        )


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    norm: NormLayer | None = nn.BatchNorm2d,
    dilation: int = 1,
    activation: bool = True,
    bias: bool | None = None,
    transposed: bool = False,
) -> Conv2dNormActivation | ConvTranspose2dNormActivation:
    """Size-preserving (stride 1) conv, norm, ReLU: ``[B, in, H, W] -> [B, out, H, W]``.

    torchvision's :class:`~torchvision.ops.Conv2dNormActivation` layout (``.0`` conv,
    ``.1`` norm, then ReLU); ``transposed`` uses a transposed convolution (DeconvNet).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel side; padding keeps the size.
        norm: a :func:`norm_layer` factory, or ``None`` for none.
        dilation: dilation (the padding grows with it).
        activation: ReLU at the end.
        bias: conv bias; default: only without a norm (a norm's shift replaces it).
        transposed: :class:`torch.nn.ConvTranspose2d` instead of :class:`torch.nn.Conv2d`.
    """
    layer = ConvTranspose2dNormActivation if transposed else Conv2dNormActivation
    return layer(
        in_channels,
        out_channels,
        kernel_size,
        norm_layer=norm,
        activation_layer=nn.ReLU if activation else None,
        dilation=dilation,
        bias=bias,
    )


def replace_batch_norm(module: nn.Module, norm: NormLayer | None) -> nn.Module:
    """Swap every :class:`torch.nn.BatchNorm2d` in ``module`` for ``norm(channels)``, in place.

    For torchvision heads that hard-code batch norm (ASPP, ``FCNHead``). ``norm=None``
    removes them (identity). ``nn.BatchNorm2d`` itself leaves ``module`` unchanged.
    """
    if norm is nn.BatchNorm2d:
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity() if norm is None else norm(child.num_features))
        else:
            replace_batch_norm(child, norm)
    return module


def auxiliary_head(in_channels: int, num_classes: int, norm: NormLayer | None) -> FCNHead:
    """torchvision's ``FCNHead`` for deep supervision: ``[B,in,h,w] -> [B,num_classes,h,w]``.

    3x3 conv to ``in_channels // 4`` channels, norm, ReLU, dropout 0.1, 1x1 classifier. The
    inner width is torchvision's ``in_channels // 4`` (256 on ResNet-50's stage 3, as the
    PSPNet reference code; 64 on ResNet-18).
    """
    return replace_batch_norm(FCNHead(in_channels, num_classes), norm)


def check_batch_for_pooled_batch_norm(x: torch.Tensor, training: bool, where: str) -> None:
    """Batch norm over a 1x1 pooled map has one value per channel when the batch is 1.

    Raises:
        ValueError: ``training`` with a batch of one.
    """
    if training and x.shape[0] == 1:
        raise ValueError(
            f"{where} applies batch norm to a 1x1 pooled map, which needs at least 2 samples "
            "in train mode; use data.batch_size>=2 (the train loader drops the last partial "
            "batch), model.norm=group (GroupNorm trains with batch 1), or call model.eval() "
            "for single-image inference."
        )
