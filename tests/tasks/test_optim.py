"""Fine-tuning controls of the semantic task: parameter groups read back from the built
optimiser, a frozen backbone, frozen BatchNorm, and the EMA of the weights (checked against
an EMA computed by hand from the raw weights after every step)."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from segkit.evaluation.metrics import ConfusionMatrix
from segkit.tasks.losses import CrossEntropyLoss
from segkit.tasks.semantic import SemanticSegmentationTask

NUM_CLASSES = 3
LR, WEIGHT_DECAY = 1e-2, 0.05


class Toy(nn.Module):
    """A model with the segkit contract: ``backbone`` (conv + BN) and a head (conv + BN + 1x1)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.GroupNorm(2, 8), nn.ReLU()
        )
        self.classifier = nn.Conv2d(8, NUM_CLASSES, 1)

    @property
    def backbone(self) -> nn.Module:
        return self.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.decoder(self.encoder(x)))


class NoBackbone(Toy):
    @property
    def backbone(self) -> None:
        return None


def batches(count: int, batch_size: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(batch_size, 3, 12, 12, generator=generator),
            "mask": torch.randint(0, NUM_CLASSES, (batch_size, 12, 12), generator=generator),
        }
        for _ in range(count)
    ]


def make_task(model: nn.Module | None = None, **options) -> SemanticSegmentationTask:
    torch.manual_seed(0)
    return SemanticSegmentationTask(
        model=model or Toy(),
        loss=CrossEntropyLoss(),
        optimizer=partial(torch.optim.AdamW, lr=LR, weight_decay=WEIGHT_DECAY),
        scheduler=None,
        num_classes=NUM_CLASSES,
        class_names=["a", "b", "c"],
        **options,
    )


def trainer(epochs: int, callbacks: list | None = None, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
        **kwargs,
    )


def loader(data: list) -> DataLoader:
    return DataLoader(data, batch_size=None)


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_parameter_groups_read_back_from_the_built_optimizer():
    task = make_task(backbone_lr_mult=0.1, head_lr_mult=2.0)
    fit = trainer(1, limit_train_batches=1, limit_val_batches=0)
    fit.fit(task, loader(batches(1)))
    optimizer = fit.optimizers[0]
    model = task.model
    backbone_ids = {id(p) for p in model.encoder.parameters()}
    # norm layers and biases by hand: encoder BN, decoder GN, conv biases
    no_decay_ids = {
        id(model.encoder[0].bias),
        id(model.encoder[1].weight),
        id(model.encoder[1].bias),
        id(model.decoder[1].weight),
        id(model.decoder[1].bias),
        id(model.classifier.bias),
    }
    seen = []
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            seen.append(id(parameter))
            in_backbone = id(parameter) in backbone_ids
            assert group["lr"] == pytest.approx(LR * (0.1 if in_backbone else 2.0))
            expected_decay = 0.0 if id(parameter) in no_decay_ids else WEIGHT_DECAY
            assert group["weight_decay"] == expected_decay
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each exactly once


def test_decay_on_every_parameter_when_the_switch_is_off():
    task = make_task(no_decay_norm_bias=False)
    fit = trainer(1, limit_train_batches=1, limit_val_batches=0)
    fit.fit(task, loader(batches(1)))
    assert {g["weight_decay"] for g in fit.optimizers[0].param_groups} == {WEIGHT_DECAY}


def test_backbone_lr_multiplier_survives_the_poly_schedule():
    from segkit.tasks.schedulers import poly_lr

    task = make_task(backbone_lr_mult=0.1)
    task.scheduler_factory = partial(poly_lr, power=1.0)
    fit = trainer(1, limit_train_batches=4, limit_val_batches=0)
    fit.fit(task, loader(batches(4)))
    rates = {g["name"]: g["lr"] for g in fit.optimizers[0].param_groups}
    # poly with power 1 after 4 of 4 steps would be 0; check the ratio on the initial rates
    initial = {g["name"]: g["initial_lr"] for g in fit.optimizers[0].param_groups}
    assert initial["backbone"] == pytest.approx(0.1 * initial["head"])
    assert initial["head"] == pytest.approx(LR)
    assert rates["backbone"] == pytest.approx(0.1 * rates["head"]) or rates["head"] == 0


