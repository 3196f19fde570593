"""`python train.py model=<name> debug=fast_dev_run` on tiny shapes data, for every model config."""

from __future__ import annotations

import pytest

from ..helpers import MODELS, TINY, run_train


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_fast_dev_run(name, tmp_path):
    # 64x64 shapes images (TINY): small enough for the 130M-250M parameter VGG models on a CPU
    run_dir = run_train(tmp_path, *TINY, "debug=fast_dev_run", f"model={name}")
    assert "val scores (%)" in (run_dir / "stdout.txt").read_text()
