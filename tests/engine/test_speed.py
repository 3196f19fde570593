"""Every speed switch gives the logits of the plain fp32 eager path, within dtype tolerance."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader

from segkit.engine.callbacks import speed
from segkit.engine.callbacks.speed import FastPaths, compile_supported
from segkit.models.smp import smp_model
from segkit.tasks.losses import CrossEntropyLoss
from segkit.tasks.semantic import SemanticSegmentationTask


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return smp_model("Unet", 3, encoder_name="resnet18").eval()


def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_channels_last_gives_the_same_logits():
    model, x = small_model(), images()
    with torch.inference_mode():
        want = model(x)
        model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    assert model.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.contiguous(), want, rtol=1e-4, atol=1e-4)


def test_bf16_mixed_precision_gives_the_same_logits_within_bf16_tolerance():
    # Lightning's own autocast context for trainer.precision=bf16-mixed on the CPU
    model, x = small_model(), images()
    with torch.inference_mode():
        want = model(x)
        with MixedPrecision("bf16-mixed", "cpu").forward_context():
            got = model(x)
    assert got.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits (relative step 2^-8); errors add up over ~20 layers
    scale = want.abs().max()
    torch.testing.assert_close(got.float(), want, rtol=0, atol=0.05 * scale.item())
    agreement = (got.float().argmax(1) == want.argmax(1)).float().mean()
    assert agreement > 0.95


@pytest.mark.slow
def test_compile_gives_the_same_logits():
    reason = compile_supported()
    if reason is not None:
        pytest.skip(f"torch.compile unsupported here: {reason}")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    x, keys = images(), list(model.state_dict())
    with torch.no_grad():
        want = model(x)
        model.compile()
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert list(model.state_dict()) == keys  # checkpoints keep their keys


def task() -> SemanticSegmentationTask:
    return SemanticSegmentationTask(
        model=small_model(),
        loss=CrossEntropyLoss(ignore_index=255),
        optimizer=functools.partial(torch.optim.SGD, lr=0.0),
        scheduler=None,
        num_classes=3,
        class_names=["a", "b", "c"],
    )


class SeesImageLayout(L.Callback):
    """Records whether each training batch reached the step as channels_last."""

    def __init__(self) -> None:
        self.layouts: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        image = batch["image"]
        self.layouts.append(image.is_contiguous(memory_format=torch.channels_last))


def test_fast_paths_callback_converts_model_and_batches():
    probe = SeesImageLayout()
    batch = {"image": images(), "mask": torch.randint(0, 3, (2, 64, 64))}
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=1,
        callbacks=[FastPaths(channels_last=True), probe],  # FastPaths runs first
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = task()
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    assert probe.layouts == [True]
    weight = module.model.model.encoder.conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_compile_fallback_warns_and_keeps_the_eager_model(monkeypatch):
    monkeypatch.setattr(speed, "compile_supported", lambda: "RuntimeError: no compiler")
    module = task()
    with pytest.warns(UserWarning, match="torch.compile is unsupported here"):
        FastPaths(compile=True).setup(L.Trainer(logger=False), module, "fit")
    assert module.model._compiled_call_impl is None


def test_fast_paths_needs_a_model_attribute():
    with pytest.raises(TypeError, match="pl_module.model"):
        FastPaths(channels_last=True).setup(L.Trainer(logger=False), L.LightningModule(), "fit")


class SeesForwards(L.Callback):
    """Records, for every forward of the trained model and of its weight average, the
    input's layout and the autocast state the step runs under."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, bool, torch.dtype]] = []

    def setup(self, trainer, pl_module, stage) -> None:
        for name, module in (("model", pl_module.model), ("ema", pl_module.ema_model.module)):
            module.register_forward_pre_hook(functools.partial(self.record, name))

    def record(self, name, module, inputs) -> None:
        (image,) = inputs
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu")
        self.calls.append(
            (name, image.is_contiguous(memory_format=torch.channels_last), autocast, dtype)
        )


def test_bf16_mixed_and_channels_last_run_together_in_training_and_validation():
    probe = SeesForwards()
    batch = {"image": images(), "mask": torch.randint(0, 3, (2, 64, 64)), "name": ["a", "b"]}
    module = SemanticSegmentationTask(
        model=small_model(),
        loss=CrossEntropyLoss(ignore_index=255),
        optimizer=functools.partial(torch.optim.SGD, lr=0.01),
        scheduler=None,
        num_classes=3,
        class_names=["a", "b", "c"],
        ema_decay=0.9,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        fast_dev_run=1,
        callbacks=[FastPaths(channels_last=True), probe],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader([batch], batch_size=None)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    # training runs the model, validation its weight average (EMA): both NHWC under bf16
    assert ("model", True, True, torch.bfloat16) in probe.calls
    assert ("ema", True, True, torch.bfloat16) in probe.calls
    assert all(call[1:] == (True, True, torch.bfloat16) for call in probe.calls), probe.calls
    ema_weight = module.ema_model.module.model.encoder.conv1.weight
    assert ema_weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(trainer.callback_metrics["val/mIoU"])


def test_bf16_on_a_cpu_without_bf16_warns_and_trains_in_float32(tmp_path, monkeypatch):
    from segkit.engine import runner

    from ..helpers import FAST, compose_job

    monkeypatch.setattr(runner, "cpu_bf16_supported", lambda: False)
    cfg = compose_job("train", tmp_path, tmp_path / "run", [*FAST, "trainer.precision=bf16-mixed"])
    with pytest.warns(UserWarning, match=r"trainer.precision=bf16-mixed: this CPU has no bfloat16"):
        trainer = runner.build_trainer(cfg)
    assert trainer.precision == "32-true"
    monkeypatch.setattr(runner, "cpu_bf16_supported", lambda: True)
    assert runner.build_trainer(cfg).precision == "bf16-mixed"
