"""Export a trained semantic model to ONNX or TorchScript, and run it the ways predict.py can.

What is exported (:class:`ExportedModel`) is what predict.py computes for one whole image,
after normalisation: the model's ``forward`` in eval mode (the EMA weights when the run kept
them), i.e. zero-padding to a multiple of ``model.output_stride``, the network, the bilinear
upsampling of the logits to the padded size and the crop back to the input size are all
inside the graph. Its input and outputs:

* input ``image``: float32 ``[B, 3, H, W]``, RGB, normalised as the datasets do,
  ``(pixel / 255 - mean) / std`` with ``mean``/``std`` from the metadata (0-1 scale);
* output ``logits`` (``returns=logits``, the default): float32 ``[B, C, H, W]``, or
  ``labels`` (``returns=labels``): int64 ``[B, H, W]``, the argmax over ``C`` (the first
  maximum on ties, as ``torch.argmax``).

The task's test-time ``inference`` (sliding windows, multi-scale, flip) is not in the graph:
it is stored in the metadata and :class:`OnnxSegmenter` applies it around a logits graph
exported with ``dynamic=true``, as predict.py does around a checkpoint.

``dynamic=false`` fixes the graph to batch 1 and ``+input_size=[H,W]``; ``dynamic=true``
accepts any batch size and image size (``input_size`` is then only the example traced).

Metadata (:func:`export_metadata`): ``mean``, ``std``, ``class_names``, ``num_classes``,
``palette``, ``returns``, ``input_size``, ``dynamic``, ``inference``, ``model``,
``exporter``, ``checkpoint``, ``input``, each a JSON string; in an ONNX file as
``metadata_props`` (``onnx.load(path).metadata_props``, onnxruntime's
``session.get_modelmeta().custom_metadata_map``), in a TorchScript file as the extra file
``segkit.json`` (``torch.jit.load(path, _extra_files={"segkit.json": ""})``).

Exporters, chosen per model by what works (:func:`export_onnx`): ONNX tries the
TorchScript-based exporter (``torch.onnx.export(dynamo=False)``, about a second for the
models tested) first and falls back to the dynamo exporter (``dynamo=True``, 5-20 s); every
conf/model exports with the first. Two rewrites make that so: the models unpool with a
scatter (:class:`~segkit.models.blocks.MaxUnpool`; ``max_unpool2d`` stopped the
TorchScript-based exporter: "cond must be a bool, but got a Tensor"), and the exported copy
replaces ``nn.AdaptiveAvgPool2d`` to more than 1x1 (PSPNet's and UPerNet's pyramid
pooling, which ONNX lacks at a dynamic size) by the same averages as matrix products
(:func:`onnx_ready`). TorchScript uses ``torch.jit.trace`` and falls back to
``torch.jit.script`` (PyTorch deprecates TorchScript in favour of ``torch.export``:
``jit.save``/``jit.load`` warn; ONNX is the format predict.py reads).

Every export is checked before the file is written (:func:`check_export`): onnxruntime (or
the loaded TorchScript module) must give the PyTorch logits within
``RTOL x max |logit| + ATOL`` (1e-4 of the logits' scale) on the example input and, for a
dynamic graph, on a second input of another batch size and image size (another padding
amount). Models that unpool at max-pool indices (SegNet, SegNet-Basic, DeconvNet) are
compared with PyTorch run on the graph's own indices, each checked to be its window's
maximum up to rounding: a window whose two largest values tie within rounding may pick
either, which moves a decoder value by one pixel (:func:`replayed_logits`). When a graph
fails the check the next exporter is tried, and when none passes :class:`ExportError` lists
each one's reason. Instance models (Mask R-CNN: detections of data-dependent count) are
refused before anything is built.

Fast paths for predict.py's checkpoints (:func:`fast_path`, ``backend=`` in
conf/predict.yaml; timed by ``benchmarks/predict_cpu.py``): ``eager``, ``channels_last``,
``compile`` (``torch.compile``, Inductor with frozen weights) and ``onnxruntime`` (an
in-memory dynamic ONNX export run by :class:`OnnxSegmenter`). The default, ``auto``
(:func:`choose_backend`), is ``compile``, the fastest correct path measured, for runs of at
least :data:`COMPILE_MIN_IMAGES` images, and ``eager`` for fewer, where compiling costs
more than it saves.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segkit.config import ConfigError
from segkit.models.blocks import MaxUnpool

FORMATS = ("onnx", "torchscript")
RETURNS = ("logits", "labels")
BACKENDS = ("eager", "channels_last", "compile", "onnxruntime")
# backend=auto compiles from this many images on: measured (BENCHMARKS.md, CamVid FPN-Lite0,
# 2 CPU cores) compiling cost ~39 s more setup than eager and saved 1.85 s per 1024x2048
# image (paid back after 21 images) but only 0.058 s per 360x480 image (after ~670).
COMPILE_MIN_IMAGES = 25
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
TORCHSCRIPT_METADATA = "segkit.json"  # the extra file of a TorchScript export
EXAMPLE_SIZE = (256, 320)  # traced example of a dynamic export without +input_size
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
OPSET = 17  # TorchScript-based exporter; Resize with half_pixel matches bilinear, no antialias
INPUT = "float32 [B,3,H,W] RGB, (pixel/255 - mean) / std"


class ExportError(RuntimeError):
    """The model could not be exported (each exporter's reason in the message)."""


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
    """The exported computation: normalised images -> logits or labels (module docstring).

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


def check_input_size(input_size: Any, dynamic: bool) -> tuple[int, int]:
    """``+input_size=[H,W]`` as a pair; :data:`EXAMPLE_SIZE` for a dynamic export without one.

    Raises:
        ConfigError: no size for a static graph, or not two positive integers.
    """
    if input_size is None:
        if dynamic:
            return EXAMPLE_SIZE
        raise ConfigError(
            "a static export needs the image size it will run on: +input_size=[H,W] "
            "(e.g. +input_size=[360,480]), or dynamic=true for any size."
        )
    size = list(input_size) if isinstance(input_size, Sequence) else [input_size]
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"+input_size={input_size} must be two positive integers [H,W].")
    return int(size[0]), int(size[1])


def export_metadata(
    stored: Mapping[str, Any],
    returns: str,
    input_size: tuple[int, int],
    dynamic: bool,
    checkpoint: str = "",
) -> dict[str, Any]:
    """What a user of the exported file needs besides the graph (see the module docstring).

    Args:
        stored: the checkpoint's config (``data.mean``, ``data.std``, ``data.class_names``,
            ``data.palette``, ``task.inference``, ``model``).
    """
    from segkit.engine.checkpoints import describe_model

    def plain(key: str) -> Any:
        node = OmegaConf.select(stored, key)
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

    stored = OmegaConf.create(stored) if not OmegaConf.is_config(stored) else stored
    return {
        "mean": [float(v) for v in plain("data.mean")],
        "std": [float(v) for v in plain("data.std")],
        "class_names": [str(v) for v in plain("data.class_names")],
        "num_classes": int(plain("data.num_classes")),
        "palette": plain("data.palette"),
        "returns": returns,
        "input_size": list(input_size),
        "dynamic": bool(dynamic),
        "inference": plain("task.inference"),
        "model": describe_model(stored),
        "checkpoint": str(checkpoint),
        "input": INPUT,
    }


def example_inputs(input_size: tuple[int, int], dynamic: bool) -> list[torch.Tensor]:
    """The inputs an export is traced and checked on: the example ``[1, 3, H, W]`` (batch 2
    for a dynamic graph, since exporters fix a dimension traced at 1), and for a dynamic
    graph also ``[1, 3, H + 37, W + 53]`` (another batch size and padding remainder)."""
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2 if dynamic else 1, 3, *input_size, generator=generator)]
    if dynamic:
        height, width = input_size
        inputs.append(torch.randn(1, 3, height + 37, width + 53, generator=generator))
    return inputs


def _unpool_modules(model: nn.Module) -> list[MaxUnpool]:
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
    handles += [unpool.register_forward_pre_hook(substitute) for unpool in _unpool_modules(model)]
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


def _onnx_proto(model: nn.Module, example: torch.Tensor, dynamic: bool, dynamo: bool) -> Any:
    """The ONNX ``ModelProto`` of ``model`` from one of torch's two exporters."""
    import onnx

    output = "labels" if isinstance(model, ExportedModel) and model.labels else "logits"
    names = {"input_names": ["image"], "output_names": [output]}
    with warnings.catch_warnings():
        # TracerWarnings flag sizes read as Python numbers; check_export tests every graph
        # at a second size, so a graph that froze them is caught there.
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = None
            if dynamic:
                # DYNAMIC, not named Dims: padding to the output stride adds guards such as
                # "H is not a multiple of 16" (traced from such an example), which named Dims
                # refuse (torch 2.14 then fails formatting the error: "Cannot create Dim with
                # inconsistent min=1, max=-oo"); the check runs the graph at other sizes.
                dim = torch.export.Dim.DYNAMIC
                shapes = ({0: dim, 2: dim, 3: dim},)
            program = torch.onnx.export(
                model, (example,), dynamo=True, dynamic_shapes=shapes, verbose=False, **names
            )
            return program.model_proto
        axes = None
        if dynamic:
            image_axes = {0: "batch", 2: "height", 3: "width"}
            labels_axes = {0: "batch", 1: "height", 2: "width"}  # [B, H, W]: no class axis
            axes = {"image": image_axes, output: labels_axes if output == "labels" else image_axes}
        buffer = io.BytesIO()
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, dynamic_axes=axes, opset_version=OPSET, **names
        )
        return onnx.load_from_string(buffer.getvalue())


def export_onnx(
    model: ExportedModel,
    input_size: tuple[int, int],
    dynamic: bool,
    metadata: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
) -> bytes:
    """Export ``model`` (an :class:`ExportedModel`, in eval mode) to ONNX, checked against
    PyTorch with onnxruntime (module docstring), with ``metadata`` as ``metadata_props``.

    Args:
        input_size: ``(H, W)`` of the example input (the graph's size when not ``dynamic``).
        dynamic: any batch size and image size instead of ``[1, 3, H, W]``.
        path: where to write the file (``None``: only return it).

    Returns:
        the serialised ONNX model; its ``metadata_props["exporter"]`` names the exporter used.

    Raises:
        ExportError: no exporter gave a graph that passes the check; each one's reason.
    """
    require_onnx()
    model = model.eval()
    inputs = example_inputs(input_size, dynamic)
    example = inputs[0]
    reasons = []
    graph = onnx_ready(model)
    for dynamo in (False, True):
        exporter = f"torch.onnx.export(dynamo={dynamo})"
        try:
            proto = _onnx_proto(graph, example, dynamic, dynamo)
            for key, value in {**(metadata or {}), "exporter": exporter}.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, json.dumps(value)
            data = proto.SerializeToString()
            if _unpool_modules(model) and expose_unpool_indices(proto):
                session = onnx_session(proto.SerializeToString())  # + unpooling indices
            else:
                session = onnx_session(data)
            name = session.get_inputs()[0].name
            run = lambda x, s=session, n=name: s.run(None, {n: x.numpy()})  # noqa: E731
            check_export(run, model, inputs)
        except Exception as error:  # noqa: BLE001 - try the next exporter, report all
            reasons.append(f"{exporter}: {type(error).__name__}: {str(error).strip()[:600]}")
            continue
        if path is not None:
            Path(path).write_bytes(data)
        return data
    raise ExportError(_cannot_export(model, "ONNX", reasons))


