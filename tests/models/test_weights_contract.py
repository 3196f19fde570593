"""The weights contract of every semantic model config, through the real task.

One optimiser step of the task built as train.py builds it (``segkit.tasks.build_task``),
``trainer.save_checkpoint``, then a fresh model with ``model.weights_path=<that .ckpt>``:
the same tensors and bit-identical logits. With another class count and
``weights_strict=false`` exactly the tensors whose shapes depend on the class count (found
by comparing two freshly built models) stay as initialised and are the ones reported. Bad
weight sources and norms fail at once with the fix.
"""

from __future__ import annotations

import gc
import inspect
import re
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import pytest
import segmentation_models_pytorch as smp
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from segkit.config import WEIGHTS_KEYS
from segkit.models.weights import (
    WeightsError,
    align_keys,
    build_model,
    load_weights,
    read_state_dict,
)
from segkit.tasks import build_task

from ..helpers import HEAVY, MODELS, PROJECT_ROOT, RESNET18, SMALL

CONF = PROJECT_ROOT / "conf"
SIZE = 32  # image side of the training step and of the logits check
CASES = [
    pytest.param(name, SMALL.get(name, []), id=name, marks=[pytest.mark.slow] * (name in HEAVY))
    for name in MODELS
] + [pytest.param("fcn8s", [], id="fcn8s-vgg16")]  # the paper's VGG16 FCN once


def compose(name: str, *overrides: str) -> DictConfig:
    """conf/train.yaml with model=<name>; SGD without momentum keeps checkpoints small."""
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra.compose(
            "train",
            overrides=[
                f"model={name}",
                "optimizer=sgd",
                "optimizer.momentum=0.0",
                "scheduler=constant",
                *overrides,
            ],
        )


def build(name: str, *overrides: str) -> torch.nn.Module:
    return build_model(compose(name, *overrides).model)


def build_error(error: type[Exception], name: str, *overrides: str) -> str:
    """The message of the ``error`` that building the config raises: Hydra wraps a
    constructor's error; loading ``weights_path`` (after the constructor) raises as is."""
    with pytest.raises((InstantiationException, error)) as caught:
        build(name, *overrides)
    raised = caught.value
    if isinstance(raised, InstantiationException):
        raised = raised.__cause__
    assert isinstance(raised, error), caught.value
    return str(raised)


def batches(batch_size: int, num_classes: int = 5) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(batch_size, 3, SIZE, SIZE, generator=generator),
            "mask": torch.randint(0, num_classes, (batch_size, SIZE, SIZE), generator=generator),
        }
    ]


def train_one_step(cfg: DictConfig, batch_size: int = 2, checkpoint: Path | None = None):
    """The task after one optimiser step through ``lightning.Trainer.fit`` (and its
    ``trainer.save_checkpoint`` to ``checkpoint``)."""
    torch.manual_seed(0)
    task = build_task(cfg)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, train_dataloaders=DataLoader(batches(batch_size), batch_size=None))
    assert trainer.global_step == 1
    if checkpoint is not None:
        trainer.save_checkpoint(checkpoint)
    task.trainer = None  # let the trainer go (the VGG models hold GBs)
    return task


def logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, SIZE + 5, SIZE + 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_checkpoint_of_one_training_step_rebuilds_the_model(name, overrides, tmp_path):
    cfg = compose(name, *overrides)
    checkpoint = tmp_path / "step1.ckpt"
    task = train_one_step(cfg, checkpoint=checkpoint)
    trained = task.model.state_dict()
    expected = logits(task.model)
    del task
    gc.collect()

    torch.manual_seed(123)  # another initialisation: only the file can make them equal
    fresh = build(name, *overrides, f"model.weights_path={checkpoint}")
    state = fresh.state_dict()
    assert list(state) == list(trained)  # no missing or unexpected key
    assert all(torch.equal(state[k], trained[k]) for k in trained)
    assert torch.equal(logits(fresh), expected)


def test_pth_and_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build("pspnet", *SMALL["pspnet"])
    state = model.state_dict()
    torch.save(state, tmp_path / "psp.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "psp.safetensors")
    for path in (tmp_path / "psp.pth", tmp_path / "psp.safetensors"):
        torch.manual_seed(1)
        loaded = build("pspnet", *SMALL["pspnet"], f"model.weights_path={path}").state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items()), path


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_every_config_has_the_weights_keys_and_no_constructor_takes_them(name):
    model = compose(name).model
    assert set(WEIGHTS_KEYS) <= set(model)
    parameters = inspect.signature(hydra.utils.get_object(model._target_)).parameters
    assert not set(WEIGHTS_KEYS) & set(parameters), "build_model loads them, once"


