"""predict.py's run as a function (:func:`predict`): which model runs, on which backend, and
then :mod:`segkit.engine.predict` writes the images. The command and its options:
docs/evaluation.md; the backends: docs/export.md.

* ``ckpt_path=<model.onnx>`` (written by export.py) runs the ONNX file on onnxruntime's CPU
  provider; its metadata gives the normalisation, classes, palette and inference
  (:func:`segkit.deploy.backends.onnx_predictor`).
* A checkpoint (or a published ``model.pt``) is rebuilt with the command line's
  ``data``/``task`` keys merged over its stored config
  (:func:`segkit.engine.ensemble.load_trained`) and runs on ``backend=``: ``auto`` compiles
  the model from :data:`~segkit.deploy.backends.COMPILE_MIN_IMAGES` images on and runs it
  eagerly for fewer (:func:`segkit.deploy.backends.choose_backend`), or the one named
  (:func:`segkit.deploy.backends.fast_path`).
* ``ckpt_path=[a.ckpt,b.ckpt]`` (``ckpt_weights=[2,1]``): the ensemble runs eagerly, each
  member with its own inference (:mod:`segkit.engine.ensemble`).

Before a model is loaded, every file the run may write is checked
(:func:`segkit.engine.predict.check_targets`): an existing one stops it unless
``overwrite=true``, and the input dataset's own label folder stops it always.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from segkit.config import ConfigError
from segkit.config_values import check_config
from segkit.deploy.backends import choose_backend, fast_path, onnx_predictor
from segkit.engine.ensemble import load_trained
from segkit.engine.loading import given_groups
from segkit.engine.predict import (
    check_inputs,
    check_targets,
    output_format,
    predict_instances,
    predict_semantic,
    semantic_inputs,
)
from segkit.tasks.instance import InstanceSegmentationTask
from segkit.tasks.semantic import SemanticSegmentationTask


def predict(cfg: DictConfig) -> None:
    """``python predict.py``: segment ``cfg.input`` into ``cfg.output`` with ``cfg.ckpt_path``
    (``conf/predict.yaml``'s composed config)."""
    check_config(cfg)  # keys and values, before a file is read
    given = given_groups(cfg)
    onnx = str(cfg.ckpt_path).endswith(".onnx")
    files = semantic_inputs(cfg, Path(cfg.input).expanduser())
    check_inputs(files)  # every input readable, before the model is loaded
    # the model's kind is known once it is loaded: <stem>.json (detections) is checked
    # whenever an instance model could write it
    check_targets(cfg, files, detections=not onnx and output_format(cfg) == "palette")
    if onnx:  # export.py's file: metadata gives the rest
        stored, onnx_task = onnx_predictor(cfg.ckpt_path, given)
        predict_semantic(cfg, stored, onnx_task, files)
        return
    # one checkpoint, or an ensemble of several (segkit/engine/ensemble.py); classes must match
    trained = load_trained(cfg.ckpt_path, given, cfg.get("ckpt_weights"))
    stored, task, ensemble = trained.config, trained.task, bool(trained.members)
    # One function per task type; instance segmentation plugs in here.
    if isinstance(task, SemanticSegmentationTask):
        images = len(files)
        if ensemble and cfg.backend not in ("auto", "eager"):
            # the fast paths prepare one model; each member keeps its own inference
            raise ConfigError(
                f"backend={cfg.backend} runs one checkpoint; an ensemble runs eagerly: use "
                "backend=eager (or auto), or export and predict each member alone."
            )
        backend = "eager" if ensemble else choose_backend(cfg.backend, images)
        if cfg.backend == "auto":
            print(f"backend=auto: {backend} for {images} images")
        predict_semantic(cfg, stored, fast_path(task, backend), files)
        return
    if isinstance(task, InstanceSegmentationTask):
        if output_format(cfg) != "palette":
            raise ValueError("format=cityscapes writes semantic labelIds; use format=palette.")
        predict_instances(cfg, stored, task, files)
        return
    raise TypeError(f"predict.py cannot run a {type(task).__name__} checkpoint yet.")
