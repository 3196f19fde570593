"""predict.py's ways of running a model: the CPU fast paths of a checkpoint and an exported
ONNX file (:class:`OnnxSegmenter`).

Fast paths for predict.py's checkpoints (:func:`fast_path`, ``backend=`` in
conf/predict.yaml; timed by ``benchmarks/predict_cpu.py``): ``eager``, ``channels_last``,
``compile`` (``torch.compile``, Inductor with frozen weights) and ``onnxruntime`` (an
in-memory dynamic ONNX export run by :class:`OnnxSegmenter`). The default, ``auto``
(:func:`choose_backend`), is ``compile``, the fastest correct path measured, for runs of at
least :data:`COMPILE_MIN_IMAGES` images, and ``eager`` for fewer, where compiling costs
more than it saves.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from segkit.config import ConfigError
from segkit.deploy.export import EXAMPLE_SIZE, export_onnx, read_metadata
from segkit.deploy.graph import ExportedModel, onnx_session

BACKENDS = ("eager", "channels_last", "compile", "onnxruntime")
# backend=auto compiles from this many images on: measured (BENCHMARKS.md, CamVid FPN-Lite0,
# 2 CPU cores) compiling cost ~39 s more setup than eager and saved 1.85 s per 1024x2048
# image (paid back after 21 images) but only 0.058 s per 360x480 image (after ~670).
COMPILE_MIN_IMAGES = 25


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
