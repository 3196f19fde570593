"""Loading local weights. segkit never downloads: pretrained weights come from a file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


class WeightsError(RuntimeError):
    """Weights were asked for and cannot be had; the message says how to run offline."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt``/``.ckpt`` (``weights_only=True``) or ``.safetensors`` file.

    A Lightning checkpoint's ``state_dict`` is unwrapped and its ``model.`` prefix removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights_path {path} does not exist. Give a local state-dict file, or set "
            "weights_path=null to train from scratch."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:  # Lightning checkpoint
        state = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load a local state dict into ``model``, reporting every key mismatch.

    Args:
        model: the module to fill.
        path: state-dict file (see :func:`read_state_dict`).
        strict: raise on missing/unexpected keys; with ``False`` they are listed in a warning
            (useful when fine-tuning with a new classifier).

    Raises:
        WeightsError: the file is missing, or keys/shapes do not match with ``strict``.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    wrong_shape = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems = []
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches, e.g. {wrong_shape[:3]}")
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
    if problems and strict:
        raise WeightsError(f"weights {path} do not fit the model: " + "; ".join(problems))
    if problems:
        import warnings

        warnings.warn(f"weights {path} loaded partially: " + "; ".join(problems), stacklevel=2)
    state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(state, strict=False)
    return model


@contextmanager
def encoder_weights_errors(encoder_name: str, encoder_weights: str | None) -> Iterator[None]:
    """Turn a failure to fetch ``encoder_weights`` into a :class:`WeightsError` that says how
    to run offline. Errors when no weights were asked for pass through unchanged."""
    try:
        yield
    except (OSError, RuntimeError, ValueError) as error:
        if encoder_weights is None:
            raise
        raise WeightsError(
            f"cannot get encoder_weights={encoder_weights!r} for {encoder_name} ({error}). "
            "This machine may be offline: set model.encoder_weights=null to train from "
            "scratch, or model.weights_path=/path/to/state_dict.pth to load local weights."
        ) from error
