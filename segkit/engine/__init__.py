"""The run around a task: train.py's and eval.py's runs as functions (``train``,
``evaluate``) and the files predict.py writes (``predict``), the Trainer, fit and evaluate
(``runner``), the Lightning callbacks, checkpoints (atomic writes, resume, rebuilding a task,
the map of moved ``_target_`` paths that keeps older checkpoints loading), a trained task
loaded from one checkpoint (``loading``) or several (``ensemble``), loggers, Optuna sweeps
and Hydra callbacks.

Above ``tasks``, which it builds and drives; below ``deploy`` and ``cli``, which read the
checkpoints it writes.
"""
