"""What segkit writes never replaces a user's file (docs/reliability.md, "Nothing a user owns
is overwritten").

Every tool that writes files into a folder the user names (predict.py, export.py,
``python -m segkit.cli.publish``, ``python -m segkit.cli.convert``) lists each file it will
write and calls :func:`check_new` before it loads a model or writes anything: the first file
that exists stops it with :class:`OutputExistsError`, naming that file and the switch that
lets the tool replace the files it writes, ``overwrite=true`` for the Hydra apps
(:data:`OVERWRITE_KEY`), ``--overwrite`` for the argparse tools (:data:`OVERWRITE_FLAG`). With
the switch only the listed files are replaced; no tool deletes a file.

Predictions have one more rule, which no switch lifts (:func:`check_not_labels`): they never
go where the input's dataset keeps its labels. A ``<stem>.png`` written by predict.py carries
:data:`PREDICTION_MARK` (a PNG text chunk, :func:`prediction_pnginfo`), so a file of that
name without it is someone else's: a label mask, or another tool's output. train.py's run
folder has its own check (:func:`segkit.engine.checkpoints.check_run_folder`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image, PngImagePlugin

OVERWRITE_KEY = "overwrite=true"  # predict.py, export.py
OVERWRITE_FLAG = "--overwrite"  # python -m segkit.cli.publish, python -m segkit.cli.convert
PREDICTION_MARK = ("Software", "segkit predict.py")  # PNG tEXt key and value


class OutputExistsError(FileExistsError):
    """A file a segkit tool would write exists already, or the output is a dataset's labels."""


def check_new(paths: Iterable[str | Path], key: str = OVERWRITE_KEY) -> None:
    """Stop when any of ``paths`` exists (a broken symlink counts).

    Args:
        paths: every file the caller will write.
        key: how the caller's user allows replacing them (:data:`OVERWRITE_KEY` or
            :data:`OVERWRITE_FLAG`).

    Raises:
        OutputExistsError: naming the first existing file, how many more exist, and ``key``.
    """
    existing = [Path(path) for path in paths if os.path.lexists(path)]
    if existing:
        more = f" (and {len(existing) - 1} more it would write)" if len(existing) > 1 else ""
        raise OutputExistsError(
            f"{existing[0]} exists already{more}; segkit never replaces a file unasked, and "
            f"nothing was written. Choose a new output, or give {key} to replace the files "
            "this command writes (no other file is touched, none is deleted)."
        )


def prediction_pnginfo() -> PngImagePlugin.PngInfo:
    """The PNG text chunk every prediction PNG is saved with (:data:`PREDICTION_MARK`):
    ``image.save(path, pnginfo=prediction_pnginfo())``."""
    info = PngImagePlugin.PngInfo()
    info.add_text(*PREDICTION_MARK)
    return info


def is_prediction(path: Path) -> bool:
    """Whether ``path`` is a PNG that predict.py wrote (it carries :data:`PREDICTION_MARK`)."""
    try:
        with Image.open(path) as image:
            return image.info.get(PREDICTION_MARK[0]) == PREDICTION_MARK[1]
    except (OSError, ValueError):  # not an image, unreadable, a folder
        return False


def check_not_labels(output: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder of predictions that holds the labels of the inputs' dataset;
    no switch lifts this.

    * the ``data=folder`` layout: ``output`` is, or lies in,
      ``<root>/masks`` while an input image lies in ``<root>/images``; refused even while
      that folder is empty or missing, since a dataset reads its ground truth there;
    * any layout (CamVid ``<split>annot/``, VOC ``SegmentationClass/``, a copy of the masks
      elsewhere): ``output`` already holds ``<stem>.png`` for an input ``<stem>`` and that
      file is no prediction (:func:`is_prediction`). An earlier prediction may be replaced
      with ``overwrite=true``.

    Args:
        output: the folder predictions are written to, as given.
        inputs: the input images.

    Raises:
        OutputExistsError: naming the label folder or file and the input it belongs to.
    """
    target = output.expanduser().resolve()
    for image in inputs:
        folder = Path(os.path.abspath(image.expanduser())).parent  # as named, links kept
        labels = folder.parent / "masks"  # data=folder: <root>/images/, <root>/masks/
        if folder.name == "images" and target.is_relative_to(labels.resolve()):
            raise OutputExistsError(
                f"output={output} is the masks/ folder {labels} of the dataset whose "
                f"images/ holds the input {image}: predictions are never "
                "written where a dataset keeps its labels, not even with overwrite=true. "
                f"Choose another output folder, e.g. output={labels.parent / 'predictions'}."
            )
    for image in inputs:
        existing = output / f"{image.stem}.png"
        if os.path.lexists(existing) and not is_prediction(existing):
            raise OutputExistsError(
                f"output={output} holds {existing}, named like the prediction of the input "
                f"{image} but not written by predict.py: a label mask or another tool's file. "
                "Predictions never replace it, not even with overwrite=true; choose another "
                "output folder."
            )
