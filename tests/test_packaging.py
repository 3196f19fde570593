"""segkit installed from a wheel, outside the checkout: the configs travel with it.

``conf/`` is package data (``segkit/conf`` in the wheel, pyproject.toml), so
``python -m segkit.cli.<tool>`` composes configs from any folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import segmentation_models_pytorch as smp

from .helpers import PROJECT_ROOT

tomllib = pytest.importorskip("tomllib")  # the standard library from Python 3.11


def test_the_wheel_lists_every_package_and_ships_every_config():
    setuptools = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(p.parent.relative_to(PROJECT_ROOT).parts)
        for p in (PROJECT_ROOT / "segkit").rglob("__init__.py")
    }
    assert found | {"segkit.conf"} == set(setuptools["packages"])
    assert setuptools["package-dir"] == {"segkit.conf": "conf"}
    assert setuptools["package-data"] == {"segkit.conf": ["**/*.yaml"]}


@pytest.mark.slow
def test_summary_runs_from_a_wheel_installed_outside_the_checkout(tmp_path):
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # a copy of the sources: setuptools writes build/ and *.egg-info next to them
    source = tmp_path / "source"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("segkit", "conf"):
        shutil.copytree(PROJECT_ROOT / folder, source / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run([*build, str(source)], check=True, timeout=600, cwd=tmp_path)
    wheel = next(wheels.glob("segkit-*.whl"))
    install = [*pip, "install", "--no-deps", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("SEGKIT_ROOT", None)
    probe = "import segkit, segkit.config as c; print(segkit.__file__, c.CONF_DIR)"
    where = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=elsewhere, capture_output=True, text=True
    )
    assert where.stdout.split() == [
        str(site / "segkit" / "__init__.py"),
        str(site / "segkit" / "conf"),
    ], where.stderr
    summary = subprocess.run(
        [sys.executable, "-m", "segkit.cli.model_summary", "model=unet_r18"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert summary.returncode == 0, summary.stderr[-3000:]
    model = smp.Unet("resnet18", encoder_weights=None, classes=5)  # data=shapes: 5 classes
    count = sum(p.numel() for p in model.parameters())
    assert f"parameters:     {count:,} total" in summary.stdout
    assert not (elsewhere / "logs").exists()  # summary writes nothing