def export_torchscript(
    model: ExportedModel,
    input_size: tuple[int, int],
    dynamic: bool,
    metadata: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
) -> torch.jit.ScriptModule:
    """Export ``model`` (an :class:`ExportedModel`, in eval mode) to TorchScript, checked
    against PyTorch (module docstring); ``metadata`` goes into the extra file
    :data:`TORCHSCRIPT_METADATA`.

    Returns:
        the (re)loaded module, as a user gets it from ``torch.jit.load``.

    Raises:
        ExportError: neither ``torch.jit.trace`` nor ``torch.jit.script`` gave a module that
            passes the check; each one's reason.
    """
    model = model.eval()
    inputs = example_inputs(input_size, dynamic)
    example = inputs[0]
    reasons = []
    for name in ("torch.jit.trace", "torch.jit.script"):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                # TracerWarnings (see _onnx_proto) and jit.save/load's deprecation notice
                warnings.simplefilter("ignore")
                if name == "torch.jit.trace":
                    module = torch.jit.trace(model, example, check_trace=False)
                else:
                    module = torch.jit.script(model)
                files = {TORCHSCRIPT_METADATA: json.dumps({"exporter": name, **(metadata or {})})}
                buffer = io.BytesIO()
                torch.jit.save(module, buffer, _extra_files=files)
                loaded = torch.jit.load(io.BytesIO(buffer.getvalue()))
            check_export(lambda x, m=loaded: [m(x).numpy()], model, inputs)
        except Exception as error:  # noqa: BLE001 - try the next one, report all
            reasons.append(f"{name}: {type(error).__name__}: {str(error).strip()[:600]}")
            continue
        if path is not None:
            Path(path).write_bytes(buffer.getvalue())
        return loaded
    raise ExportError(_cannot_export(model, "TorchScript", reasons))


