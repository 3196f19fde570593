"""Scoring and reading results: the confusion matrix and its scores, the ISBI membrane
errors, test-time inference (whole image, sliding window, multi-scale, flip), the run
report, figures, run analysis and the leaderboard and compare tables.

Above ``data``/``models``, below ``tasks``: a task logs these metrics and runs this
inference. Nothing here builds a Trainer or a LightningModule, so a saved confusion matrix
or a run folder is scored and compared without the training code.
"""
