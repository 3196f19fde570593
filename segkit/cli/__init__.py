"""The commands, ``python -m segkit.cli.<name>``: ``check_data``, ``convert``,
``model_summary``, ``leaderboard``, ``compare`` and ``publish``.

The top layer: a command may import any package, and no package imports a command. A command
parses its arguments, runs and prints; code another layer needs lives below it (the label
counting of check_data in ``segkit.data.stats``, the tables of leaderboard and compare in
``segkit.evaluation``, publishing in ``segkit.deploy``), so tests and notebooks call the
same functions without a command line.
"""
