"""The exported computation (:class:`ExportedModel`: what predict.py computes for one whole
image, after normalisation; the format is described in :mod:`segkit.deploy.export`), its
ONNX-ready copy (:func:`onnx_ready`) and the onnxruntime session that runs an ONNX graph.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segkit.config import ConfigError

RETURNS = ("logits", "labels")


def require_onnx() -> None:
    """Raise a clear error when the ``export`` extra (onnx, onnxscript, onnxruntime) is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"ONNX export and ONNX Runtime inference need the 'export' extra ({error}): "
            'pip install -e ".[export]"'
        ) from error


class ExportedModel(nn.Module):
    """The exported computation: normalised images -> logits or labels
    (:mod:`segkit.deploy.export` docstring).

    Args:
        model: a semantic model in eval mode, ``[B, 3, H, W]`` -> logits ``[B, C, H, W]``
            (or ``{"out": logits, ...}``).
        returns: ``"logits"`` or ``"labels"``.
    """

    def __init__(self, model: nn.Module, returns: str = "logits") -> None:
        super().__init__()
        if returns not in RETURNS:
            raise ConfigError(f"returns={returns} must be one of {', '.join(RETURNS)}.")
        self.model = model
        self.labels = returns == "labels"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> logits ``[B, C, H, W]`` or int64 labels ``[B, H, W]``."""
        logits = self.model(image)
        if isinstance(logits, dict):
            logits = logits["out"]
        return logits.argmax(1) if self.labels else logits


class AdaptiveAvgPool2dOnnx(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` as two matrix products, for ONNX at any input
    size: ONNX has adaptive average pooling only to 1x1 (``GlobalAveragePool``), and the
    TorchScript-based exporter refuses other sizes on a dynamic input ("input size not
    accessible"). Bin ``i`` of ``n`` over a side of length ``s`` averages positions
    ``floor(i s / n)`` to ``ceil((i + 1) s / n) - 1``, as PyTorch's kernel does.

    Args:
        output_size: ``(h, w)`` or one int for both.
    """

    def __init__(self, output_size: int | Sequence[int]) -> None:
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else output_size
        self.output_size = tuple(int(s) for s in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, h, w]``."""
        rows = self.bins(x.shape[-2], self.output_size[0], x)  # [h,H]
        columns = self.bins(x.shape[-1], self.output_size[1], x)  # [w,W]
        return rows @ x @ columns.transpose(0, 1)

    @staticmethod
    def bins(length: int, count: int, like: torch.Tensor) -> torch.Tensor:
        """``[count, length]``: row ``i`` is 1 / (bin ``i``'s length) on that bin, else 0."""
        index = torch.arange(count, device=like.device)
        start = index * length // count
        end = ((index + 1) * length + count - 1) // count
        position = torch.arange(length, device=like.device)
        inside = (position >= start[:, None]) & (position < end[:, None])
        return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def onnx_ready(model: ExportedModel) -> ExportedModel:
    """``model``, or a copy whose ``nn.AdaptiveAvgPool2d`` to more than 1x1 (PSPNet's and
    UPerNet's pyramid pooling) are :class:`AdaptiveAvgPool2dOnnx`: the same values, which
    both ONNX exporters follow at a dynamic size. The check compares with ``model``."""
    names = []
    for name, module in model.named_modules():
        if type(module) is nn.AdaptiveAvgPool2d:
            size = module.output_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            if None not in size and size != (1, 1):  # None: that side kept; 1x1: exports
                names.append(name)
    if not names:
        return model
    ready = copy.deepcopy(model)
    for name in names:
        ready.set_submodule(name, AdaptiveAvgPool2dOnnx(ready.get_submodule(name).output_size))
    return ready


def onnx_session(model: str | Path | bytes) -> Any:
    """An onnxruntime CPU session using as many intra-op threads as torch does."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: no per-node warnings on the console
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