def test_build_model_loads_weights_path_and_leaves_the_config_as_stored(tmp_path):
    # the keys are dropped from a copy: a checkpoint stores the config after the build
    cfg = compose("segnet_basic", "data.num_classes=3")
    torch.manual_seed(0)
    state = build_model(cfg.model).state_dict()
    torch.save(state, tmp_path / "segnet_basic.pth")
    cfg.model.weights_path = str(tmp_path / "segnet_basic.pth")
    stored = OmegaConf.to_container(cfg.model)
    torch.manual_seed(1)
    loaded = build_model(cfg.model).state_dict()
    assert OmegaConf.to_container(cfg.model) == stored
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_bare_smp_state_dict_loads_into_the_wrapper(tmp_path):
    # smp's own keys (encoder.*) for segkit's wrapper (model.encoder.*): the prefix is added
    torch.manual_seed(0)
    bare = smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None, classes=3)
    torch.save(bare.state_dict(), tmp_path / "smp.pth")
    smp_unet = {"_target_": "segkit.models.smp.smp_model", "arch": "Unet", "num_classes": 3}
    model = build_model({**smp_unet, "weights_path": tmp_path / "smp.pth"})
    for key, value in bare.state_dict().items():
        assert torch.equal(model.state_dict()[f"model.{key}"], value), key


def changed_by_class_count(name: str, overrides: list[str]) -> set[str]:
    """Keys whose shapes differ between the model built for 5 and for 4 classes."""
    with torch.device("meta"):
        five = build(name, *overrides, "data.num_classes=5").state_dict()
        four = build(name, *overrides, "data.num_classes=4").state_dict()
    assert list(five) == list(four)
    return {k for k in five if five[k].shape != four[k].shape}


@pytest.mark.parametrize("name", ["unet_r18", "fcn8s", "pspnet"])
def test_another_class_count_keeps_exactly_the_class_tensors_as_initialised(name, tmp_path):
    overrides = SMALL.get(name, [])
    checkpoint = tmp_path / "step1.ckpt"
    task = train_one_step(compose(name, *overrides), checkpoint=checkpoint)  # 5 classes
    trained = task.model.state_dict()
    expected = changed_by_class_count(name, overrides)
    assert expected and all("num_batches_tracked" not in k for k in expected)

    four = [*overrides, "data.num_classes=4"]
    torch.manual_seed(7)
    initial = build(name, *four).state_dict()
    torch.manual_seed(7)  # the same initialisation, then the checkpoint on top
    with pytest.warns(UserWarning, match="kept as initialised") as caught:
        model = build(name, *four, f"model.weights_path={checkpoint}", "model.weights_strict=false")
    for key, value in model.state_dict().items():
        source = initial if key in expected else trained
        assert torch.equal(value, source[key]), key
    message = str(caught[0].message)
    kept = re.search(r"kept as initialised \((\d+)\): (.*?); unused", message)
    assert int(kept[1]) == len(expected)
    assert set(kept[2].removesuffix(", ...").split(", ")) <= expected  # the first few, by name

    report = load_weights(build(name, *four), checkpoint, strict=False)
    assert set(report.kept_initialised) == expected
    assert set(report.unused) == expected  # the 5-class tensors of the file
    assert set(report.loaded) == set(trained) - expected
    message = build_error(WeightsError, name, *four, f"model.weights_path={checkpoint}")
    assert re.search(r"shape mismatches.*model.weights_strict=false", message)


@pytest.mark.parametrize("name", ["pspnet", "deeplabv3"])
def test_group_norm_trains_pspnet_and_deeplabv3_with_batch_one(name):
    overrides = [*SMALL[name], "model.aux_head=true"]
    with pytest.raises(ValueError, match="batch_size>=2.*model.norm=group"):
        train_one_step(compose(name, *overrides), batch_size=1)  # norm=batch refuses
    torch.manual_seed(0)
    before = build(name, *overrides, "model.norm=group").state_dict()
    task = train_one_step(compose(name, *overrides, "model.norm=group"), batch_size=1)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in task.model.head.modules())
    after = task.model.state_dict()
    for part in ("head.", "aux."):  # the step reached the group-normed head and aux head
        assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith(part))


def test_lightning_checkpoint_gives_ema_weights_first_and_drops_the_task_rest(tmp_path):
    a, b = torch.ones(2), torch.full((2,), 3.0)
    state = {
        "model.net.w": a,
        "ema_model.module.net.w": b,
        "ema_model.n_averaged": torch.tensor(4),
        "metrics.val.confmat": torch.zeros(3, 3),
        "loss.weight": torch.ones(3),
    }
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "ema.ckpt")
    ema = read_state_dict(tmp_path / "ema.ckpt")
    assert list(ema) == ["net.w"] and torch.equal(ema["net.w"], b)
    no_ema = {k: v for k, v in state.items() if not k.startswith("ema_model")}
    torch.save({"state_dict": no_ema}, tmp_path / "plain.ckpt")
    plain = read_state_dict(tmp_path / "plain.ckpt")
    assert list(plain) == ["net.w"] and torch.equal(plain["net.w"], a)


