"""Reliability: atomic checkpoints, resume after SIGKILL, NaN/Inf guard, SyncBatchNorm switch.

DDP evaluation and Hydra multirun + DDP are in test_ddp.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn
from torch.utils.data import DataLoader

from segkit.engine.callbacks.guards import NonFiniteGuard, NonFiniteLossError
from segkit.engine.checkpoints import AtomicCheckpointIO, CheckpointMismatchError, resume_checkpoint
from segkit.engine.runner import build_trainer

from ..helpers import ENV, compose, load, run, train_command

# --- atomic checkpoint writes -------------------------------------------------------------


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")  # stands in for any failure in the middle of a write


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.arange(1000.0)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        # the big tensor is written before the failing object: a partial file existed
        io.save_checkpoint({"w": torch.zeros(100_000), "step": _Unpicklable()}, path)
    assert load(path)["step"] == 1 and torch.equal(load(path)["w"], torch.arange(1000.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like a plain open()


# --- which checkpoint a run resumes from ----------------------------------------------------


def _cfg(tmp_path: Path, ckpt_path=None, resume=None):
    return OmegaConf.create(
        {"ckpt_path": ckpt_path, "resume": resume, "paths": {"output_dir": str(tmp_path)}}
    )


def test_resume_auto_takes_the_newest_last_checkpoint_of_this_run(tmp_path):
    assert resume_checkpoint(_cfg(tmp_path, resume="auto")) is None  # first submission
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    files = {"last.ckpt": 100, "last-v1.ckpt": 200, "best_epoch003.ckpt": 300}
    files[".last.ckpt.x1y2.partial"] = 400  # a killed writer's temporary file
    for name, mtime in files.items():
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (mtime, mtime))
    assert resume_checkpoint(_cfg(tmp_path, resume="auto")) == str(folder / "last-v1.ckpt")
    assert resume_checkpoint(_cfg(tmp_path, ckpt_path="last")) == str(folder / "last-v1.ckpt")


def test_resume_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="hydra.run.dir"):
        resume_checkpoint(_cfg(tmp_path, ckpt_path="last"))
    with pytest.raises(FileNotFoundError, match="ckpt_path=.*nope.ckpt"):
        resume_checkpoint(_cfg(tmp_path, ckpt_path=str(tmp_path / "nope.ckpt")))
    with pytest.raises(ValueError, match="keep one"):
        resume_checkpoint(_cfg(tmp_path, ckpt_path="last", resume="auto"))
    with pytest.raises(ValueError, match="null or 'auto'"):
        resume_checkpoint(_cfg(tmp_path, resume="yes"))


def test_checkpoint_of_another_model_gives_a_mismatch_report(tmp_path):
    # a 3-class head saved; this run builds a 5-class head and has one more layer
    saved = nn.ModuleDict({"model": nn.ModuleDict({"head": nn.Conv2d(8, 3, 1)})})
    config = {"model": {"_target_": "m.unet", "arch": "Unet", "num_classes": 3}}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": saved.state_dict(), "config": config}, path)
    task = nn.ModuleDict(
        {"model": nn.ModuleDict({"head": nn.Conv2d(8, 5, 1), "aux": nn.Conv2d(8, 5, 1)})}
    )
    cfg = OmegaConf.create(
        {
            "ckpt_path": str(path),
            "resume": None,
            "paths": {"output_dir": str(tmp_path)},
            "model": {"_target_": "m.unet", "arch": "Unet", "num_classes": 5},
        }
    )
    with pytest.raises(CheckpointMismatchError) as error:
        resume_checkpoint(cfg, task)
    message = str(error.value)
    assert (
        "2 shape mismatches" in message
        and "model.head.weight: checkpoint (3, 8, 1, 1) vs model (5, 8, 1, 1)" in message
    )
    assert "2 keys missing from the checkpoint" in message and "model.aux.bias" in message
    assert "written for _target_=m.unet, arch=Unet, num_classes=3" in message
    assert "this run builds _target_=m.unet, arch=Unet, num_classes=5" in message
    # the same architecture loads without complaint
    same = nn.ModuleDict({"model": nn.ModuleDict({"head": nn.Conv2d(8, 3, 1)})})
    assert resume_checkpoint(cfg, same) == str(path)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_step_and_learning_rate(tmp_path):
    # 48 images / batch 4 = 12 steps per epoch, 2 epochs; last.ckpt every 4 steps. A warm-up
    # of 100 steps on a flat schedule never ends, so the final lr depends on the exact
    # scheduler step: lr = 1e-3 * (0.001 + 0.999 * 24 / 100) after 24 steps.
    args = [
        "data.prepare.num_train=48",
        "trainer.max_epochs=2",
        "callbacks.last_checkpoint.every_n_train_steps=4",
        "scheduler=exponential",
        "scheduler.end_factor=1.0",
        "scheduler.warmup_steps=100",
        "optimizer.lr=1e-3",
    ]
    run_dir = tmp_path / "killed"
    checkpoints = run_dir / "checkpoints"
    process = subprocess.Popen(
        train_command(tmp_path, run_dir, *args),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (checkpoints / "last.ckpt").exists():
        assert process.poll() is None, "train.py ended before writing last.ckpt"
        assert time.monotonic() < deadline, "no last.ckpt after 300 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = load(checkpoints / "last.ckpt")
    assert 0 < killed["global_step"] < 24 and killed["global_step"] % 12 != 0, "not mid-epoch"
    for path in checkpoints.glob("*.ckpt"):  # whatever the kill interrupted, no torn file
        load(path)

    output = run(train_command(tmp_path, run_dir, *args, "resume=auto"))
    assert "Restoring states from the checkpoint path" in output

    # what an uninterrupted run ends with, by hand: 24 steps, the last epoch (index 1), the
    # scheduler stepped once per optimiser step
    end = load(checkpoints / "last.ckpt")
    assert end["global_step"] == 24 and end["epoch"] == 1
    assert end["lr_schedulers"][0]["last_epoch"] == 24
    lr = end["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-3 * (0.001 + 0.999 * 24 / 100), rel=1e-12)
    assert not list(checkpoints.glob("*.partial"))
    assert len(list(checkpoints.glob("best_epoch*.ckpt"))) == 1
    for path in checkpoints.glob("*.ckpt"):
        load(path)


# --- NaN/Inf guard -----------------------------------------------------------------------


class _TinyTask(L.LightningModule):
    """Conv + BatchNorm classifier trained with plain SGD (no state besides the weights)."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
        self.lr = lr

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch["image"]), batch["mask"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _samples(names: list[str]) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    samples = []
    for name in names:
        image = torch.randn(3, 4, 4, generator=generator)
        if name.startswith("bad"):
            image[0, 0, 0] = float("nan")
        mask = torch.randint(0, 2, (4, 4), generator=generator)
        samples.append({"image": image, "mask": mask, "name": name})
    return samples


def _fit(samples: list[dict], guard: NonFiniteGuard) -> tuple[_TinyTask, L.Trainer]:
    task = _TinyTask()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[guard],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, DataLoader(samples, batch_size=2, shuffle=False))
    return task, trainer


