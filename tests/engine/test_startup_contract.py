"""The start-up check of every split a run uses: train.py, eval.py, predict.py and check_data
stop on the same bad dataset with the same words, and train.py checks the test split (with
``test=true``) before a model is built, not after the last epoch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segkit.cli.check_data import main as check_data_main
from segkit.data.io import DataError
from segkit.engine import train as train_module
from segkit.engine.evaluate import evaluate_checkpoint
from segkit.engine.train import train

from ..helpers import compose, load, write_folder_dataset

CLASSES = "[background,circle,square,triangle,star]"  # the 5 shapes classes of trained_run


def folder_overrides(root) -> list[str]:
    return [
        "data=folder",
        f"data.dataset.root={root}",
        "data.num_classes=5",
        f"data.class_names={CLASSES}",
        "data.crop_size=[32,32]",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.persistent_workers=false",
    ]


def files(root) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: the user's data before and after a run."""
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def no_model(*args, **kwargs):
    raise AssertionError("the model was built before the data were checked")


def check_data_problems(capsys, root, *overrides: str) -> list[str]:
    code = check_data_main([*folder_overrides(root), *overrides])
    out = capsys.readouterr().out
    assert code == 1, out
    problems = out.split("problems:\n")[1].split("\n\n")[0]
    return [line.removeprefix("- ") for line in problems.splitlines()]


def test_a_missing_test_split_stops_before_the_model_is_built(tmp_path, monkeypatch):
    root = write_folder_dataset(tmp_path / "mine", num_images=4, size=(32, 32), num_classes=5)
    monkeypatch.setattr(train_module, "build_task", no_model)
    run = tmp_path / "run"
    before = files(root)
    cfg = compose(tmp_path, [*folder_overrides(root), "data.test_split=test", "test=true"])
    with pytest.raises(
        DataError, match=r"data\.test_split='test'.*splits/test\.txt does not exist"
    ):
        train(cfg)
    assert not run.exists() or not any(run.rglob("*.ckpt"))
    assert files(root) == before
    # test=false does not use it: the same data trains as far as the model
    cfg = compose(tmp_path, [*folder_overrides(root), "data.test_split=test", "test=false"])
    with pytest.raises(AssertionError, match="the model was built"):
        train(cfg)


def test_a_bad_validation_mask_stops_train_at_startup_in_check_data_words(
    tmp_path, capsys, monkeypatch
):
    root = write_folder_dataset(tmp_path / "mine", num_images=4, size=(32, 32), num_classes=5)
    mask = np.zeros((32, 32), np.uint8)
    mask[:4, :4] = 9  # no class of 0..4 and not 255, in a validation mask (img2, img3)
    Image.fromarray(mask).save(root / "masks" / "img3.png")
    before = files(root)
    expected = check_data_problems(capsys, root)
    assert any("img3.png" in line for line in expected), expected
    monkeypatch.setattr(train_module, "build_task", no_model)
    with pytest.raises(DataError) as error:
        train(compose(tmp_path, folder_overrides(root)))
    message = str(error.value)
    assert message.startswith("data.val_split='val'")
    for line in expected:  # each check_data problem, in the same words
        assert line.removeprefix("data.val_split='val': ") in message
    assert files(root) == before


def test_a_truncated_image_gets_the_same_words_from_every_entry_point(
    trained_run, tmp_path, capsys, monkeypatch
):
    root = write_folder_dataset(tmp_path / "mine", num_images=4, size=(64, 64), num_classes=5)
    image = root / "images" / "img2.png"  # a validation image
    image.write_bytes(image.read_bytes()[:200])
    before = files(root)
    expected = check_data_problems(capsys, root)
    truncated = [line for line in expected if "img2.png" in line]
    assert truncated and "cannot read image" in truncated[0], expected
    line = truncated[0]

    monkeypatch.setattr(train_module, "build_task", no_model)
    with pytest.raises(DataError, match="data.val_split='val'") as error:
        train(compose(tmp_path, folder_overrides(root)))
    assert line in str(error.value)

    ckpt = load_checkpoint_path(trained_run)
    cfg = compose(
        tmp_path,
        [f"ckpt_path={ckpt}", f"data.dataset.root={root}"],
        config="eval",
        run_dir=tmp_path / "eval",
    )
    with pytest.raises(DataError) as error:
        evaluate_checkpoint(cfg)
    assert line in str(error.value)

    from segkit.deploy.predictor import predict

    cfg = compose(
        tmp_path,
        [f"ckpt_path={ckpt}", f"input={root / 'images'}", f"output={tmp_path / 'preds'}"],
        config="predict",
        run_dir=tmp_path / "predict",
    )
    with pytest.raises(DataError) as error:
        predict(cfg)
    assert line in str(error.value)
    assert files(root) == before


def load_checkpoint_path(run) -> str:
    import json

    ckpt = json.loads((run / "metrics.json").read_text())["checkpoint"]
    assert load(ckpt)["state_dict"]  # a real checkpoint of the run
    return ckpt
