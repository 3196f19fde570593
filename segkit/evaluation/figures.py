"""Pictures of results drawn with Pillow alone: sample panels and the confusion matrix.

The base install has no matplotlib (it comes with the ``notebook`` extra), and these
pictures are drawn during training for the experiment trackers
(:class:`segkit.engine.callbacks.figures.ValidationFigures`) and for published results
(:mod:`segkit.deploy.publish`), so they need nothing beyond Pillow and numpy.

* :func:`sample_indices`: the fixed validation images, evenly spaced in the split's order.
* :func:`sample_panels`: image | ground truth | prediction rows in the data's palette, with
  a colour legend; labels outside the palette (``ignore_index``, void) are black.
* :func:`confusion_heatmap`: the row-normalised confusion matrix (rows = ground truth,
  columns = prediction, :func:`normalised_confusion`) as a labelled heatmap, each cell
  printed in % of its row (up to :data:`MAX_PRINTED_CLASSES` classes).

Every picture is a uint8 RGB array ``[H, W, 3]``, what the trackers' ``log_image`` take.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segkit.data.palettes import colourise

MAX_PRINTED_CLASSES = 20  # above this the cells are too small for their numbers
# Colour scale of the heatmap, linear in RGB from 0 to 1 (the end points of matplotlib's
# "Blues"); a row without ground truth (NaN) is grey.
LOW, HIGH, MISSING = (247, 251, 255), (8, 48, 107), (200, 200, 200)
BACKGROUND, INK, VOID = (255, 255, 255), (0, 0, 0), (0, 0, 0)
PAD = 4  # pixels between tiles, titles and legend entries


def sample_indices(length: int, count: int = 4) -> list[int]:
    """``count`` indices spread evenly over ``range(length)``, first and last included.

    ``sample_indices(101, 4)`` gives ``[0, 33, 67, 100]``; ``count`` is capped at
    ``length``.
    """
    if length < 1:
        raise ValueError("the validation split is empty")
    count = min(count, length)
    if count == 1:
        return [0]
    return [round(i * (length - 1) / (count - 1)) for i in range(count)]


def normalised_confusion(matrix: np.ndarray) -> np.ndarray:
    """Row-normalised confusion matrix, float64 ``[C, C]``.

    Entry ``(i, j)`` is the fraction of the ground-truth pixels of class ``i`` (row ``i`` of
    ``matrix``, rows = ground truth) predicted as class ``j``; a row without ground truth
    is NaN.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return matrix / matrix.sum(axis=1, keepdims=True)


def scale_colour(value: float) -> tuple[int, int, int]:
    """RGB of ``value`` in [0, 1] on the heatmap's scale (:data:`LOW` to :data:`HIGH`)."""
    if math.isnan(value):
        return MISSING
    t = min(max(value, 0.0), 1.0)
    return tuple(round(lo + t * (hi - lo)) for lo, hi in zip(LOW, HIGH, strict=True))


@functools.cache  # loading the font is most of the drawing time
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_size(text: str) -> tuple[int, int]:
    left, top, right, bottom = _font().getbbox(text)
    return right - left, bottom


def _shrink(picture: np.ndarray, max_size: int | None, resample: Image.Resampling) -> np.ndarray:
    """``picture`` scaled so that its longer side is at most ``max_size`` pixels."""
    height, width = picture.shape[:2]
    if max_size is None or max(height, width) <= max_size:
        return picture
    scale = max_size / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, resample))


def _legend(
    class_names: Sequence[str], palette: Sequence[Sequence[int]], width: int
) -> Image.Image:
    """Swatch + name per class (and black = ignored), wrapped into lines ``width`` wide."""
    entries = [*zip(class_names, palette, strict=True), ("ignored", VOID)]
    height = _text_size("Ag")[1]
    lines: list[list[tuple[str, Sequence[int], int]]] = [[]]
    x = 0
    for name, colour in entries:
        entry = height + PAD + _text_size(name)[0] + 3 * PAD
        if lines[-1] and x + entry > width:
            lines.append([])
            x = 0
        lines[-1].append((name, colour, x))
        x += entry
    legend = Image.new("RGB", (width, len(lines) * (height + PAD) + PAD), BACKGROUND)
    draw = ImageDraw.Draw(legend)
    for row, line in enumerate(lines):
        y = PAD + row * (height + PAD)
        for name, colour, x in line:
            draw.rectangle((x, y, x + height - 1, y + height - 1), fill=tuple(colour), outline=INK)
            draw.text((x + height + PAD, y), name, fill=INK, font=_font())
    return legend


