"""What train.py and eval.py run: the trainer built from the config, the start-up check that
task, model and data are of one kind, fitting (with the command that continues an
interrupted run, :func:`continue_command`), scoring a split into the report files, and the
line that says where a run's results are.

The task is built by :func:`segkit.tasks.build_task`; checkpoints are chosen, checked and
read by :mod:`segkit.engine.checkpoints`.
"""

from __future__ import annotations

import logging
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from segkit.config import ConfigError
from segkit.engine.callbacks import every_run_callbacks
from segkit.engine.callbacks.checkpointing import LastCheckpoint
from segkit.engine.checkpoints import AtomicCheckpointIO, checkpoint_epoch
from segkit.evaluation.report import print_report, write_report


def check_task_kinds(task: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """Stop at start-up when the task, the model and the data are of different kinds.

    Mask R-CNN (torchvision's detection models) needs ``task=instance`` (which
    ``model=maskrcnn`` selects, unless ``task=`` is given too) and instance data
    (``data=shapes_instances``, ``data=coco``); the semantic task needs a semantic model
    and semantic data.

    Raises:
        ConfigError: naming the group choices that fix it.
    """
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    from segkit.data.instances import InstanceDataModule
    from segkit.tasks.instance import InstanceSegmentationTask

    instance_task = isinstance(task, InstanceSegmentationTask)
    instance_model = isinstance(getattr(task, "model", None), GeneralizedRCNN)
    instance_data = isinstance(datamodule, InstanceDataModule)
    if instance_model and not instance_task:
        raise ConfigError(
            f"the model ({type(task.model).__name__}) is an instance-segmentation model, but "
            f"the task is {type(task).__name__}: use task=instance (model=maskrcnn selects "
            "it unless task= is given) with instance data, e.g. data=shapes_instances; "
            "or run experiment=shapes_maskrcnn."
        )
    if instance_task and not instance_model:
        raise ConfigError(
            f"task=instance needs an instance-segmentation model (model=maskrcnn), got "
            f"{type(task.model).__name__}; for a semantic model use task=semantic."
        )
    if instance_task and not instance_data:
        raise ConfigError(
            f"task=instance trains on instance data (data=shapes_instances or data=coco), "
            f"got {type(datamodule).__name__} without instance masks."
        )
    if not instance_task and instance_data:
        raise ConfigError(
            f"{type(datamodule).__name__} is instance data: train it with model=maskrcnn "
            "(task=instance), or use its semantic counterpart (e.g. data=shapes)."
        )


def check_splits(datamodule: L.LightningDataModule, subsets: Sequence[str]) -> None:
    """The start-up check of every split a run will use (``train``, ``val``, ``test``):
    :meth:`segkit.data.datamodule.SegmentationDataModule.check_splits`, the checks that
    ``python -m segkit.cli.check_data`` reports in the same words. A data module of another
    kind is checked by its own ``setup``.

    Raises:
        DataError: every problem found, naming the split key and the files.
    """
    check = getattr(datamodule, "check_splits", None)
    if check is not None:
        check(subsets)


def resolve_loss_weights(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """The start-up step of ``train()`` that turns named ``loss.class_weights`` into numbers.

    The names (``median_frequency``, ...: :data:`segkit.tasks.class_weights.CHOICES`) anywhere
    under ``cfg.loss`` are computed from the training split's label counts
    (:func:`segkit.data.stats.label_counts`: counted once, cached under ``data.cache_dir``, the
    counts the start-up label checks read) and written into ``cfg.loss``
    (:func:`segkit.tasks.class_weights.resolve_class_weights`), so the config stored in the
    checkpoints holds them and building the task reads no data. Rank 0 prints one line per
    name; nothing is printed when no weight is named.
    """
    from lightning.pytorch.utilities import rank_zero_only

    from segkit.tasks.class_weights import resolve_class_weights

    for key, name, weights in resolve_class_weights(cfg.loss, datamodule):
        if rank_zero_only.rank == 0:
            listed = ", ".join(f"{w:.4f}" for w in weights)
            split = datamodule.splits["train"]
            print(f"Class weights {key}={name} (training split {split!r}): [{listed}]", flush=True)


# Messages of the libraries that say nothing about the run, dropped by exact text (never a
# whole category): Lightning's advert for its cloud logger, printed at every trainer start,
# and a deprecation inside Lightning's own pytree helper that torch >= 2.10 reports.
_NOISE_LOG = "💡 Tip: For seamless cloud logging"
_NOISE_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_known_noise() -> None:
    """Drop the known-noise lines above (idempotent)."""
    warnings.filterwarnings("ignore", message=_NOISE_WARNING)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(_NOISE_LOG))


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """Instantiate ``cfg.trainer`` with ``cfg.callbacks`` and ``cfg.logger``.

    The callbacks are those of ``cfg.callbacks`` (``conf/callbacks/``), then one of each
    :data:`segkit.engine.callbacks.EVERY_RUN` class (the config in every checkpoint, the
    resume check, the no-training-batches stop, the run overview and the epoch lines); the
    run overview prints both lists. With no logger (``logger=none``) a ``LearningRateMonitor``
    is left out. Checkpoints are written atomically (:class:`AtomicCheckpointIO`). ``trainer.
    sync_batchnorm=true`` is turned off with a warning when only one process runs (nothing
    to synchronise) or on CPU (torch's SyncBatchNorm supports only GPU-like devices).
    ``trainer.precision=bf16-mixed`` (or ``bf16-true``) on a CPU without bfloat16
    instructions (:func:`cpu_bf16_supported`) warns and trains in ``32-true``: there
    bfloat16 is emulated, slower than float32.
    """
    configured = {
        name: hydra.utils.instantiate(c) for name, c in (cfg.get("callbacks") or {}).items()
    }
    config = OmegaConf.to_container(cfg, resolve=True)
    quiet_known_noise()
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    if not loggers:  # LearningRateMonitor raises without a logger; there is nothing to log to
        configured = {
            name: c for name, c in configured.items() if not isinstance(c, LearningRateMonitor)
        }
    callbacks = [*configured.values(), *every_run_callbacks(config, list(configured))]
    # LastCheckpoint after ModelCheckpoint (Lightning keeps the order of checkpoint
    # callbacks), so the epoch-end last.ckpt records that epoch's best checkpoint
    callbacks.sort(key=lambda callback: isinstance(callback, LastCheckpoint))

    # A progress bar redrawn with \r fills a log file: off when the output is not a
    # terminal (EpochLines writes one line per epoch), unless the config says otherwise.
    if "enable_progress_bar" not in cfg.trainer and not sys.stdout.isatty():
        extra: dict[str, Any] = {"enable_progress_bar": False}
    else:
        extra = {}

    def make(**overrides: Any) -> L.Trainer:
        return hydra.utils.instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            plugins=[AtomicCheckpointIO()],
            **extra,
            **overrides,
        )

    trainer = make()
    fixes: dict[str, Any] = {}  # arguments the built trainer shows cannot work here
    if cfg.trainer.get("sync_batchnorm"):
        reason = ""
        if trainer.world_size == 1:
            reason = "only one process runs"
        elif isinstance(trainer.accelerator, CPUAccelerator):
            reason = "torch's SyncBatchNorm does not run on CPU"
        if reason:
            warnings.warn(
                f"trainer.sync_batchnorm=true is ignored: {reason}; training uses plain "
                "BatchNorm. Set trainer.sync_batchnorm=false to silence this.",
                stacklevel=2,
            )
            fixes["sync_batchnorm"] = False
    precision = str(cfg.trainer.get("precision"))
    if (
        precision.startswith("bf16")
        and isinstance(trainer.accelerator, CPUAccelerator)
        and not cpu_bf16_supported()
    ):
        warnings.warn(
            f"trainer.precision={precision}: this CPU has no bfloat16 instructions "
            "(avx512_bf16 or AMX), where bfloat16 is emulated and slower than float32; "
            "training runs in trainer.precision=32-true instead.",
            stacklevel=2,
        )
        fixes["precision"] = "32-true"
    if fixes:
        trainer = make(**fixes)
    return trainer


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: avx512_bf16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@runtime_checkable
class ScoredTask(Protocol):
    """What :func:`evaluate` reads from a task once ``trainer.validate``/``test`` has run.

    Both tasks (:mod:`segkit.tasks`) keep these; a new task must too.

    Attributes:
        class_names: the ``C`` class names, in class-index order.
        confusion_matrices: ``{split: int64 [C, C]}`` of the last finished epoch of that
            split (``"val"``/``"test"``), on the CPU; rows = ground truth, columns =
            prediction, ignored pixels left out.
        extra_scores: ``{split: {name: value}}`` written into ``metrics.json`` beside the
            confusion-matrix scores (instance task: COCO AP; ``{}`` for the semantic task).
    """

    class_names: list[str]
    confusion_matrices: dict[str, torch.Tensor]
    extra_scores: dict[str, dict[str, Any]]