def test_key_prefixes_are_aligned_by_the_best_strip_add_or_replace():
    t = torch.zeros(1)
    own = {"net.encoder.conv.weight", "net.encoder.bn.weight", "net.head.weight"}
    wrapped = {"model.net.encoder.conv.weight": t, "model.net.head.weight": t}  # strip
    assert set(align_keys(wrapped, own)) == {"net.encoder.conv.weight", "net.head.weight"}
    bare = {"encoder.conv.weight": t, "encoder.bn.weight": t, "head.weight": t}  # add
    assert set(align_keys(bare, own)) == own
    renamed = {"model.encoder.conv.weight": t, "model.head.weight": t}  # replace
    assert set(align_keys(renamed, own)) == {"net.encoder.conv.weight", "net.head.weight"}
    assert set(align_keys({"net.head.weight": t}, own)) == {"net.head.weight"}  # unchanged


def test_missing_file_and_files_without_a_state_dict(tmp_path):
    missing = tmp_path / "missing.pth"
    message = build_error(WeightsError, "unet_r18", f"model.weights_path={missing}")
    assert f"model.weights_path={missing} does not exist" in message
    for content, what in (([1, 2, 3], "a list"), ({"epoch": 3}, "not tensors")):
        path = tmp_path / "not_weights.pth"
        torch.save(content, path)
        message = build_error(WeightsError, "unet_r18", f"model.weights_path={path}")
        assert re.search(rf"{path} holds .*{what}.*not a state dict", message), message


def test_another_architecture_names_the_file_keys_and_weights_strict(tmp_path):
    path = tmp_path / "unet.pth"
    torch.save(build("segnet_basic").state_dict(), path)  # no key in common with a ResNet U-Net
    message = build_error(WeightsError, "unet_r18", f"model.weights_path={path}")
    assert str(path) in message and "another architecture" in message
    assert "model.weights_strict=false" in message and "down.0.0.weight" in message
    # same encoder, another decoder: the encoder fits, the rest is listed
    torch.save(build("smp", *RESNET18).state_dict(), path)  # FPN on resnet18
    message = build_error(WeightsError, "unet_r18", f"model.weights_path={path}")
    pattern = r"unet.pth does not fit SMPModel.*missing keys.*unexpected keys.*weights_strict"
    assert re.search(pattern, message), message


@pytest.mark.parametrize("name", ["unet_r18", "deeplabv3", "fcn8s"])
@pytest.mark.parametrize("value", ["imagenet", "imagenet22k"])
def test_encoder_weights_that_need_the_network_fail_at_once_naming_the_offline_choices(
    offline, name, value
):
    start = time.perf_counter()
    message = build_error(WeightsError, name, *RESNET18, f"model.encoder_weights={value}")
    assert time.perf_counter() - start < 5  # no download attempt, no retries
    for choice in ("efficientnet-lite0", "tu-tf_efficientnet_lite0", "/path/to/", "=null"):
        assert choice in message
    # an unknown name fails before any connection; a known Hub name after one probe
    assert offline == ([] if value == "imagenet22k" else [("huggingface.co", 443)])


@pytest.mark.parametrize("name", ["unet", "segnet_basic"])
def test_models_without_a_backbone_refuse_encoder_weights(name):
    message = build_error(ValueError, name, "model.encoder_weights=efficientnet-lite0")
    assert re.search(r"has no pretrained backbone.*model.encoder_weights=null", message)


def test_bad_norms_fail_at_construction():
    message = build_error(ValueError, "segnet_basic", "model.norm=layer")
    assert "model.norm='layer' is not one of batch, group, frozen_batch" in message
    message = build_error(ValueError, "unet", "model.norm=group", "model.norm_groups=48")
    assert re.search(r"64 channels .*model.norm_groups=48.*norm_groups=16", message)
    # DeepLabV3+'s 48-channel low-level projection with the default 32 groups
    with torch.device("meta"):
        message = build_error(ValueError, "deeplabv3plus", *RESNET18, "model.norm=group")
    assert re.search(r"48 channels .*model.norm_groups=32.*norm_groups=16", message)


def test_weights_report_is_silent_when_everything_fits(tmp_path):
    torch.manual_seed(0)
    model = build("segnet_basic")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = load_weights(build("segnet_basic"), Path(tmp_path / "w.pth"), strict=False)
    assert report.kept_initialised == [] and report.unused == []
    assert report.loaded == list(model.state_dict())
