"""The run around a task: the Trainer, fit and evaluate (``runner``), the Lightning callbacks,
checkpoints (atomic writes, resume, rebuilding a task), loggers, Optuna sweeps, Hydra
callbacks and ensembles of checkpoints.

Above ``tasks``, which it builds and drives; below ``deploy`` and ``cli``, which read the
checkpoints it writes.
"""