def evaluate(
    trainer: L.Trainer,
    task: ScoredTask,
    datamodule: L.LightningDataModule,
    subset: str,
    ckpt_path: str | Path | None,
    output_dir: str | Path,
    loaded: tuple[str | Path, int | None] | None = None,
) -> dict[str, Any]:
    """Score ``ckpt_path`` (or the current weights) on the ``val`` or ``test`` split.

    Writes the report files into ``output_dir`` and prints the per-class table (rank 0 only).
    The task keeps its confusion matrix and extra scores of the split (:class:`ScoredTask`).

    Args:
        loaded: ``(path, epoch)`` of a checkpoint whose weights ``task`` already holds
            (eval.py): it is recorded in ``metrics.json`` without being read again; give
            ``ckpt_path=None`` with it.

    Returns:
        the ``metrics.json`` content, or ``{}`` on other ranks.
    """
    if not isinstance(task, ScoredTask):
        raise TypeError(
            f"{type(task).__name__} cannot be scored: evaluate needs class_names, "
            "confusion_matrices and extra_scores on the task (segkit.engine.runner.ScoredTask)."
        )
    run = trainer.validate if subset == "val" else trainer.test
    run(task, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, weights_only=True)
    if not trainer.is_global_zero:
        return {}
    source, epoch = loaded if loaded else (ckpt_path, checkpoint_epoch(ckpt_path))
    extra = {
        "checkpoint": str(source) if source else None,
        "epoch": epoch,
        # scores a task keeps beside its confusion matrix (instance task: COCO AP)
        **task.extra_scores.get(subset, {}),
    }
    metrics = write_report(
        output_dir,
        task.confusion_matrices[subset],
        task.class_names,
        split=datamodule.splits[subset],
        extra=extra,
    )
    print_report(metrics)
    return metrics


