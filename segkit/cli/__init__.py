"""The commands, ``python -m segkit.cli.<name>``: ``train``, ``eval``, ``predict`` and
``export`` (the Hydra apps that the root ``train.py``, ``eval.py``, ``predict.py`` and
``export.py`` run), ``check_data``, ``convert``, ``model_summary``, ``leaderboard``,
``compare`` and ``publish``.

The top layer: a command may import any package, and no package imports a command. A command
parses its arguments, runs and prints; code another layer needs lives below it (the label
counting of check_data in ``segkit.data.stats``, the tables of leaderboard and compare in
``segkit.evaluation``, publishing in ``segkit.deploy``, the runs of train.py and eval.py in
``segkit.engine``, predict.py's in ``segkit.deploy.predictor``), so tests and notebooks call
the same functions without a command line.
"""
