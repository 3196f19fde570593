"""segkit's benchmark suite: ``python -m benchmarks`` runs every script and rewrites BENCHMARKS.md.

One script per benchmark (``python -m benchmarks.<name> [--quick] [--threads N]`` prints
its section): ``confmat``, ``train_step``, ``slide``, ``loader``. Claims are ratios against
a reference timed in the same run (see :mod:`benchmarks.common`).
"""