def test_nonfinite_loss_stops_with_step_names_and_lr():
    samples = _samples(["a0", "a1", "a2", "a3", "bad4", "a5"])
    with pytest.raises(NonFiniteLossError) as error:
        _fit(samples, NonFiniteGuard())
    message = str(error.value)
    assert "batch 2," in message and "optimiser step 2 " in message
    assert "batch names: bad4, a5" in message and "learning rate: 0.1." in message


def test_nonfinite_guard_stops_before_the_weights_change():
    samples = _samples(["bad0", "a1"])
    task = _TinyTask()
    initial = {k: v.clone() for k, v in task.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, callbacks=[NonFiniteGuard()], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(NonFiniteLossError):
        trainer.fit(task, DataLoader(samples, batch_size=2))
    for key, value in task.state_dict().items():
        if key.endswith("weight") or key.endswith("bias"):
            assert torch.equal(value, initial[key]), key


def test_skip_nonfinite_equals_training_without_the_bad_batch():
    # SGD without momentum and a constant lr: skipping the bad update (and restoring the
    # BatchNorm statistics it touched) must give bit-identical weights to never seeing it.
    guard = NonFiniteGuard(skip_nonfinite=True)
    with pytest.warns(UserWarning, match="skipped the update.*bad2, bad3"):
        skipped, trainer = _fit(_samples(["a0", "a1", "bad2", "bad3", "a4", "a5"]), guard)
    assert guard.skipped_steps == 1 and trainer.global_step == 3
    assert trainer.callback_metrics["train/skipped_steps"] == 1
    assert guard.state_dict() == {"skipped_steps": 1}  # restored on resume
    clean = _samples(["a0", "a1", "bad2", "bad3", "a4", "a5"])
    clean = clean[:2] + clean[4:]
    reference, _ = _fit(clean, NonFiniteGuard())
    for key, value in reference.state_dict().items():
        assert torch.equal(skipped.state_dict()[key], value), key


def test_skip_nonfinite_leaves_every_weight_and_statistic_untouched():
    guard = NonFiniteGuard(skip_nonfinite=True)
    initial = {k: v.clone() for k, v in _TinyTask().state_dict().items()}
    with pytest.warns(UserWarning, match="skipped the update"):
        task, trainer = _fit(_samples(["bad0", "bad1", "bad2", "bad3"]), guard)
    assert guard.skipped_steps == 2 and trainer.global_step == 2
    for key, value in task.state_dict().items():
        assert torch.equal(value, initial[key]), key


# --- SyncBatchNorm switch -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "reason"), [(1, "only one process"), (2, "does not run on CPU")]
)
def test_sync_batchnorm_is_turned_off_with_a_warning(tmp_path, devices, reason):
    cfg = compose(
        tmp_path,
        ["trainer=ddp", f"trainer.devices={devices}", "trainer.accelerator=cpu", "logger=none"],
    )
    with open_dict(cfg):
        del cfg["hydra"]  # as in train.py, where the job config has no hydra node
    assert cfg.trainer.sync_batchnorm is True
    with pytest.warns(UserWarning, match=f"sync_batchnorm=true is ignored: .*{reason}"):
        trainer = build_trainer(cfg)
    assert trainer.world_size == devices
    assert trainer.strategy._layer_sync is None  # Lightning keeps the switch here


