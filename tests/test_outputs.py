"""segkit.outputs: an existing file stops a tool, naming it and the switch; predictions never
go into the input dataset's label folder, and the mark tells a prediction from a label."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segkit.outputs import (
    OVERWRITE_FLAG,
    OutputExistsError,
    check_new,
    check_not_labels,
    is_prediction,
    prediction_pnginfo,
)


def test_check_new_names_the_first_existing_file_and_the_switch(tmp_path):
    files = [tmp_path / name for name in ("a.png", "b.png", "c.png")]
    check_new(files)  # none exists
    files[1].write_bytes(b"mine")
    files[2].symlink_to(tmp_path / "gone")  # a broken link is a file too
    with pytest.raises(OutputExistsError, match=r"b.png exists already \(and 1 more") as error:
        check_new(files)
    assert isinstance(error.value, FileExistsError) and "overwrite=true" in str(error.value)
    with pytest.raises(OutputExistsError, match="give --overwrite"):
        check_new(files, OVERWRITE_FLAG)
    assert files[1].read_bytes() == b"mine" and not files[0].exists()


def test_labels_are_refused_and_a_marked_prediction_is_not(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    image = root / "images" / "a.jpg"
    Image.new("RGB", (4, 4)).save(image)
    for output in (root / "masks", root / "masks" / "preds"):  # even while masks/ is missing
        with pytest.raises(OutputExistsError, match="not even with overwrite=true"):
            check_not_labels(output, [image])
    check_not_labels(root / "predictions", [image])

    elsewhere = tmp_path / "annot"  # another layout: labels named like the images
    elsewhere.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(elsewhere / "a.png")
    with pytest.raises(OutputExistsError, match="not written by predict.py"):
        check_not_labels(elsewhere, [image])
    Image.fromarray(np.ones((4, 4), np.uint8)).save(
        elsewhere / "a.png", pnginfo=prediction_pnginfo()
    )
    assert is_prediction(elsewhere / "a.png")
    check_not_labels(elsewhere, [image])  # an earlier prediction: overwrite=true may replace it
    (elsewhere / "b.png").write_bytes(b"not an image")
    assert not is_prediction(elsewhere / "b.png") and not is_prediction(elsewhere)