def sample_panels(
    panels: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    names: Sequence[str],
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    max_size: int | None = None,
) -> np.ndarray:
    """One row per sample, image | ground truth | prediction, and a colour legend below.

    Args:
        panels: ``(image uint8 [H, W, 3], mask [H, W], prediction [H, W])`` per sample;
            masks and predictions hold class indices, labels outside ``palette`` (the
            ``ignore_index``) are drawn black.
        names: a title per sample (its file stem), above its image.
        class_names: ``C`` names for the legend.
        palette: ``C`` RGB triples, class ``i`` drawn in ``palette[i]``.
        max_size: longest side of each tile in pixels (images bilinear, labels nearest);
            ``None`` keeps the input size.

    Returns:
        uint8 RGB ``[H, W, 3]``; a tile smaller than the row's largest sits at its top left.
    """
    rows = []
    for image, mask, prediction in panels:
        labels = [colourise(mask, palette), colourise(prediction, palette)]
        rows.append(
            [
                _shrink(np.ascontiguousarray(image, dtype=np.uint8), max_size, Image.BILINEAR),
                *(_shrink(tile, max_size, Image.NEAREST) for tile in labels),
            ]
        )
    title_height = _text_size("Ag")[1] + PAD
    column_width = [max(row[i].shape[1] for row in rows) for i in range(3)]
    row_height = [max(tile.shape[0] for tile in row) + title_height for row in rows]
    width = sum(column_width) + 4 * PAD
    legend = _legend(class_names, palette, width - 2 * PAD)
    height = sum(row_height) + (len(rows) + 1) * PAD + legend.height
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    y = PAD
    for row, name, row_h in zip(rows, names, row_height, strict=True):
        x = PAD
        for tile, title, col_w in zip(
            row, (name, "ground truth", "prediction"), column_width, strict=True
        ):
            draw.text((x, y), title, fill=INK, font=_font())
            picture.paste(Image.fromarray(tile), (x, y + title_height))
            x += col_w + PAD
        y += row_h + PAD
    picture.paste(legend, (PAD, y))
    return np.asarray(picture)


def confusion_heatmap(
    matrix: np.ndarray, class_names: Sequence[str], title: str = "normalised confusion matrix"
) -> np.ndarray:
    """The row-normalised confusion matrix as a labelled heatmap.

    Args:
        matrix: ``[C, C]`` pixel counts, rows = ground truth, columns = prediction.
        class_names: ``C`` names, written left of the rows and above the columns.
        title: first line of the picture.

    Returns:
        uint8 RGB ``[H, W, 3]``: cell ``(i, j)`` coloured by :func:`scale_colour` of
        :func:`normalised_confusion` ``(i, j)`` and, for at most :data:`MAX_PRINTED_CLASSES`
        classes, labelled with it in % (rounded); a row without ground truth is grey.
    """
    share = normalised_confusion(matrix)
    count = len(class_names)
    if share.shape != (count, count):
        raise ValueError(f"a [{count}, {count}] confusion matrix, got {list(share.shape)}")
    printed = count <= MAX_PRINTED_CLASSES
    text_w, text_h = _text_size("100")
    cell = max(text_w, text_h) + 2 * PAD if printed else max(4, 360 // count)
    label_w = max(_text_size(name)[0] for name in class_names) + PAD
    line = text_h + PAD
    # rows: title, "prediction", column names (rotated); columns: "ground truth", row names
    left = line + label_w + PAD
    top = 2 * line + label_w + PAD
    grid = count * cell
    width = left + grid + 2 * PAD + 12 + _text_size("100%")[0] + PAD
    height = top + max(grid, _text_size("ground truth")[0] + 1) + PAD
    picture = Image.new("RGB", (max(width, _text_size(title)[0] + 2 * PAD), height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    draw.text((PAD, PAD), title, fill=INK, font=_font())
    draw.text((left, PAD + line), "prediction", fill=INK, font=_font())
    for index, name in enumerate(class_names):
        name_w, _ = _text_size(name)
        label = Image.new("RGB", (name_w + 1, text_h + 1), BACKGROUND)
        ImageDraw.Draw(label).text((0, 0), name, fill=INK, font=_font())
        rotated = label.rotate(90, expand=True)  # reads bottom to top, ending at the grid
        picture.paste(
            rotated, (left + index * cell + (cell - rotated.width) // 2, top - rotated.height - PAD)
        )
        draw.text(
            (left - PAD - name_w, top + index * cell + (cell - text_h) // 2),
            name,
            fill=INK,
            font=_font(),
        )
    axis = Image.new("RGB", (_text_size("ground truth")[0] + 1, text_h + 1), BACKGROUND)
    ImageDraw.Draw(axis).text((0, 0), "ground truth", fill=INK, font=_font())
    picture.paste(axis.rotate(90, expand=True), (PAD, top))
    for (i, j), value in np.ndenumerate(share):
        x0, y0 = left + j * cell, top + i * cell
        draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=scale_colour(value))
        if printed and not math.isnan(value):
            text = f"{100 * value:.0f}"
            w, _ = _text_size(text)
            colour = BACKGROUND if value > 0.5 else INK
            draw.text(
                (x0 + (cell - w) // 2, y0 + (cell - text_h) // 2), text, fill=colour, font=_font()
            )
    bar_x = left + grid + 2 * PAD  # colour bar, 100 % at the top
    for y in range(grid):
        draw.line(
            (bar_x, top + y, bar_x + 11, top + y), fill=scale_colour(1 - y / max(1, grid - 1))
        )
    draw.text((bar_x + 12 + PAD // 2, top), "100%", fill=INK, font=_font())
    draw.text((bar_x + 12 + PAD // 2, top + grid - text_h), "0%", fill=INK, font=_font())
    return np.asarray(picture)