class Snapshots(L.Callback):
    """The backbone's state dict at the end of every training epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, task) -> None:
        self.states.append(clone_state(task.model.encoder))


def test_frozen_backbone_is_bit_identical_then_trains_after_unfreezing():
    task = make_task(freeze_backbone_epochs=2)
    start = clone_state(task.model.encoder)
    head_start = clone_state(task.model.classifier)
    snapshots = Snapshots()
    fit = trainer(3, [snapshots], limit_train_batches=3, limit_val_batches=1)
    fit.fit(task, loader(batches(3)), loader(batches(1, seed=1)))
    after_frozen = snapshots.states[1]
    for key, value in start.items():  # weights and BN running statistics alike
        assert torch.equal(after_frozen[key], value), key
    assert not torch.equal(task.model.classifier.weight, head_start["weight"])  # head trained
    after_unfreezing = snapshots.states[2]
    assert not torch.equal(after_unfreezing["0.weight"], start["0.weight"])
    assert not torch.equal(after_unfreezing["1.running_mean"], start["1.running_mean"])
    assert all(p.requires_grad for p in task.model.parameters())


def test_freeze_bn_keeps_running_statistics_and_affine_parameters():
    task = make_task(freeze_bn=True)
    bn = task.model.encoder[1]
    start = clone_state(bn)
    conv_start = task.model.encoder[0].weight.detach().clone()
    fit = trainer(2, limit_train_batches=3, limit_val_batches=1)
    fit.fit(task, loader(batches(3)), loader(batches(1, seed=1)))
    for key, value in start.items():
        assert torch.equal(bn.state_dict()[key], value), key
    assert not torch.equal(task.model.encoder[0].weight, conv_start)  # the rest trains
    assert not bn.training and task.model.encoder[0].training is True


def test_frozen_modules_stay_fixed_in_eval_mode_and_skip_their_backward():
    task = make_task(frozen_modules=["encoder"])
    start = clone_state(task.model.encoder)
    decoder_start = task.model.decoder[0].weight.detach().clone()
    backward_calls = []
    task.model.encoder[0].register_full_backward_hook(lambda *args: backward_calls.append(1))
    fit = trainer(2, limit_train_batches=3, limit_val_batches=1)
    fit.fit(task, loader(batches(3)), loader(batches(1, seed=1)))
    for key, value in start.items():  # weights and BatchNorm running statistics
        assert torch.equal(task.model.encoder.state_dict()[key], value), key
    assert not torch.equal(task.model.decoder[0].weight, decoder_start)  # the rest trains
    assert backward_calls == []  # at the input end: no gradient is computed through it
    assert not any(m.training for m in task.model.encoder.modules())
    assert task.model.decoder.training


def test_frozen_modules_stay_frozen_when_the_backbone_is_unfrozen():
    task = make_task(frozen_modules=["encoder.1"], freeze_backbone_epochs=1)
    bn, conv = task.model.encoder[1], task.model.encoder[0]
    bn_start, conv_start = clone_state(bn), conv.weight.detach().clone()
    fit = trainer(2, limit_train_batches=3, limit_val_batches=1)
    fit.fit(task, loader(batches(3)), loader(batches(1, seed=1)))
    for key, value in bn_start.items():
        assert torch.equal(bn.state_dict()[key], value), key
    assert not torch.equal(conv.weight, conv_start)  # the backbone trained in epoch 2
    assert not bn.training and conv.training


def test_an_unknown_frozen_module_names_the_key_and_its_neighbours():
    with pytest.raises(
        ValueError, match=r"task.frozen_modules: 'encoder.5' .*encoder.0, encoder.1, encoder.2"
    ):
        make_task(frozen_modules=["encoder.5"])


class RawWeights(L.Callback):
    """The raw model's state after every optimiser step (before the task's EMA update)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        self.states.append(clone_state(task.model))


def test_ema_follows_the_definition_and_is_what_validation_scores():
    decay = 0.6
    task = make_task(ema_decay=decay)
    raw = RawWeights()
    val_data = batches(2, seed=1)
    fit = trainer(1, [raw], limit_train_batches=4)
    fit.fit(task, loader(batches(4)), loader(val_data))
    # EMA by hand: the first update copies, then ema = decay * ema + (1 - decay) * w
    expected = dict(raw.states[0])
    for state in raw.states[1:]:
        for key, value in state.items():
            if value.is_floating_point():
                expected[key] = decay * expected[key] + (1 - decay) * value
    ema = task.ema_model.module.state_dict()
    for key, value in expected.items():
        if value.is_floating_point():
            torch.testing.assert_close(ema[key], value, rtol=1e-6, atol=1e-7)
    raw_weight, ema_weight = task.model.classifier.weight, task.ema_model.module.classifier.weight
    assert not torch.equal(raw_weight, ema_weight)

    # validation's confusion matrix is the EMA model's, by hand
    def confusion(model: nn.Module) -> torch.Tensor:
        metric = ConfusionMatrix(NUM_CLASSES)
        model.eval()
        with torch.no_grad():
            for batch in val_data:
                metric.update(model(batch["image"]), batch["mask"])
        return metric.compute_confmat()

    assert torch.equal(task.confusion_matrices["val"], confusion(task.ema_model.module))
    assert not torch.equal(confusion(task.ema_model.module), confusion(task.model))
    assert "ema_model.module.classifier.weight" in task.state_dict()  # stored in checkpoints


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"freeze_backbone_epochs": 2}, "task.freeze_backbone_epochs"),
        ({"freeze_bn": True}, "task.freeze_bn"),
        ({"backbone_lr_mult": 0.1}, "task.backbone_lr_mult"),
    ],
)
def test_backbone_options_on_a_model_without_backbone_fail_at_once(options, message):
    with pytest.raises(ValueError, match=message):
        make_task(NoBackbone(), **options)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1])
def test_ema_decay_outside_the_open_unit_interval_fails(decay):
    with pytest.raises(ValueError, match=r"task.ema_decay"):
        make_task(ema_decay=decay)
