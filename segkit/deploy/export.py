"""Export a trained semantic model to ONNX or TorchScript (export.py).

What is exported (:class:`~segkit.deploy.graph.ExportedModel`) is what predict.py computes
for one whole image, after normalisation: the model's ``forward`` in eval mode (the EMA
weights when the run kept them), i.e. zero-padding to a multiple of ``model.output_stride``,
the network, the bilinear upsampling of the logits to the padded size and the crop back to
the input size are all inside the graph. Its input and outputs:

* input ``image``: float32 ``[B, 3, H, W]``, RGB, normalised as the datasets do,
  ``(pixel / 255 - mean) / std`` with ``mean``/``std`` from the metadata (0-1 scale);
* output ``logits`` (``returns=logits``, the default): float32 ``[B, C, H, W]``, or
  ``labels`` (``returns=labels``): int64 ``[B, H, W]``, the argmax over ``C`` (the first
  maximum on ties, as ``torch.argmax``).

The task's test-time ``inference`` (sliding windows, multi-scale, flip) is not in the graph:
it is stored in the metadata and :class:`~segkit.deploy.backends.OnnxSegmenter` applies it
around a logits graph exported with ``dynamic=true``, as predict.py does around a checkpoint.

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
(:func:`~segkit.deploy.graph.onnx_ready`). TorchScript uses ``torch.jit.trace`` and falls
back to ``torch.jit.script`` (PyTorch deprecates TorchScript in favour of ``torch.export``:
``jit.save``/``jit.load`` warn; ONNX is the format predict.py reads).

Every export is checked before the file is written
(:func:`~segkit.deploy.parity.check_export`, :mod:`segkit.deploy.parity`), and predict.py's
ways of running a checkpoint or an ONNX file are in :mod:`segkit.deploy.backends`.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from segkit.config import ConfigError
from segkit.deploy.graph import RETURNS, ExportedModel, onnx_ready, onnx_session, require_onnx
from segkit.deploy.parity import check_export, expose_unpool_indices, unpool_modules
from segkit.outputs import check_new

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
TORCHSCRIPT_METADATA = "segkit.json"  # the extra file of a TorchScript export
EXAMPLE_SIZE = (256, 320)  # traced example of a dynamic export without +input_size
OPSET = 17  # TorchScript-based exporter; Resize with half_pixel matches bilinear, no antialias
INPUT = "float32 [B,3,H,W] RGB, (pixel/255 - mean) / std"


class ExportError(RuntimeError):
    """The model could not be exported (each exporter's reason in the message)."""


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
            if unpool_modules(model) and expose_unpool_indices(proto):
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
        meta = {key: _json_or_text(value) for key, value in props.items()}
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


def export_checkpoint(
    ckpt_path: str | Path,
    format: str = "onnx",
    output: str | Path | None = None,
    input_size: Sequence[int] | None = None,
    dynamic: bool = False,
    returns: str = "logits",
    overwrite: bool = False,
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
        overwrite: replace an existing ``output`` (never ``ckpt_path`` itself).

    Returns:
        the path written.

    Raises:
        ConfigError: a bad ``format``/``returns``/``input_size``, an instance checkpoint, or
            ``output`` naming the checkpoint read.
        segkit.outputs.OutputExistsError: ``output`` exists and not ``overwrite``; checked
            before the checkpoint is read.
        ExportError: the model cannot be exported (why, per exporter).
    """
    from segkit.engine.checkpoints import describe_model, load_checkpoint, task_from_checkpoint

    if format not in FORMATS:
        raise ConfigError(f"format={format} must be one of {', '.join(FORMATS)}.")
    if returns not in RETURNS:
        raise ConfigError(f"returns={returns} must be one of {', '.join(RETURNS)}.")
    size = check_input_size(input_size, dynamic)
    path = Path(output if output is not None else Path(ckpt_path).stem + SUFFIXES[format])
    if path.expanduser().resolve() == Path(ckpt_path).expanduser().resolve():
        raise ConfigError(
            f"output={output} is the checkpoint ckpt_path={ckpt_path} itself; export.py never "
            "writes over the file it reads. Choose another output."
        )
    if not overwrite:
        check_new([path])
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
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = export_onnx if format == "onnx" else export_torchscript
    exporter(model, size, dynamic, metadata, path)
    return path
