"""predict.py's output for a model that is ready to run: the images of ``input`` read,
segmented and written to ``output`` (:func:`predict_semantic`, :func:`predict_instances`).
Which model runs, and on which backend, is chosen above this layer
(:func:`segkit.deploy.predictor.predict`). The files written: docs/evaluation.md.

* ``<output>/<stem>.png``: class index per pixel, a palette-mode PNG coloured with the
  dataset's palette (``np.asarray(Image.open(...))`` gives the indices);
  ``<output>/overlays/<stem>.jpg``: the class colours blended over the image;
* with ``format=cityscapes``: ``<output>/<stem>.png`` holds Cityscapes labelIds, the official
  result format, and nothing else is written (a folder input is searched recursively for
  ``*_leftImg8bit.png``);
* an instance model: the semantic view of the detections, a drawing of them and
  ``<output>/<stem>.json`` listing every detection.

Nothing is written inside an input folder or over an input image (:func:`check_output`),
nothing replaces an existing file unless ``overwrite=true``, and nothing at all goes where
the input's dataset keeps its labels (:func:`check_targets`, :mod:`segkit.outputs`). Every
``<stem>.png`` carries :data:`segkit.outputs.PREDICTION_MARK`, by which a later
``overwrite=true`` run tells an earlier prediction from a label mask.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from rich.progress import track

from segkit.data.checks import raise_problems
from segkit.data.cityscapes import check_cityscapes_classes, label_ids
from segkit.data.folder import IMAGE_SUFFIXES, image_tensor, read_image, scaled_statistics
from segkit.data.io import DataError, image_size
from segkit.data.palettes import colourise, palette_of
from segkit.engine.runner import print_results
from segkit.outputs import check_new, check_not_labels, prediction_pnginfo
from segkit.tasks.instance import InstanceSegmentationTask, draw_instances


class Segmenter(Protocol):
    """What :func:`predict_semantic` runs: a semantic task, a task prepared for a backend
    (:func:`segkit.deploy.backends.fast_path`) or an exported ONNX file
    (:class:`segkit.deploy.backends.OnnxSegmenter`)."""

    num_classes: int
    class_names: list[str]

    def to(self, device: Any) -> Any: ...

    def class_scores(self, images: torch.Tensor) -> torch.Tensor: ...


def input_files(path: Path) -> list[Path]:
    """``path`` itself, or the images directly inside the folder ``path`` (sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input={path} does not exist; give an image or a folder.")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"input={path} holds no *.png, *.jpg or *.jpeg images.")
    return files


def check_output(output: Path, source: Path, files: list[Path]) -> None:
    """Refuse to write where the input is: into (or below) a folder given as ``input``, or
    over an input image itself (``input=photo.png output=.`` would write ``./photo.png``), or
    two inputs with one stem into one file (``a.png`` and ``a.jpg``).

    A single image may sit anywhere, e.g. in the current folder with ``output=preds/``.
    """
    if source.is_dir() and output.resolve().is_relative_to(source.resolve()):
        raise ValueError(
            f"output={output} lies inside the input folder {source}; predictions are never "
            "written into a data folder. Choose an output folder outside it."
        )
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise ValueError(
                f"input={source} holds {stems[path.stem].name} and {path.name}: both would be "
                f"written to {output / (path.stem + '.png')}; rename one of them."
            )
        stems[path.stem] = path
    inputs = {path.resolve() for path in files}
    for path in files:
        for target in (output / f"{path.stem}.png", output / "overlays" / f"{path.stem}.jpg"):
            if target.resolve() in inputs:
                raise ValueError(
                    f"output={output} would write {target} over the input image {path}; "
                    "choose another output folder."
                )


def prediction_files(
    output: Path, files: Sequence[Path], cityscapes: bool, detections: bool
) -> list[Path]:
    """Every file predict.py writes for the input images ``files``: ``<stem>.png``, and
    unless ``cityscapes`` ``overlays/<stem>.jpg``, and with ``detections`` ``<stem>.json``."""
    written = [output / f"{path.stem}.png" for path in files]
    if not cityscapes:
        written += [output / "overlays" / f"{path.stem}.jpg" for path in files]
    if detections:
        written += [output / f"{path.stem}.json" for path in files]
    return written


def check_targets(cfg: DictConfig, files: list[Path], detections: bool) -> None:
    """Everything that must hold before a prediction is written: :func:`check_output`, no
    output in the input's label folder (:func:`segkit.outputs.check_not_labels`, even with
    ``overwrite=true``), and unless ``cfg.overwrite`` no file of :func:`prediction_files`
    existing (:func:`segkit.outputs.check_new`).

    Raises:
        ValueError: from :func:`check_output`.
        segkit.outputs.OutputExistsError: a label folder or file, or an existing file.
    """
    source, output = Path(cfg.input).expanduser(), Path(cfg.output).expanduser()
    check_output(output, source, files)
    check_not_labels(output, files)
    if not cfg.overwrite:
        cityscapes = output_format(cfg) == "cityscapes"
        check_new(prediction_files(output, files, cityscapes, detections))


def colours_and_statistics(
    stored: DictConfig, num_classes: int
) -> tuple[list[tuple[int, int, int]], list[int], np.ndarray, np.ndarray]:
    """What both prediction writers take from the stored config: the palette, the same
    flattened for ``Image.putpalette``, and the normalisation ``mean``/``std`` (0-255)."""
    palette = palette_of(stored, num_classes)
    mean, std = scaled_statistics(stored.data.mean, stored.data.std)
    return palette, [v for colour in palette for v in colour], mean, std


def save_palette_png(labels: np.ndarray, flat_palette: list[int], path: Path) -> None:
    """``labels`` (uint8 ``[H, W]``) as a palette-mode PNG marked as predict.py's own."""
    mask = Image.fromarray(labels, mode="P")
    mask.putpalette(flat_palette)
    mask.save(path, pnginfo=prediction_pnginfo())


@torch.no_grad()
def predict_semantic(
    cfg: DictConfig, stored: DictConfig, task: Segmenter, files: Sequence[Path]
) -> None:
    """Write class-index PNGs and overlays for every input image; with ``format=cityscapes``
    Cityscapes labelId PNGs (``<stem>.png``, mode L) and nothing else, the result format of
    cityscapesScripts' ``evalPixelLevelSemanticLabeling`` (its search pattern
    ``<city>_<seq>_<frame>*.png`` matches ``<stem>`` of a ``*_leftImg8bit.png`` input).

    ``files``: the inputs (:func:`semantic_inputs`), already read (:func:`check_inputs`) and
    checked against what they would overwrite (:func:`check_targets`) by the caller,
    :func:`segkit.deploy.predictor.predict`, before the model was loaded."""
    output = Path(cfg.output).expanduser()
    if task.num_classes > 256:
        raise ValueError(f"{task.num_classes} classes do not fit a palette PNG (256 at most).")
    cityscapes = output_format(cfg) == "cityscapes"
    if cityscapes:  # the official result format: labelId PNGs only
        check_cityscapes_classes(task.class_names, "predict.py format=cityscapes")
    else:
        (output / "overlays").mkdir(parents=True, exist_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    palette, flat_palette, mean, std = colours_and_statistics(stored, task.num_classes)
    task = task.to(cfg.device)
    for path in track(files, description="predicting"):
        image = read_image(path)  # uint8 [H, W, 3]
        x = image_tensor(image, mean, std)[None].to(cfg.device)  # as the datasets normalise
        labels = task.class_scores(x).argmax(1)[0].to(torch.uint8).cpu().numpy()  # [H, W]
        if cityscapes:
            Image.fromarray(label_ids(labels)).save(
                output / f"{path.stem}.png", pnginfo=prediction_pnginfo()
            )
            continue
        save_palette_png(labels, flat_palette, output / f"{path.stem}.png")
        alpha = float(cfg.overlay_alpha)
        blend = (1 - alpha) * image.astype(np.float32) + alpha * colourise(labels, palette)
        Image.fromarray(blend.round().astype(np.uint8)).save(
            output / "overlays" / f"{path.stem}.jpg"
        )
    what = "Cityscapes labelIds" if cityscapes else "class indices, overlays/"
    print_results(output, f"{len(files)} predictions: <stem>.png {what}")


def output_format(cfg: DictConfig) -> str:
    """``cfg.format``: ``palette`` (default) or ``cityscapes``; anything else stops."""
    value = cfg.get("format", "palette")
    if value not in ("palette", "cityscapes"):
        raise ValueError(
            f"format={value} is not known: palette (class-index palette PNGs and overlays) "
            "or cityscapes (labelId PNGs, the official result format)."
        )
    return value


def semantic_inputs(cfg: DictConfig, source: Path) -> list[Path]:
    """:func:`input_files`; with ``format=cityscapes`` a folder is searched recursively for
    ``*_leftImg8bit.png`` (``input=<root>/leftImg8bit/val`` holds one folder per city)."""
    if output_format(cfg) == "cityscapes" and source.is_dir():
        found = sorted(source.rglob("*_leftImg8bit.png"))
        if found:
            return found
    return input_files(source)


def check_inputs(files: Sequence[Path]) -> None:
    """Read every input image's header before a model is loaded or a file written, so a
    file that is no image (text, a zero-byte or damaged header) stops predict.py at once,
    with check_data's words; a file damaged past its header stops when it is decoded.

    Raises:
        DataError: every unreadable input, one line each.
    """
    problems = []
    for path in files:
        try:
            image_size(path)
        except DataError as error:
            problems.append(str(error))
    raise_problems(problems)


@torch.no_grad()
def predict_instances(
    cfg: DictConfig, stored: DictConfig, task: InstanceSegmentationTask, files: Sequence[Path]
) -> None:
    """Write the semantic view (palette PNG), a drawing and the detections of every image.

    ``<output>/<stem>.png``: class map of the detections scoring at least the task's
    ``score_threshold`` (higher scores on top); ``<output>/overlays/<stem>.jpg``: masks,
    boxes, class names and scores drawn over the image; ``<output>/<stem>.json``: every
    detection (box xyxy, class, score). ``files`` as for :func:`predict_semantic` (checked
    with ``<stem>.json`` among the targets).
    """
    output = Path(cfg.output).expanduser()
    (output / "overlays").mkdir(parents=True, exist_ok=True)
    palette, flat_palette, mean, std = colours_and_statistics(stored, task.num_classes)
    task = task.to(cfg.device)
    for path in track(files, description="predicting"):
        image = read_image(path)  # uint8 [H, W, 3]
        x = image_tensor(image, mean, std).to(cfg.device)
        detections = {k: v.cpu() for k, v in task([x])[0].items()}
        labels = task.semantic_map(detections, image.shape[:2]).to(torch.uint8).numpy()
        save_palette_png(labels, flat_palette, output / f"{path.stem}.png")
        drawing = draw_instances(
            image,
            detections,
            task.class_names,
            palette,
            task.score_threshold,
            float(cfg.overlay_alpha),
        )
        drawing.save(output / "overlays" / f"{path.stem}.jpg")
        listing = [
            {"box": box, "class": task.class_names[label], "score": score}
            for box, label, score in zip(
                detections["boxes"].tolist(),
                detections["labels"].tolist(),
                detections["scores"].tolist(),
                strict=True,
            )
        ]
        (output / f"{path.stem}.json").write_text(json.dumps(listing, indent=1) + "\n")
    print_results(output, f"{len(files)} predictions: <stem>.png, <stem>.json, overlays/")