# --- determinism --------------------------------------------------------------------------


def _identical_images_datamodule(root: Path, num_workers: int):
    """4 copies of one image: any difference between samples comes from augmentation."""
    import albumentations as A
    import numpy as np
    from PIL import Image

    from segkit.data.datamodule import SegmentationDataModule
    from segkit.data.folder import FolderDataset

    for folder in ("images", "masks", "splits"):
        (root / folder).mkdir(parents=True)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for i in range(4):
        Image.fromarray(image).save(root / "images" / f"i{i}.png")
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / f"i{i}.png")
    (root / "splits" / "train.txt").write_text("i0\ni1\ni2\ni3\n")
    transform = A.Compose([A.RandomBrightnessContrast(p=1.0)])
    return SegmentationDataModule(
        dataset=partial(FolderDataset, root=str(root), num_classes=2),
        num_classes=2,
        class_names=["a", "b"],
        train_transform=transform,
        batch_size=1,
        num_workers=num_workers,
        pin_memory=False,
        persistent_workers=False,
    )


def _train_images(datamodule) -> list[torch.Tensor]:
    loader = datamodule.train_dataloader()
    return [batch["image"] for batch in loader]


def test_augmentation_follows_the_torch_seed_and_differs_per_worker(tmp_path):
    dm = _identical_images_datamodule(tmp_path / "d", num_workers=0)
    torch.manual_seed(0)
    first = _train_images(dm)
    torch.manual_seed(0)
    again = _train_images(dm)
    torch.manual_seed(1)
    other = _train_images(dm)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))

    # two workers take batches in turn (0, 1, 0, 1) whatever the shuffle; the images are
    # identical, so with one inherited generator batches 0/1 and 2/3 would be equal
    dm = _identical_images_datamodule(tmp_path / "w", num_workers=2)
    images = _train_images(dm)
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[2], images[3])


@pytest.mark.slow
def test_seeded_deterministic_runs_are_bit_identical(tmp_path):
    # The shapes train transform (flip + colour jitter) is random: both runs must draw alike.
    args = ["data.prepare.num_train=8", "trainer.max_epochs=1", "seed=7"]
    args += ["trainer.deterministic=true"]
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        run(train_command(tmp_path, run_dir, *args))
    import json

    import numpy as np

    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    for m in metrics:
        m.pop("checkpoint")
    assert metrics[0] == metrics[1]
    np.testing.assert_array_equal(*[np.load(r / "confusion_matrix.npy") for r in runs])
    weights = [load(r / "checkpoints" / "last.ckpt")["state_dict"] for r in runs]
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


# --- memory -------------------------------------------------------------------------------

_MEMORY_SCRIPT = """
import resource, sys, torch, lightning as L
from torch import nn
from segkit.tasks.losses import CrossEntropyLoss
from segkit.tasks.semantic import SemanticSegmentationTask

class Images(torch.utils.data.Dataset):  # made on the fly: the dataset itself holds nothing
    def __init__(self, n): self.n = n
    def __len__(self): return self.n
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randn(3, 128, 128, generator=g),
                "mask": torch.randint(0, 5, (128, 128), generator=g), "name": str(i)}

task = SemanticSegmentationTask(nn.Conv2d(3, 5, 1), CrossEntropyLoss(), torch.optim.SGD, None,
                                num_classes=5, class_names=list("abcde"))
trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                    enable_model_summary=False)
peaks = []
for n in (20, 20, 200):
    loader = torch.utils.data.DataLoader(Images(n), batch_size=4)
    trainer.validate(task, loader, verbose=False)
    assert int(task.confusion_matrices["val"].sum()) == n * 128 * 128
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
print("PEAKS", *peaks)
"""


@pytest.mark.slow
def test_validation_memory_does_not_grow_with_the_number_of_images():
    # Keeping the logits of 180 more images would take 180 * 5 * 128 * 128 * 4 B = 59 MB
    # (their int64 predictions 24 MB); only the 5x5 confusion matrix may accumulate.
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, env=ENV
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("PEAKS"))
    _, warm, at_20, at_200 = line.split()
    growth_mib = (int(at_200) - int(at_20)) / 1024
    assert growth_mib < 8, f"peak memory grew by {growth_mib:.1f} MiB from 20 to 200 images"
