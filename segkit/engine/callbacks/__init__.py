"""segkit's Lightning callbacks, one module per concern (Hydra's callbacks:
:mod:`segkit.engine.hydra_callbacks`).

* :mod:`~segkit.engine.callbacks.checkpointing`: what a checkpoint holds and how a run
  continues from one: ``ConfigInCheckpoint``, ``LastCheckpoint`` (periodic and on-signal
  ``last.ckpt``) and ``ResumeGuard``. ``ResumeGuard`` sits here, not among the guards: it
  reads the config that ``ConfigInCheckpoint`` stored and the state of the checkpoint a run
  resumes from, and moves the checkpoints that run superseded.
* :mod:`~segkit.engine.callbacks.guards`: stop a run that would train nothing or train on a
  NaN: ``TrainingBatchesCheck``, ``NonFiniteGuard``.
* :mod:`~segkit.engine.callbacks.console`: what a run prints: ``RunOverview``, ``EpochLines``.
* :mod:`~segkit.engine.callbacks.speed`: ``FastPaths`` (channels_last, ``torch.compile``)
  and ``compile_supported``.
* :mod:`~segkit.engine.callbacks.figures`: ``ValidationFigures`` for image-taking loggers.

The cut follows what a reader looks for (where does ``last.ckpt`` come from, why did the run
stop, what printed this line) and what each module imports: only ``figures`` needs the
evaluation figures and PIL, only ``speed`` is read by predict.py's backend choice.

Which callbacks a run has: those that ``conf/callbacks/`` composes (``default.yaml`` lists
one file per callback; ``callbacks=none`` drops them all), and the :data:`EVERY_RUN`
callbacks below, which :func:`segkit.engine.runner.build_trainer` adds to every run. The
run overview (``RunOverview``) prints both lists at the start of fitting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L

from segkit.engine.callbacks.checkpointing import ConfigInCheckpoint, ResumeGuard
from segkit.engine.callbacks.console import EpochLines, RunOverview
from segkit.engine.callbacks.guards import TrainingBatchesCheck

# The callbacks every run has, whatever conf/callbacks/ composes (callbacks=none included).
# Not in conf/: three take the whole resolved config, which a YAML entry cannot pass, and
# leaving any out breaks a contract: ConfigInCheckpoint (eval.py and predict.py rebuild the
# model from the checkpoint's config), ResumeGuard (a resume that ignores new settings
# silently), TrainingBatchesCheck (an untrained model scored as a result), RunOverview and
# EpochLines (the console and train.log of a run).
EVERY_RUN = (ConfigInCheckpoint, ResumeGuard, TrainingBatchesCheck, RunOverview, EpochLines)


def every_run_callbacks(
    config: Mapping[str, Any], configured: Sequence[str] = ()
) -> list[L.Callback]:
    """One callback of each :data:`EVERY_RUN` class, in that order, for a run of ``config``.

    Args:
        config: the run's resolved config (plain containers).
        configured: the keys of ``config["callbacks"]`` that became callbacks, for the
            run overview's list.
    """
    return [
        ConfigInCheckpoint(config),
        ResumeGuard(config),
        TrainingBatchesCheck(),
        RunOverview(config, configured, [kind.__name__ for kind in EVERY_RUN]),
        EpochLines(config.get("optimized_metric") or "val/mIoU"),
    ]
