"""The start-up checks of conf/ values: segkit/config_values.py's table (check_values) and
segkit/config.py's unknown-key check (check_arguments).

* every shipped config, with every option of every group (and eval/predict/export), passes
  both checks as shipped, and every one of its keys has a rule or a stated value;
* every rule, at its edges written by hand below: the edge value passes, a value just past
  it fails with a line that names the key;
* the sets the table copies from code elsewhere equal that code;
* an unknown key of the trainer, a callback, a logger, the data module, a dataset or the
  inference stops with the valid keys listed.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import time
import typing

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from segkit.config import CONF_DIR, ConfigError, check_arguments, compose
from segkit.config_values import (
    CHECKED_WHEN_BUILT,
    FREE,
    RULES,
    Context,
    _Skip,
    check_values,
    entries,
    key_pattern,
    matches,
    violations,
)

FOLDER = ["data.dataset.root=/x", "data.num_classes=3", "data.class_names=[a,b,c]"]
SKIPPED_GROUPS = {"hydra", "paths"}  # Hydra's own settings; paths only names folders


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in SKIPPED_GROUPS)
CASES = [
    ("train", [f"{g}={o}", *(FOLDER if o == "folder" else [])]) for g in GROUPS for o in _options(g)
]
CASES += [
    ("eval", ["ckpt_path=x"]),
    ("eval", ["ckpt_path=[a,b]", "ckpt_weights=[2,1]", "inference=slide", "data=camvid"]),
    ("predict", ["ckpt_path=x", "input=y", "output=z"]),
    ("predict", ["ckpt_path=x", "input=y", "output=z", "inference=multiscale"]),
    ("export", ["ckpt_path=x"]),
    ("train", ["experiment=isbi2012_unet", "debug=limit"]),  # debug=limit validates each epoch
]
IDS = [f"{name}:{' '.join(o)}" for name, o in CASES]


@functools.cache
def composed(name: str, overrides: tuple[str, ...]) -> DictConfig:
    return compose(list(overrides), config_name=name)


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
def test_shipped_config_passes_both_checks(name, overrides):
    cfg = composed(name, tuple(overrides))
    assert violations(cfg) == []
    check_values(cfg)
    check_arguments(cfg)


def test_every_key_of_every_shipped_config_has_a_rule_or_a_stated_value():
    keys = [rule.key for rule in RULES] + list(FREE) + list(CHECKED_WHEN_BUILT)
    known = re.compile("|".join(key_pattern(key).pattern for key in keys))
    uncovered = set()
    for name, overrides in CASES:
        for path, value in entries(composed(name, tuple(overrides))):
            if isinstance(value, DictConfig) or (
                isinstance(value, ListConfig) and any(isinstance(v, DictConfig) for v in value)
            ):
                continue  # a node: its keys are checked
            parts = path.split(".")
            prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
            if not any(known.fullmatch(f".{prefix}") for prefix in prefixes):
                uncovered.add(path)
    assert not uncovered, sorted(uncovered)


def test_a_wrong_value_is_caught_before_anything_is_built_and_every_one_is_listed():
    # the example: optimizer.lr=0 trained, chose a "best" checkpoint and reported
    cfg = compose(["optimizer.lr=0", "trainer.max_epochs=0", "data=camvid",
                   "callbacks.model_checkpoint.mode=min", "loss.class_weights=[1,2]",
                   "data.train_transform.transforms.1.fill_mask=0"])  # fmt: skip
    with pytest.raises(ConfigError) as error:
        check_values(cfg)
    lines = str(error.value).splitlines()
    assert lines[0] == "5 config values cannot work:"
    assert "  optimizer.lr=0: a number in (0, 1] (0 moves no weight; above 1 the updates " \
        "diverge); e.g. optimizer.lr=0.001" in lines  # fmt: skip
    for key in (
        "trainer.max_epochs=0",
        "callbacks.model_checkpoint.mode=min",
        "loss.class_weights=[1,2]",
        "data.train_transform.transforms.1.fill_mask=0",
    ):
        assert any(line.startswith(f"  {key}: ") for line in lines), key
    fill = next(line for line in lines if "fill_mask" in line)
    assert fill.endswith("e.g. data.train_transform.transforms.1.fill_mask=255")
    assert "11 numbers" in next(line for line in lines if "class_weights" in line)
    # one wrong value: one line
    with pytest.raises(ConfigError, match=r"^seed=-1: null or an integer in \[0, 4294967295\]"):
        check_values(compose(["seed=-1"]))


def test_values_still_to_be_given_are_named():
    cfg = compose(["data=folder", "data.dataset.root=/x"])
    message = "\n".join(violations(cfg))
    assert "data.num_classes=???: an integer >= 2" in message
    assert "data.class_names=???" in message


def test_eval_predict_and_export_values():
    cfg = composed("predict", ("ckpt_path=x", "input=y", "output=z"))
    with pytest.raises(ConfigError) as error:
        check_values(OmegaConf.merge(cfg, {"overlay_alpha": 1.5, "backend": "fast",
                                           "format": "onnx", "device": "gpu"}))  # fmt: skip
    for key in ("overlay_alpha=1.5", "backend=fast", "format=onnx", "device=gpu"):
        assert f"\n  {key}: " in str(error.value), key
    cfg = composed("export", ("ckpt_path=x",))
    assert [line.split(":")[0] for line in violations(OmegaConf.merge(
        cfg, {"format": "palette", "returns": "probabilities"}))] == [
        "format=palette", "returns=probabilities"]  # fmt: skip
    cfg = composed("eval", ("ckpt_path=x",))
    assert violations(OmegaConf.merge(cfg, {"trainer": {"devices": 2}, "split": "train"})) == [
        "split=train: val or test (eval.py scores data.val_split or test_split); e.g. split=val",
        "trainer.devices=2: only 1 (one process writes the report); e.g. trainer.devices=1",
    ]


def test_check_values_reads_only_the_config(tmp_path):
    """It imports neither torch nor Lightning, and takes milliseconds."""
    cfg = compose(["paths.output_dir=/run", "trainer=ddp", "scheduler=plateau",
                   "callbacks=[default,early_stopping]"])  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    code = (
        "import sys, time; from omegaconf import OmegaConf; "
        "from segkit.config_values import check_values; "
        f"cfg = OmegaConf.load({str(path)!r}); start = time.perf_counter(); check_values(cfg); "
        "print(time.perf_counter() - start, 'torch' in sys.modules, 'lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, torch_loaded, lightning_loaded = out.stdout.split()
    assert (torch_loaded, lightning_loaded) == ("False", "False")
    assert float(seconds) < 0.5
    start = time.perf_counter()
    check_arguments(cfg)
    assert time.perf_counter() - start < 0.5


# --- every rule at its edges ----------------------------------------------------------------
# (key, values that pass, values just past the edge that fail, the other keys the rule reads).
# Written here, not taken from segkit/config_values.py.

SEMANTIC = {"task._target_": "segkit.tasks.semantic.SemanticSegmentationTask",
            "data.class_names": ["a", "b"], "data.num_classes": 2}  # fmt: skip
PREDICT = {"backend": "auto", "device": "cpu"}
EXPORT = {"returns": "logits"}
EVAL = {"split": "val"}
CE_DICE = {"loss.losses.ce.smooth": 1.0, "loss.losses.dice.smooth": 1.0}
BOOLS = ([True, False], ["true", 1, None])

# fmt: off
EDGES: list[tuple[str, list, list, dict]] = [
    # run
    ("seed", [None, 0, 2**32 - 1], [-1, 2**32, 1.5, "42"], {}),
    ("train", *BOOLS, {}),
    ("test", *BOOLS, {}),
    ("overwrite", *BOOLS, {}),
    ("resume", [None, "auto"], ["last", "Auto", True], {}),
    ("resume", [None], ["auto"], {"ckpt_path": "a.ckpt"}),
    ("optimized_metric", ["val/mIoU", "val/loss", "val/IoU/b", "train/loss_epoch"],
     ["val/miou", "val/IoU/c", "test/mIoU", "val/mask_AP"], SEMANTIC),
    ("optimized_metric", ["val/rand_error"], ["val/iIoU_class"],
     {**SEMANTIC, "task.membrane_class": 0}),
    ("optimized_metric", ["val/iIoU_class"], ["val/rand_error"],
     {**SEMANTIC, "data.dataset._target_": "segkit.data.cityscapes.CityscapesDataset"}),
    ("optimized_metric", ["val/mask_AP", "val/box_APl", "val/mask_AP/b", "val/mIoU"],
     ["val/loss", "val/mask_AP/c", "val/IoU/a"],
     {**SEMANTIC, "task._target_": "segkit.tasks.instance.InstanceSegmentationTask"}),
    ("ckpt_weights", [None, [1e-9, 2]], [[1], [0, 1], [-1, 1], [1, 1, 1]],
     {"ckpt_path": ["a", "b"]}),
    ("ckpt_weights", [[3]], [[1, 1]], {"ckpt_path": "a.ckpt"}),
    ("split", ["val", "test"], ["train", "Val"], {}),
    ("accelerator", ["auto", "cpu", "gpu", "cuda", "mps", "tpu"], ["cuda:0", "GPU"], {}),
    ("precision", ["32-true", "bf16-mixed", "16-mixed", 16, "16", "bf16"],
     ["32-mixed", 8, "fp16", 16.0], {}),
    ("format", ["palette", "cityscapes"], ["png", "onnx"], PREDICT),
    ("device", ["cpu", "cuda", "cuda:1", "mps"], ["gpu", "cuda:", "CPU", 0], PREDICT),
    ("backend", ["auto", "eager", "channels_last", "compile", "onnxruntime"], ["tensorrt"],
     PREDICT),
    ("backend", ["eager"], ["onnxruntime"], {**PREDICT, "device": "cuda"}),
    ("overlay_alpha", [0, 0.5, 1], [-0.01, 1.01], PREDICT),
    ("format", ["onnx", "torchscript"], ["tflite", "palette"], EXPORT),
    ("dynamic", *BOOLS, EXPORT),
    ("returns", ["logits", "labels"], ["probabilities"], {}),
    ("input_size", [None, [1, 1]], [[0, 10], [360], [360.0, 480]], EXPORT),
    # data
    ("data.num_classes", [2, 1000], [1, 0, 2.0], {}),
    ("data.class_names", [["a", "b"]], [["a", "a"], ["a", 1], "ab"], {}),
    ("data.ignore_index", [0, 255, 65535], [-1, 65536, 255.0], {}),
    ("data.palette", [None, [[0, 0, 0], [255, 255, 255]]], [[[0, 0, 256]], [[0, 0]], [[-1, 0, 0]]],
     {}),
    ("data.crop_size", [None, [1, 1]], [[0, 1], [512], 512, [512.0, 512]], {}),
    ("data.batch_size", [1], [0, None], {}),
    ("data.eval_batch_size", [None, 1], [0], {}),
    ("data.num_workers", [0], [-1], {}),
    ("data.pin_memory", *BOOLS, {}),
    ("data.persistent_workers", *BOOLS, {}),
    ("data.check_labels", *BOOLS, {}),
    ("data.prepare.num_train", [1], [0], {}),
    ("data.prepare.num_val", [1], [0], {}),
    ("data.prepare.num_test", [1], [0], {}),
    ("data.prepare.size", [16], [15], {}),
    ("data.prepare.seed", [0, 2**32 - 1], [-1, 2**32], {}),
    ("data.dataset.num_classes", [5], [4], {"data.num_classes": 5}),
    ("data.dataset.class_names", [["a", "b"]], [["b", "a"]], {"data.class_names": ["a", "b"]}),
    ("data.dataset.ignore_index", [255], [0], {"data.ignore_index": 255}),
    ("data.dataset.mean", [[0.5]], [[0.4]], {"data.mean": [0.5]}),
    ("data.dataset.std", [[0.5]], [[0.25]], {"data.std": [0.5]}),
    ("data.dataset.reduce_zero_label", *BOOLS, {}),
    ("data.dataset.label_map", [None, {0: 0, 65535: 2}, {255: 255}],
     [{65536: 1}, {255: 3}, {-1: 0}, {1: -1}, [1, 2]],
     {"data.num_classes": 3, "data.ignore_index": 255}),
    ("data.dataset.decoded_cache", *BOOLS, {}),
    ("data.dataset.startup_check", [0], [-1], {}),
    ("data.train_transform.transforms.1.fill_mask", [255], [0, 254], {"data.ignore_index": 255}),
    ("data.eval_transform.transforms.0.fill_mask", [255], [0], {"data.ignore_index": 255}),
    ("data.train_transform.transforms.1.size", [[1, 1]], [None, [0, 1], [16]], {}),
    ("data.train_transform.transforms.0.p", [0, 1], [-0.1, 1.5], {}),
    ("data.eval_transform.transforms.0.p", [0, 1], [-0.1, 1.5], {}),
    ("data.train_transform.transforms.1.height", [1], [0], {}),
    ("data.train_transform.transforms.1.width", [1], [0], {}),
    ("data.eval_transform.transforms.0.height", [1], [0], {}),
    ("data.eval_transform.transforms.0.width", [1], [0], {}),
    # model
    ("model.num_classes", [5], [4], {"data.num_classes": 5}),
    ("model.in_channels", [3], [1], {"data.in_channels": 3}),
    ("model.norm", [None, "batch", "group", "frozen_batch"], ["layer", "Batch"], {}),
    ("model.norm_groups", [1], [0], {}),
    ("model.output_stride", [8, 16, 32], [4, 64, "16"], {}),
    ("model.atrous_rates", [{8: [1, 2, 3], 16: [6, 12, 18]}],
     [{16: [6, 12, 18]}, {8: [0, 1, 2]}, {8: [1, 2]}], {"model.output_stride": 8}),
    ("model.aux_head", *BOOLS, {}),
    ("model.dropout", [0, 0.99], [1, -0.1], {}),
    ("model.skip", ["8s", "16s", "32s"], ["4s", 8], {}),
    ("model.inter_channels", [1], [0], {}),
    ("model.bn_momentum", [1e-6, 1], [0, 1.1], {}),
    ("model.bins", [[1]], [[], [0, 1]], {}),
    ("model.channels", [1], [0], {}),
    ("model.arch", ["FPN", "unet", "UPerNet", "DeepLabV3Plus"], ["UNet3", "fpn2"], {}),
    ("model.decoder", [None, {}], [[256], 5], {}),
    ("model.decoder.decoder_pyramid_channels", [1, 256], [0, -32, 1.5], {}),
    ("model.decoder.decoder_segmentation_channels", [32, 64], [0, 48, 31], {"model.arch": "FPN"}),
    ("model.decoder.decoder_segmentation_channels", [1, 48], [0], {"model.arch": "Segformer"}),
    ("model.decoder.decoder_channels", [[16], [256, 128, 64, 32, 16]], [[], [0], 256],
     {"model.arch": "Unet"}),
    ("model.decoder.decoder_channels", [1, 256], [0, [256]], {"model.arch": "UPerNet"}),
    ("model.decoder.psp_out_channels", [1, 512], [0], {}),
    ("model.weights_strict", *BOOLS, {}),
    ("model.variant", ["v1", "v2"], ["v3"], {}),
    ("model.trainable_layers", [0, 5], [-1, 6], {}),
    ("model.min_size", [1], [0], {}),
    ("model.max_size", [1], [0], {}),
    ("model.max_size", [64], [63], {"model.min_size": 64}),
    ("model.fpn_channels", [1], [0], {}),
    ("model.anchor_sizes", [[1, 2, 3, 4, 5]], [[1, 2, 3, 4], [0, 2, 3, 4, 5]], {}),
    ("model.box_roi_output_size", [1], [0], {}),
    ("model.mask_roi_output_size", [1], [0], {}),
    ("model.roi_sampling_ratio", [0], [-1], {}),
    ("model.mask_head_layers", [[1]], [[], [0]], {}),
    ("model.mask_head_dilation", [1], [0], {}),
    ("model.box_head_width", [1], [0], {}),
    ("model.rpn_proposals_train", [1], [0], {}),
    ("model.rpn_proposals_test", [1], [0], {}),
    ("model.box_batch_size_per_image", [1], [0], {}),
    ("model.box_score_threshold", [0, 1], [-0.01, 1.01], {}),
    ("model.box_detections_per_img", [1], [0], {}),
    # loss
    ("loss.losses.ce.ignore_index", [255], [254], {"data.ignore_index": 255}),
    ("loss.class_weights", [None, "median_frequency", "inverse_frequency", [0, 1]],
     ["median", [1], [0, 0], [-1, 2]], {"data.num_classes": 2}),
    ("loss.label_smoothing", [0, 0.999], [1.0, -0.1], {}),
    ("loss.gamma", [0], [-0.1], {}),
    ("loss.smooth", [0], [-1e-6], {}),
    ("loss.per_image", *BOOLS, {}),
    ("loss.absent", ["include", "exclude"], ["ignore"], {}),
    ("loss.thresh", [None, 1e-6, 1], [0, 1.1], {}),
    ("loss.min_kept", [0], [-1, 0.5], {}),
    ("loss.min_kept", [1], [0], {"loss.thresh": None}),
    ("loss.weights.ce", [0, 2.5], [-1e-9, float("-inf")], CE_DICE),
    ("loss.weights.dice", [1.0], [], CE_DICE),
    ("loss.weights.cee", [], [1.0], CE_DICE),
    # optimizer
    ("optimizer.lr", [1e-12, 1], [0, -1e-3, 1.0001], {}),
    ("optimizer.weight_decay", [0], [-1e-9], {}),
    ("optimizer.weight_decay", [9.99], [10], {"optimizer.lr": 0.1}),
    ("optimizer.momentum", [0, 0.999], [1, -0.1], {}),
    ("optimizer.dampening", [0], [1], {}),
    ("optimizer.nesterov", *BOOLS, {"optimizer.momentum": 0.9}),
    ("optimizer.nesterov", [False], [True], {"optimizer.momentum": 0}),
    ("optimizer.betas", [[0, 0.999]], [[0.9, 1.0], [0.9], [-0.1, 0.9]], {}),
    ("optimizer.eps", [1e-30], [0], {}),
    ("optimizer.amsgrad", *BOOLS, {}),
    # scheduler
    ("scheduler.warmup_steps", [0], [-1, 1.5], {}),
    ("scheduler.warmup_factor", [0, 1], [-0.1, 1.1], {}),
    ("scheduler.power", [1e-9], [0], {}),
    ("scheduler.min_lr", [0], [-1e-9], {}),
    ("scheduler.min_lr", [0.001], [0.0011], {"optimizer.lr": 0.01, "task.backbone_lr_mult": 0.1}),
    ("scheduler.restarts", [0], [-1], {}),
    ("scheduler.cycle_mult", [1e-9], [0], {}),
    ("scheduler.end_factor", [1e-9, 1], [0, 1.1], {}),
    ("scheduler.milestones", [[0.1, 0.9]], [[0.5, 0.5], [0, 0.5], [0.5, 1.0], []], {}),
    ("scheduler.gamma", [1e-9, 1], [0, 1.01], {}),
    ("scheduler.monitor", ["val/mIoU"], ["val/miou"], SEMANTIC),
    ("scheduler.mode", ["min", "max"], ["maximum"], {}),
    ("scheduler.mode", ["min"], ["max"], {"scheduler.monitor": "val/loss"}),
    ("scheduler.factor", [1e-9, 0.999], [0, 1], {}),
    ("scheduler.patience", [0], [-1], {}),
    ("scheduler.threshold", [0], [-1e-9], {}),
    # task
    ("task.num_classes", [5], [4], {"data.num_classes": 5}),
    ("task.class_names", [["a", "b"]], [["a"]], {"data.class_names": ["a", "b"]}),
    ("task.ignore_index", [255], [0], {"data.ignore_index": 255}),
    ("task.aux_weight", [0], [-0.1], {}),
    ("task.backbone_lr_mult", [0], [-0.1], {}),
    ("task.head_lr_mult", [1e-9], [0], {}),
    ("task.no_decay_norm_bias", *BOOLS, {}),
    ("task.freeze_backbone_epochs", [0], [-1], {}),
    ("task.freeze_bn", *BOOLS, {}),
    ("task.frozen_modules", [[], ["model.encoder.conv1"]], [["a", "a"], "a", [1]], {}),
    ("task.ema_decay", [None, 0, 0.9999], [1, -0.1], {}),
    ("task.membrane_class", [None, 0, 1], [2, -1], {"data.num_classes": 2}),
    ("task.score_threshold", [0, 1], [-0.1, 1.1], {}),
    ("task.mask_threshold", [0, 1], [-0.1, 1.1], {}),
    # inference
    ("task.inference.scales", [[1e-3], [0.5, 1.0]], [[], [0], [-1]], {}),
    ("task.inference.flip", *BOOLS, {}),
    ("task.inference.crop_size", [None, [1, 1], 1], [[0, 1], 0, [1, 2, 3]], {}),
    ("task.inference.stride", [None, [1, 1], 1], [[0, 1]],
     {"task.inference.crop_size": [512, 512]}),
    ("task.inference.stride", [[4, 6]], [[5, 6], [4, 7]], {"task.inference.crop_size": [4, 6]}),
    ("task.inference.stride", [None], [[1, 1]], {"task.inference.crop_size": None}),
    ("task.inference.window_batch", [None, 1], [0], {}),
    # trainer
    ("trainer.accelerator", ["auto", "cpu", "gpu", "cuda", "mps", "tpu"], ["cuda:0", "GPU"], {}),
    ("trainer.strategy", ["auto", "ddp", "ddp_find_unused_parameters_true", "fsdp",
                          "deepspeed_stage_3_offload", "single_device"], ["dpp", "ddp2"], {}),
    ("trainer.devices", [1, -1, "auto", [0], "0,1", "2"], [0, -2, [], "gpu"], {}),
    ("trainer.devices", [1], [2], EVAL),
    ("trainer.num_nodes", [1], [0], {}),
    ("trainer.precision", ["32-true", "bf16-mixed", 16], ["32-mixed", 8], {}),
    ("trainer.max_epochs", [1], [0, -2, None, -1], {}),
    ("trainer.max_epochs", [-1, None], [0], {"trainer.max_steps": 10}),
    ("trainer.max_epochs", [-1], [0], {"trainer.max_time": "00:01:00:00"}),
    ("trainer.min_epochs", [None, 0], [-1], {}),
    ("trainer.max_steps", [-1, 1], [0, -2], {}),
    ("trainer.min_steps", [None, 0], [-1], {}),
    ("trainer.max_time", [None, "00:12:00:00", {"hours": 1}], ["12h", "1:2:3"], {}),
    ("trainer.limit_train_batches", [None, 1e-9, 1.0, 1], [0, 0.0, 1.5, -1], {}),
    ("trainer.limit_val_batches", [None, 1e-9, 1.0, 1], [0, 0.0, 1.5], {}),
    ("trainer.limit_test_batches", [None, 1.0, 1], [0, 1.5], {}),
    ("trainer.limit_predict_batches", [None, 1.0, 1], [0, 1.5], {}),
    ("trainer.overfit_batches", [0, 0.0, 1.0, 1], [-1, 1.5, None], {}),
    ("trainer.val_check_interval", [None, 0.5, 1.0, 1], [0, 1.5], {}),
    ("trainer.check_val_every_n_epoch", [1], [0, None], {}),
    ("trainer.check_val_every_n_epoch", [None], [0], {"trainer.val_check_interval": 100}),
    ("trainer.check_val_every_n_epoch", [5, 2, 10], [3, 20], {"trainer.max_epochs": 10}),
    ("trainer.num_sanity_val_steps", [-1], [-2], {}),
    ("trainer.log_every_n_steps", [0], [-1], {}),
    ("trainer.accumulate_grad_batches", [1], [0], {}),
    ("trainer.gradient_clip_val", [None, 0], [-0.1], {}),
    ("trainer.gradient_clip_algorithm", [None, "norm", "value"], ["l2"], {}),
    ("trainer.deterministic", [True, False, "warn", None], ["yes"], {}),
    ("trainer.benchmark", [True, False, None], ["auto"], {}),
    ("trainer.fast_dev_run", [True, False, 0, 5], [-1, "true"], {}),
    ("trainer.enable_checkpointing", *BOOLS, {}),
    ("trainer.enable_progress_bar", *BOOLS, {}),
    ("trainer.enable_model_summary", *BOOLS, {}),
    ("trainer.inference_mode", *BOOLS, {}),
    ("trainer.detect_anomaly", *BOOLS, {}),
    ("trainer.barebones", *BOOLS, {}),
    ("trainer.use_distributed_sampler", *BOOLS, {}),
    ("trainer.sync_batchnorm", *BOOLS, {}),
    ("trainer.reload_dataloaders_every_n_epochs", [0], [-1], {}),
    ("trainer.profiler", [None, "simple", {"_target_": "x.Profiler"}], ["fast"], {}),
    # callbacks
    ("callbacks.model_checkpoint.monitor", [None, "val/mIoU"], ["val/miou"], SEMANTIC),
    ("callbacks.early_stopping.mode", ["min", "max"], ["maximum"], {}),
    ("callbacks.early_stopping.mode", ["max"], ["min"],
     {"callbacks.early_stopping.monitor": "val/mIoU"}),
    ("callbacks.model_checkpoint.mode", ["min"], ["max"],
     {"callbacks.model_checkpoint.monitor": "val/rand_error"}),
    ("callbacks.model_checkpoint.save_top_k", [-1, 1], [0, -2], {}),
    ("callbacks.model_checkpoint.save_last", [True, False, "link", None], ["always"], {}),
    ("callbacks.model_checkpoint.auto_insert_metric_name", *BOOLS, {}),
    ("callbacks.last_checkpoint.every_n_train_steps", [None, 0], [-1], {}),
    ("callbacks.last_checkpoint.save_on_signal", *BOOLS, {}),
    ("callbacks.nonfinite_guard.skip_nonfinite", *BOOLS, {}),
    ("callbacks.learning_rate_monitor.logging_interval", ["step", "epoch", None], ["batch"], {}),
    ("callbacks.validation_figures.every_n_epochs", [None, 0], [-1], {}),
    ("callbacks.validation_figures.num_images", [0], [-1], {}),
    ("callbacks.validation_figures.max_size", [None, 1], [0], {}),
    ("callbacks.validation_figures.palette", [None, [[0, 0, 0]]], [[[0, 0, 256]]], {}),
    ("callbacks.early_stopping.patience", [1], [0], {}),
    ("callbacks.early_stopping.min_delta", [0], [-1e-9], {}),
    ("callbacks.early_stopping.check_finite", *BOOLS, {}),
    ("callbacks.fast_paths.channels_last", *BOOLS, {}),
    ("callbacks.fast_paths.compile", *BOOLS, {}),
    ("callbacks.early_stopping.verbose", *BOOLS, {}),
    # logger
    ("logger.wandb.offline", *BOOLS, {}),
    ("logger.wandb.log_model", [True, False, "all"], ["some"], {}),
    ("logger.mlflow.required", *BOOLS, {}),
    ("logger.csv.flush_logs_every_n_steps", [1], [0], {}),
]
# fmt: on


def config_with(path: str, value, context: dict) -> DictConfig:
    cfg = OmegaConf.create({})
    for key, given in {**context, path: value}.items():
        OmegaConf.update(cfg, key, given, force_add=True)
    return cfg


@pytest.mark.parametrize(
    ("path", "good", "bad", "context"), EDGES, ids=[f"{e[0]}-{i}" for i, e in enumerate(EDGES)]
)
def test_rule_edges(path, good, bad, context):
    """The values at the edge pass; those just past it fail, each with lines naming the key."""
    for value in good:
        assert violations(config_with(path, value, context)) == [], value
    for value in bad:
        found = violations(config_with(path, value, context))
        assert found and all(line.startswith(f"{path}=") for line in found), (value, found)


def test_every_rule_has_edges_that_it_decides():
    """Each rule of the table is met by an edge case above that it passes and one it fails,
    and each case is met by a rule."""
    assert all(any(matches(rule.key, edge[0]) for rule in RULES) for edge in EDGES)
    undecided = []
    for rule in RULES:
        passes = fails = False
        for path, good, bad, context in EDGES:
            if not matches(rule.key, path):
                continue
            for values, valid in ((good, True), (bad, False)):
                for value in values:
                    cfg = config_with(path, value, context)
                    try:
                        ok = rule.check.test(OmegaConf.select(cfg, path), Context(cfg, path))
                    except _Skip:
                        continue
                    passes |= ok and valid
                    fails |= not ok and not valid
        if not (passes and fails):
            undecided.append(rule.key)
    assert not undecided, undecided


def test_free_and_built_keys_have_no_rule():
    for key in [*FREE, *CHECKED_WHEN_BUILT]:
        assert not any(rule.key == key for rule in RULES), key


# --- the sets the table copies from code elsewhere -----------------------------------------


def test_copied_sets_equal_their_source():
    import lightning.fabric.connector as connector
    import segmentation_models_pytorch as smp
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    from segkit import config_values as values
    from segkit.deploy.backends import BACKENDS
    from segkit.deploy.export import FORMATS
    from segkit.deploy.graph import RETURNS
    from segkit.engine.predict import output_format
    from segkit.engine.sweeps import logged_metric_names
    from segkit.models.blocks import NORMS
    from segkit.models.fcn import SKIPS
    from segkit.models.maskrcnn import VARIANTS
    from segkit.tasks.base import HEADLINE_KEYS
    from segkit.tasks.class_weights import CHOICES
    from segkit.tasks.instance import AP_KEYS, IOU_TYPES

    assert values.NORMS == NORMS and set(values.FCN_SKIPS) == set(SKIPS)
    assert values.MASKRCNN_VARIANTS == VARIANTS and values.CLASS_WEIGHT_NAMES == CHOICES
    assert {a.lower() for a in values.SMP_ARCHS} == set(smp.MODEL_ARCHITECTURES_MAPPING)
    assert values.BACKENDS == BACKENDS and values.EXPORT_FORMATS == FORMATS
    assert values.EXPORT_RETURNS == RETURNS and values.HEADLINE_KEYS == HEADLINE_KEYS
    assert values.AP_NAMES == tuple(AP_KEYS.values())
    assert values.AP_TYPES == tuple(IOU_TYPES.values())
    for name in values.PREDICT_FORMATS:
        assert output_format(OmegaConf.create({"format": name})) == name
    with pytest.raises(Exception, match="format=png is not known"):
        output_format(OmegaConf.create({"format": "png"}))
    lightning_precisions = {v for part in typing.get_args(connector._PRECISION_INPUT)
                            for v in typing.get_args(part)}  # fmt: skip
    assert set(values.PRECISIONS) == lightning_precisions
    assert set(AcceleratorRegistry.available_accelerators()) <= set(values.ACCELERATORS)
    strategy = next(rule for rule in RULES if rule.key == "trainer.strategy").check
    for name in StrategyRegistry.available_strategies():
        assert strategy.test(name, None), name
    # what the sweeps check is logged, by the table's account too
    cfg = compose(["data=camvid"])
    assert set(logged_metric_names(list(cfg.data.class_names))) <= set(values.logged_metrics(cfg))


# --- unknown keys (check_arguments) --------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "named", "listed"),
    [
        ("+trainer.max_epoch=3", "trainer.max_epoch is not an argument of lightning.Trainer",
         "trainer.max_epochs"),
        ("+callbacks.model_checkpoint.monitr=x", "callbacks.model_checkpoint.monitr is not an "
         "argument of lightning.pytorch.callbacks.ModelCheckpoint", "model_checkpoint.monitor"),
        ("+callbacks.last_checkpoint.every_n_steps=5", "callbacks.last_checkpoint.every_n_steps",
         "callbacks.last_checkpoint.every_n_train_steps"),
        ("+logger.csv.nam=x", "logger.csv.nam is not an argument of "
         "segkit.engine.loggers.CSVLogger", "logger.csv.name"),
        ("+data.batchsize=4", "data.batchsize is not an argument of "
         "segkit.data.datamodule.SegmentationDataModule", "data.batch_size"),
        ("+data.dataset.decoded_cach=true", "data.dataset.decoded_cach is not an argument of "
         "segkit.data.folder.FolderDataset", "data.dataset.decoded_cache"),
        ("+data.prepare.num_trains=4", "data.prepare.num_trains", "data.prepare.num_train"),
        ("+loss.losses.ce.smoothing=0.1", "loss.losses.ce.smoothing is not an argument of "
         "segkit.tasks.losses.CrossEntropyLoss", "loss.losses.ce.label_smoothing"),
        ("+task.inference.scale=[1]", "task.inference.scale is not an argument of "
         "segkit.evaluation.inference.Inference", "task.inference.scales"),
    ],
)  # fmt: skip
def test_unknown_key_names_the_valid_keys(override, named, listed):
    extra = {"loss.losses": ["loss=ce_dice"], "task.inference": ["inference=slide"]}
    base = next((v for k, v in extra.items() if override[1:].startswith(k)), [])
    with pytest.raises(ConfigError) as error:
        check_arguments(compose([*base, override]))
    message = str(error.value)
    assert named in message and listed in message and "Fix the name (e.g." in message


def test_key_an_experiment_set_for_a_replaced_group_is_named_with_its_delete_override():
    """experiment=camvid_fpn_lite0 sets loss.class_weights for CrossEntropyLoss; loss=ce_lovasz
    replaces the loss by WeightedSumLoss, which takes no class_weights: the message says how
    to delete the key, since there is no '+' to drop."""
    with pytest.raises(ConfigError) as error:
        check_arguments(compose(["experiment=camvid_fpn_lite0", "loss=ce_lovasz"]))
    message = str(error.value)
    assert message.startswith("loss.class_weights is not an argument of "
                              "segkit.tasks.losses.WeightedSumLoss")  # fmt: skip
    assert "'~loss.class_weights'" in message
    check_arguments(compose(["experiment=camvid_fpn_lite0", "loss=ce_lovasz",
                             "~loss.class_weights"]))  # fmt: skip


def test_dataset_options_passed_to_the_base_class_are_checked():
    """CamVidDataset takes **options and passes them on to FolderDataset: those count, the
    ones CamVid sets itself (its label_map) do not, and a typo is named."""
    check_arguments(compose(["data=camvid", "+data.dataset.startup_check=0"]))
    with pytest.raises(ConfigError) as error:
        check_arguments(compose(["data=camvid", "+data.dataset.label_map={1:2}",
                                 "+data.dataset.decoded_cach=true"]))  # fmt: skip
    message = str(error.value)
    assert message.startswith("data.dataset.label_map, data.dataset.decoded_cach are not "
                              "arguments of segkit.data.camvid.CamVidDataset")  # fmt: skip
    assert "data.dataset.decoded_cache" in message and "data.dataset.root" in message


def test_every_unknown_key_is_listed_in_one_message_and_eval_trainer_is_checked():
    cfg = compose(["+trainer.max_epoch=3", "+logger.csv.nam=x", "+optimizer.learning_rate=1"])
    lines = str(pytest.raises(ConfigError, check_arguments, cfg).value).splitlines()
    assert [line.split(" ")[0] for line in lines] == [
        "optimizer.learning_rate", "trainer.max_epoch", "logger.csv.nam"]  # fmt: skip
    cfg = compose(["ckpt_path=x", "+trainer.devics=1"], config_name="eval")
    with pytest.raises(ConfigError, match="trainer.devics is not an argument of lightning.Trainer"):
        check_arguments(cfg)