# --- fitting, interrupts and where the results are ----------------------------------------


def continue_command(cfg: DictConfig) -> str:
    """The command that continues this run from its ``last.ckpt``.

    This job's command-line overrides (``ckpt_path``/``resume`` left out), its folder
    pinned with ``hydra.run.dir`` and ``ckpt_path=last``; for a job of a multirun too,
    which then continues as a single run in the job's folder.
    """
    overrides: list[str] = []
    if HydraConfig.initialized():
        overrides = [
            o
            for o in HydraConfig.get().overrides.task
            if o.lstrip("+~").split("=")[0] not in ("ckpt_path", "resume")
        ]
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "train.py"
    words = ["python", script, *overrides]
    words += [f"hydra.run.dir={cfg.paths.output_dir}", "ckpt_path=last"]
    return shlex.join(words)


def fit(
    cfg: DictConfig,
    trainer: L.Trainer,
    task: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt_path: str | None,
) -> None:
    """``trainer.fit`` that says where the work is when it stops early.

    On an interrupt (SIGINT/SIGTERM:
    :class:`~segkit.engine.callbacks.checkpointing.LastCheckpoint` has saved ``last.ckpt`` at
    the end of the step in progress) or an error after training began, rank
    0 prints which ``last.ckpt`` holds the work (or that none was written, so the work is
    lost) and the exact command that continues the run (:func:`continue_command`). An
    interrupted run exits with status 128 + the signal number (130 for Ctrl-C, 143 for
    SIGTERM).
    """
    import signal as signals

    last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except BaseException as error:
        interrupted = last.interrupted if last is not None else None
        if trainer.is_global_zero and (interrupted or trainer.global_step > 0):
            _say_where_the_work_is(cfg, trainer, last, interrupted, error)
        if interrupted in signals.Signals.__members__:
            raise SystemExit(128 + signals.Signals[interrupted]) from error
        raise


def _say_where_the_work_is(
    cfg: DictConfig,
    trainer: L.Trainer,
    last: LastCheckpoint | None,
    interrupted: str | None,
    error: BaseException,
) -> None:
    why = f"interrupted by {interrupted}" if interrupted else f"stopped by {type(error).__name__}"
    path = last.path if last is not None else None
    if path is not None and path.is_file():
        step = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["global_step"]
        saved = "saved at this step" if last.interrupt_saved else "the newest save"
        print(
            f"\nTraining {why} at step {trainer.global_step}: {path} holds step {step} "
            f"({saved}). Continue with:\n  {continue_command(cfg)}",
            flush=True,
        )
    else:
        print(
            f"\nTraining {why} at step {trainer.global_step}: no checkpoint was written, so "
            "the work of this run is lost.",
            flush=True,
        )


def print_results(folder: str | Path, what: str) -> None:
    """The last line of every run: where its results are."""
    print(f"Results: {Path(folder).resolve()} ({what})", flush=True)