def _cannot_export(model: nn.Module, format_name: str, reasons: list[str]) -> str:
    inner = model.model if isinstance(model, ExportedModel) else model
    hint = " Try format=onnx." if format_name == "TorchScript" else ""
    return (
        f"{type(inner).__name__} cannot be exported to {format_name}: every exporter failed "
        f"or gave a graph that differs from PyTorch.{hint}\n  " + "\n  ".join(reasons)
    )


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a file written by export.py (ONNX or TorchScript), JSON-decoded.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no segkit metadata (not written by export.py).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path} does not exist; give a file export.py wrote.")
    if path.suffix == ".onnx":
        require_onnx()
        import onnx

        props = {
            p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props
        }
        meta = {key: json.loads(value) for key, value in props.items()}
    else:
        files = {TORCHSCRIPT_METADATA: ""}
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        meta = json.loads(files[TORCHSCRIPT_METADATA] or "{}")
    missing = [k for k in ("mean", "std", "class_names", "returns") if k not in meta]
    if missing:
        raise ValueError(
            f"{path} has no segkit metadata ({', '.join(missing)} missing): export the "
            "checkpoint with python export.py ckpt_path=<ckpt> format=onnx."
        )
    return meta


def _json_or_text(value: str) -> Any:
    """A metadata value written by export.py (JSON), or another tool's plain text."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def is_whole_image(inference: Any) -> bool:
    """Whether ``inference`` (an :class:`~segkit.evaluation.inference.Inference` or ``None``) is one
    unmirrored pass over the whole image at scale 1, whose argmax equals the logits'."""
    if inference is None:
        return True
    return inference.scales == [1.0] and not inference.flip and inference.crop_size is None


