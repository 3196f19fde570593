"""Datasets (one layout per module), the data module, augmentation, start-up checks, label
statistics (``stats.py``) and class colours (``palettes.py``).

The bottom layer beside ``models``: it imports only ``segkit.config``. Label counting lives
here because three layers read the same counts (the start-up checks here, the class weights
in ``tasks``, ``python -m segkit.cli.check_data``); the palettes come from the datasets'
colour tables and are drawn by ``evaluation`` and predict.py.
"""
