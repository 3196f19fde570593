"""train.py's run (:func:`segkit.engine.train.train`) with ``debug=fast_dev_run`` (one batch
of each split) on tiny shapes data, for every model config (small encoders where the config
has one)."""

from __future__ import annotations

import pytest

from segkit.engine.train import train

from ..helpers import HEAVY, MODELS, SMALL, TINY, compose_job

CASES = [pytest.param(n, marks=[pytest.mark.slow] * (n in HEAVY)) for n in MODELS]


@pytest.mark.parametrize("name", CASES)
def test_fast_dev_run(name, tmp_path, capsys):
    overrides = [*TINY, "debug=fast_dev_run", f"model={name}", *SMALL.get(name, [])]
    cfg = compose_job("train", tmp_path, tmp_path / "run", overrides)
    result = train(cfg)  # in-process: no interpreter start per model
    assert result["metrics"]["split"] == "val" and 0 <= result["metrics"]["mIoU"] <= 1
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert "val scores (%)" in capsys.readouterr().out
