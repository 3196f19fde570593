"""experiment=voc_fcn8s / camvid_segnet / camvid_fpn_lite0_fast / camvid_fpn_lite2 run end to
end (fast_dev_run) with shapes data swapped in, and experiment=camvid_bench builds its task for
every row of the architecture table.

The recipes' datasets are not available offline, so ``data=shapes`` replaces them and the
few recipe keys that only fit the real dataset are reset; everything else (model, loss,
optimiser, schedule) is the recipe's own.
"""

from __future__ import annotations

import math

import pytest
from omegaconf import open_dict

from benchmarks.architectures import MODELS
from segkit.engine.train import train
from segkit.tasks import build_task

from .helpers import compose

SHAPES = [
    "data=shapes",
    "data.prepare.num_train=4",
    "data.prepare.num_val=2",
    "data.prepare.num_test=2",
    "data.prepare.size=64",
    "data.batch_size=2",
    "data.eval_batch_size=2",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "data.train_transform=null",
    "debug=fast_dev_run",  # trainer.fast_dev_run=true: one batch of each split
    "trainer.accelerator=cpu",
    "logger=csv",
]

RECIPES = {
    "voc_fcn8s": ["data.train_split=train"],  # the recipe's train_aug split is VOC's
    "camvid_segnet": ["loss.class_weights=null"],  # 11 CamVid weights for 5 shapes classes
    # bf16-mixed + channels_last, frozen encoder stages, val every 5 epochs
    "camvid_fpn_lite0_fast": ["loss.class_weights=null"],
    # the same on EfficientNet-Lite2: its frozen module names must exist in that encoder too
    "camvid_fpn_lite2": ["loss.class_weights=null"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_with_fast_dev_run(name, tmp_path):
    cfg = compose(tmp_path, [f"experiment={name}", *SHAPES, *RECIPES[name]])
    assert cfg.hydra.runtime.choices.experiment == name
    with open_dict(cfg):  # a job's config has no hydra node (HydraConfig holds it)
        del cfg["hydra"]
    value = train(cfg)["optimized"]
    assert value is not None and math.isfinite(value)
    assert (tmp_path / "run" / "metrics.json").is_file()


# The architecture table's rows (benchmarks.architectures.MODELS, less the classic U-Net, which
# RESULTS.md leaves out for its cost) with the overrides each row's command adds to
# ``experiment=camvid_bench model=<name>`` (RESULTS.md, "CamVid architecture table").
BENCH_ROWS = {name: [] for name in MODELS if name != "unet"} | {
    # no pretrained encoder: the protocol's encoder lr multiplier has nothing to act on
    "segnet_basic": ["task.backbone_lr_mult=1.0"],
}


@pytest.mark.parametrize("name", sorted(BENCH_ROWS))
def test_every_architecture_row_builds_under_the_protocol(name, tmp_path):
    """The protocol's task (model, loss, optimiser, EMA) builds for each row's command, so a
    row cannot fail at start-up hours into a queue of runs, as segnet_basic once did."""
    overrides = ["experiment=camvid_bench", f"model={name}", *BENCH_ROWS[name]]
    # random encoders (nothing to load) and no class weights (they are computed from the data)
    offline = ["model.encoder_weights=null", "loss.class_weights=null"]
    task = build_task(compose(tmp_path, [*overrides, *offline]))
    assert task.ema_model is not None  # the protocol scores an EMA of the weights
    # the encoder at a tenth of the lr where there is one, every parameter at the full lr else
    multipliers = {group["lr_mult"] for group in task.optimizer_groups()}
    full_lr_only = "task.backbone_lr_mult=1.0" in BENCH_ROWS[name]
    assert multipliers == ({1.0} if full_lr_only else {0.1, 1.0})
