"""Loading local weights. segkit never downloads: pretrained weights come from a file."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

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


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face Hub (where smp and timm keep their weights) cannot be reached.

    ``huggingface_hub`` retries a failed request for about 25 s before giving up, so an
    offline run would stall before its error; one TCP connection to the Hub's host answers
    at once. ``None`` (go ahead) also when ``HF_HUB_OFFLINE=1`` is set (the library then reads
    only its local cache and fails by itself at once) or when a proxy is configured (a
    direct connection says nothing about the proxy's).
    """
    import huggingface_hub

    if huggingface_hub.is_offline_mode() or any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    endpoint = urlparse(huggingface_hub.constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"cannot connect to {host}:{port} ({error})"
    return None


@contextmanager
def encoder_weights_errors(encoder_name: str, encoder_weights: str | None) -> Iterator[None]:
    """Fail at once with a :class:`WeightsError` that says how to run offline when
    ``encoder_weights`` (an smp/timm weights name, fetched from the Hugging Face Hub) cannot
    be had: the Hub is unreachable, or fetching or reading them fails. With
    ``encoder_weights=None`` errors pass through unchanged."""
    advice = (
        "set model.encoder_weights=null to train from scratch, or "
        "model.weights_path=/path/to/state_dict.pth to load local weights"
    )
    if encoder_weights is not None and (reason := hub_unreachable()) is not None:
        raise WeightsError(
            f"cannot get encoder_weights={encoder_weights!r} for {encoder_name}: the Hugging "
            f"Face Hub is unreachable, {reason}. This machine may be offline: {advice}. If "
            "the weights are already in your Hugging Face cache, run with HF_HUB_OFFLINE=1."
        )
    try:
        yield
    except (OSError, RuntimeError, ValueError) as error:
        if encoder_weights is None:
            raise
        raise WeightsError(
            f"cannot get encoder_weights={encoder_weights!r} for {encoder_name} ({error}). "
            f"This machine may be offline: {advice}."
        ) from error
