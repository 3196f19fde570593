"""The run around a task: the Trainer, fit and evaluate (``runner``), the Lightning callbacks,
checkpoints (atomic writes, resume, rebuilding a task, the map of moved ``_target_`` paths
that keeps older checkpoints loading), loggers, Optuna sweeps, Hydra callbacks and
ensembles of checkpoints.

Above ``tasks``, which it builds and drives; below ``deploy`` and ``cli``, which read the
checkpoints it writes.
"""