class OnnxSegmenter:
    """An exported ONNX model seen as predict.py sees a task: ``num_classes``,
    ``class_names``, ``to(device)``, ``class_scores(images)``.

    Runs on onnxruntime's CPU provider with ``torch.get_num_threads()`` intra-op threads.

    Args:
        model: the ``.onnx`` file or its bytes.
        metadata: :func:`read_metadata` of it.
        inference: test-time inference around the logits graph (``None``: whole image);
            anything but whole-image inference needs ``returns=logits`` and a graph exported
            with ``dynamic=true``.
    """

    def __init__(
        self, model: str | Path | bytes, metadata: Mapping[str, Any], inference: Any = None
    ) -> None:
        self.session = onnx_session(model)
        self.metadata = dict(metadata)
        self.num_classes = int(metadata["num_classes"])
        self.class_names = list(metadata["class_names"])
        self.returns = metadata["returns"]
        self.inference = inference
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.fixed_shape = [d if isinstance(d, int) else None for d in graph_input.shape]
        if not is_whole_image(inference) and self.returns != "logits":
            raise ConfigError(
                f"inference={inference} averages class scores, but this file returns labels; "
                "export with returns=logits (and dynamic=true), or predict with inference=whole."
            )

    def to(self, device: str | torch.device) -> OnnxSegmenter:
        """``self``; the file runs on the CPU only.

        Raises:
            ConfigError: ``device`` is not the CPU.
        """
        if torch.device(device).type != "cpu":
            raise ConfigError(
                f"device={device}: an ONNX file runs on onnxruntime's CPU provider here; use "
                "device=cpu, or predict from the checkpoint on the GPU."
            )
        return self

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The graph's output for ``images`` ``[B, 3, H, W]`` (logits ``[B, C, H, W]`` or
        labels ``[B, H, W]``); a graph fixed to batch 1 runs image by image.

        Raises:
            ValueError: a static graph given another image size, naming the fix.
        """
        _, _, height, width = self.fixed_shape
        if (height, width) != (None, None) and tuple(images.shape[-2:]) != (height, width):
            raise ValueError(
                f"this ONNX file was exported for {height}x{width} images only (dynamic=false); "
                f"got {images.shape[-2]}x{images.shape[-1]}. Export again with "
                f"+input_size=[{images.shape[-2]},{images.shape[-1]}] or dynamic=true."
            )
        array = images.detach().cpu().float().numpy()
        if self.fixed_shape[0] == 1 and len(array) != 1:
            outputs = [self.session.run(None, {self.input_name: a[None]})[0] for a in array]
            return torch.from_numpy(np.concatenate(outputs))
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, H, W]`` (a ``returns=logits`` file)."""
        return self.run(images)

    def class_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, C, H, W]`` whose ``argmax(1)`` is the prediction, as
        :meth:`~segkit.tasks.semantic.SemanticSegmentationTask.class_scores`: the task's
        inference over the logits, or one-hot labels for a ``returns=labels`` file."""
        if self.returns == "labels":
            labels = self.run(images)
            return F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float()
        if self.inference is None:
            return self.logits(images)
        return self.inference(self.logits, images)


def onnx_predictor(
    path: str | Path, given: Mapping[str, Any] | None = None
) -> tuple[DictConfig, OnnxSegmenter]:
    """predict.py's ``(stored config, task)`` for an ``.onnx`` file written by export.py.

    The config is rebuilt from the metadata (``data.mean``, ``data.std``,
    ``data.class_names``, ``data.num_classes``, ``data.palette``, ``task.inference``), with
    the command line's ``data``/``task`` keys merged over it (checked as for a checkpoint:
    the classes cannot change).
    """
    from segkit.engine.checkpoints import checkpoint_overrides

    meta = read_metadata(path)
    data = {k: meta[k] for k in ("mean", "std", "class_names", "num_classes")}
    if meta.get("palette") is not None:
        data["palette"] = meta["palette"]
    stored = {"data": data, "task": {"inference": meta.get("inference")}}
    stored = OmegaConf.merge(stored, checkpoint_overrides(dict(given or {}), stored))
    node = stored.task.inference
    inference = None if node is None else hydra.utils.instantiate(node)
    return stored, OnnxSegmenter(Path(path), meta, inference)


def choose_backend(backend: str, images: int) -> str:
    """``backend``, with ``auto`` resolved for a run over ``images`` images: ``compile``
    (the fastest correct path in BENCHMARKS.md) from :data:`COMPILE_MIN_IMAGES` images on
    where torch.compile works, else ``eager`` (compiling would cost more than it saves).

    Raises:
        ConfigError: an unknown backend.
    """
    if backend not in ("auto", *BACKENDS):
        raise ConfigError(f"backend={backend} must be one of auto, {', '.join(BACKENDS)}.")
    if backend != "auto":
        return backend
    if images < COMPILE_MIN_IMAGES:
        return "eager"
    from segkit.engine.callbacks.speed import compile_supported

    return "compile" if compile_supported() is None else "eager"


def fast_path(task: Any, backend: str) -> Any:
    """``task`` (a :class:`~segkit.tasks.semantic.SemanticSegmentationTask` in eval mode)
    prepared for ``backend`` (``backend=`` of predict.py, measured in BENCHMARKS.md):

    * ``eager``: as it is;
    * ``channels_last``: weights, and each input of the model, in NHWC layout;
    * ``compile``: the inference model compiled in place by ``torch.compile`` (Inductor,
      ``freezing``: weights folded in as constants; needs ``torch.no_grad``, as predict.py
      runs; each new image size compiles again, from the second one with dynamic shapes);
    * ``onnxruntime``: exported in memory (``dynamic=true``, checked) and run by
      :class:`OnnxSegmenter` with the task's inference.

    Raises:
        ConfigError: an unknown backend, or ``compile`` where torch.compile cannot run.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend} must be one of {', '.join(BACKENDS)}.")
    model = task.eval_model
    if backend == "channels_last":
        model.to(memory_format=torch.channels_last)
        model.register_forward_pre_hook(
            lambda _, args: (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
        )
    elif backend == "compile":
        from segkit.engine.callbacks.speed import compile_supported

        reason = compile_supported()
        if reason is not None:
            raise ConfigError(
                f"backend=compile: torch.compile does not work here ({reason}); use "
                "backend=channels_last or backend=eager."
            )
        model.compile(options={"freezing": True})
    elif backend == "onnxruntime":
        metadata = {
            "num_classes": task.num_classes,
            "class_names": task.class_names,
            "returns": "logits",
        }
        data = export_onnx(ExportedModel(model), EXAMPLE_SIZE, dynamic=True)
        return OnnxSegmenter(data, metadata, task.inference)
    return task


def export_checkpoint(
    ckpt_path: str | Path,
    format: str = "onnx",
    output: str | Path | None = None,
    input_size: Sequence[int] | None = None,
    dynamic: bool = False,
    returns: str = "logits",
) -> Path:
    """Export the model of a train.py checkpoint (or a published ``model.pt``).

    Args:
        ckpt_path: the checkpoint; its stored config rebuilds the task
            (:func:`segkit.engine.checkpoints.task_from_checkpoint`).
        format: ``"onnx"`` or ``"torchscript"``.
        output: the file to write (default: the checkpoint's name with ``.onnx``/``.pt``
            in the current folder).
        input_size: ``[H, W]``: the graph's image size, or the traced example when
            ``dynamic`` (then default :data:`EXAMPLE_SIZE`).
        dynamic: any batch size and image size.
        returns: ``"logits"`` (float32 ``[B, C, H, W]``) or ``"labels"`` (int64 ``[B, H, W]``).

    Returns:
        the path written.

    Raises:
        ConfigError: a bad ``format``/``returns``/``input_size``, or an instance checkpoint.
        ExportError: the model cannot be exported (why, per exporter).
    """
    from segkit.engine.checkpoints import describe_model, load_checkpoint, task_from_checkpoint

    if format not in FORMATS:
        raise ConfigError(f"format={format} must be one of {', '.join(FORMATS)}.")
    if returns not in RETURNS:
        raise ConfigError(f"returns={returns} must be one of {', '.join(RETURNS)}.")
    size = check_input_size(input_size, dynamic)
    checkpoint = load_checkpoint(ckpt_path)
    target = str(OmegaConf.select(OmegaConf.create(checkpoint["config"]), "task._target_"))
    if not target.endswith("SemanticSegmentationTask"):
        model_line = describe_model(checkpoint["config"])
        raise ConfigError(
            f"{ckpt_path} holds a {target.rsplit('.', 1)[-1]} ({model_line}): "
            "export.py exports semantic models only. Mask R-CNN returns a data-dependent "
            "number of detections and runs through its post-processing in Python, which "
            "neither ONNX nor TorchScript tracing can capture in one fixed graph; use "
            "predict.py with the checkpoint."
        )
    stored, task = task_from_checkpoint(checkpoint)
    del checkpoint
    model = ExportedModel(task.eval_model, returns)
    metadata = export_metadata(stored, returns, size, dynamic, str(ckpt_path))
    path = Path(output if output is not None else Path(ckpt_path).stem + SUFFIXES[format])
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = export_onnx if format == "onnx" else export_torchscript
    exporter(model, size, dynamic, metadata, path)
    return path
