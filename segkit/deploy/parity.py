"""The check of every export against PyTorch (:func:`check_export`).

Every export is checked before the file is written (:func:`check_export`): onnxruntime (or
the loaded TorchScript module) must give the PyTorch logits within
``RTOL x max |logit| + ATOL`` (1e-4 of the logits' scale) on the example input and, for a
dynamic graph, on a second input of another batch size and image size (another padding
amount). Models that unpool at max-pool indices (SegNet, SegNet-Basic, DeconvNet) are
compared with PyTorch run on the graph's own indices, each checked to be its window's
maximum up to rounding: a window whose two largest values tie within rounding may pick
either, which moves a decoder value by one pixel (:func:`replayed_logits`). When a graph
fails the check the next exporter is tried, and when none passes
:class:`~segkit.deploy.export.ExportError` lists
each one's reason. Instance models (Mask R-CNN: detections of data-dependent count) are
refused before anything is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from segkit.deploy.graph import ExportedModel
from segkit.models.blocks import MaxUnpool

# Export check (check_export): max |exported - PyTorch| <= RTOL x max |PyTorch logit| + ATOL.
# onnxruntime's float32 rounding (batch norm folded into the convolutions, other convolution
# algorithms) measured 2e-7 to 7e-6 of the logits' scale on every conf/model (random
# weights, 70x90 to 256x320); a graph that pads (replicate instead of zeros) or upsamples
# (align_corners, nearest) differently is off by 2e-2 to 0.3 of it.
RTOL = 1e-4
ATOL = 1e-6  # only matters for logits near 0 everywhere
# An unpooling index the graph chose differently must hold its 2x2 window's maximum within
# NEAR_TIE x the layer's max |value|: ties that rounding decided differently had gaps of
# 0 to 3e-7 of the value (SegNet-Basic), a wrong index misses by the values' spread.
NEAR_TIE = 1e-5


def unpool_modules(model: nn.Module) -> list[MaxUnpool]:
    return [m for m in model.modules() if isinstance(m, MaxUnpool)]


def replayed_logits(
    model: nn.Module, x: torch.Tensor, graph_indices: Sequence[np.ndarray]
) -> torch.Tensor:
    """PyTorch's logits ``[B, C, H, W]`` of ``x`` with each :class:`MaxUnpool` call given the
    exported graph's indices (``graph_indices``, in call order) instead of its own, after
    checking that each index the graph chose differently is a maximum of the same 2x2
    window up to rounding (within :data:`NEAR_TIE` x the layer's max |value|).

    Why: a model that unpools at max-pool indices (SegNet, SegNet-Basic, DeconvNet) moves a
    decoder value to another pixel where a window's two largest values are a rounding error
    apart, so two correct runtimes differ there (SegNet-Basic at 256x320: by 2e-3 to 1e-2
    of the logits' scale, from 1-5 such windows per image); given the same indices they
    agree to rounding (5e-7 of the scale).

    Raises:
        ValueError: the graph's indices are not the model's unpooling calls, or one is not a
            maximum of its window.
    """
    pooled = {}  # id(indices) -> the pool's input [B,C,2h,2w]
    calls = iter(graph_indices)

    def record(pool: nn.Module, args: tuple[torch.Tensor, ...], output: Any) -> None:
        if isinstance(output, tuple):
            pooled[id(output[1])] = args[0]

    def substitute(unpool: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        values, ours = args
        theirs = next(calls, None)
        if theirs is None or theirs.size != ours.numel() or id(ours) not in pooled:
            raise ValueError("the graph's unpooling indices do not match the model's calls")
        theirs = torch.from_numpy(theirs).reshape(ours.shape).to(ours.device)
        check_pool_indices(pooled[id(ours)], ours, theirs)
        return values, theirs

    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d) and m.return_indices]
    handles = [pool.register_forward_hook(record) for pool in pools]
    handles += [unpool.register_forward_pre_hook(substitute) for unpool in unpool_modules(model)]
    try:
        with torch.no_grad():
            logits = ExportedModel(model)(x)
    finally:
        for handle in handles:
            handle.remove()
    if next(calls, None) is not None:
        raise ValueError("the graph has more unpooling indices than the model's calls")
    return logits


def check_pool_indices(before: torch.Tensor, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every index in ``theirs`` that differs from ``ours`` (the
    2x2, stride-2 max-pool indices of ``before`` ``[B, C, 2h, 2w]``, ``[B, C, h, w]`` each)
    lies in the same window and holds its maximum up to :data:`NEAR_TIE` x max |before|."""
    differ = ours != theirs
    if not differ.any():
        return
    width = before.shape[-1]
    plane = before.flatten(2)
    valid = (theirs >= 0) & (theirs < plane.shape[-1])
    same_window = valid & (ours // width // 2 == theirs // width // 2)
    same_window &= ours % width // 2 == theirs % width // 2
    safe = torch.where(valid, theirs, ours).flatten(2)
    gap = plane.gather(2, ours.flatten(2)) - plane.gather(2, safe)
    tie = (gap <= NEAR_TIE * before.abs().amax()).reshape(ours.shape)
    wrong = int((differ & ~(same_window & tie)).sum())
    if wrong:
        raise ValueError(
            f"{wrong} of the graph's {ours.numel()} max-pool indices are not a maximum of "
            "their 2x2 window"
        )


def expose_unpool_indices(proto: Any) -> int:
    """Add the indices input of every ``ScatterElements`` node (each :class:`MaxUnpool`
    call, in graph order) to ``proto``'s outputs, in place, for :func:`check_export`.

    Returns:
        how many outputs were added.
    """
    import onnx

    names = [node.input[1] for node in proto.graph.node if node.op_type == "ScatterElements"]
    for name in names:
        proto.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None)
        )
    return len(names)


def check_export(
    run: Callable[[torch.Tensor], Sequence[np.ndarray]],
    model: ExportedModel,
    inputs: Sequence[torch.Tensor],
) -> None:
    """Raise ``ValueError`` unless the exported graph gives ``model``'s output on every input.

    Logits: ``max |exported - PyTorch| <= RTOL x max |PyTorch logit| + ATOL`` over all of
    them (:data:`RTOL` = 1e-4 of the logits' scale, :data:`ATOL` = 1e-6; onnxruntime's
    rounding measured below 1e-5 of the scale on every conf/model, a graph that pads or
    upsamples differently is off by 2e-2 of it or more). Labels: equal except where
    PyTorch's two best logits are closer than that bound (a tie within rounding).
    For a model that unpools at max-pool indices, PyTorch runs with the graph's indices
    (:func:`replayed_logits`), each checked to be its window's maximum up to rounding.

    Args:
        run: ``[B, 3, H, W]`` -> the graph's outputs: logits or labels, then, for a graph
            with unpooling, each unpooling's indices (:func:`expose_unpool_indices`), if
            exposed (a graph that runs PyTorch's own kernels, TorchScript, needs none).
        model: the PyTorch reference (its ``returns`` says what the first output is).
        inputs: the images to compare on.
    """
    for x in inputs:
        try:
            with torch.no_grad():
                outputs = run(x)
        except Exception as error:  # noqa: BLE001 - a graph that fails to run is not exported
            message = f"the exported graph fails on a {tuple(x.shape)} input: {error}"
            raise ValueError(message) from error
        got = outputs[0]
        if len(outputs) > 1:
            logits = replayed_logits(model.model, x, outputs[1:])
        else:
            with torch.no_grad():
                logits = ExportedModel(model.model)(x)
        scale = float(logits.abs().max())
        limit = RTOL * scale + ATOL
        want = logits.argmax(1) if model.labels else logits
        if got.shape != tuple(want.shape):
            raise ValueError(
                f"on a {tuple(x.shape)} input the exported graph returns shape {got.shape}, "
                f"PyTorch {tuple(want.shape)}"
            )
        if model.labels:
            top2 = logits.topk(2, dim=1).values if logits.shape[1] > 1 else None
            margin = (top2[:, 0] - top2[:, 1]) if top2 is not None else torch.full_like(want, 1.0)
            wrong = int(((torch.from_numpy(got) != want) & (margin > limit)).sum())
            if wrong:
                raise ValueError(
                    f"on a {tuple(x.shape)} input {wrong} labels differ from PyTorch's"
                )
            continue
        difference = float(np.abs(got.astype(np.float64) - want.numpy()).max())
        if not difference <= limit:  # also catches NaN
            raise ValueError(
                f"on a {tuple(x.shape)} input the exported logits differ from PyTorch's by "
                f"{difference:.3g}, more than {RTOL:g} x max |logit| {scale:.3g} + {ATOL:g} "
                f"= {limit:.3g}"
            )
