"""Every semantic model config gives the logits pinned in ``tests/expect/`` (see
``tests/expect/pinned.py``, which regenerates them only when run on purpose)."""

from __future__ import annotations

import numpy as np
import pytest

from ..expect.pinned import CONFIGS, EXPECT_DIR, logits_of
from ..helpers import HEAVY


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] * (n in HEAVY)) for n in CONFIGS]
)
def test_logits_equal_the_pinned_ones(name):
    path = EXPECT_DIR / f"{name}.npz"
    assert path.is_file(), f"{path} missing: python -m tests.expect.pinned {name}"
    expected = np.load(path)["logits"]
    # float32 kernels differ between CPUs in the last bits; a refactor moves far more
    np.testing.assert_allclose(
        logits_of(name), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )
