"""segkit: semantic segmentation research codebase.

Sub-packages by role, one level deep; each imports only the packages below it
(``tests/test_layout.py`` checks the order and that no import circle exists):

    cli/          the ``python -m segkit.cli.<command>`` commands
    deploy/       export (ONNX, TorchScript) and published result folders
    engine/       the run: trainer, callbacks, checkpoints, loggers, sweeps, ensembles
    tasks/        LightningModules and their parts: losses, class weights, optimiser, schedules
    evaluation/   metrics, test-time inference, reports, figures, run analysis (no Trainer)
    data/ models/ datasets, label statistics, palettes; one file per architecture
    config.py     compose, check_arguments, the resolvers ``conf/`` uses (importable by all)
    config_values.py  the valid value of every config key and check_values (importable by all)
"""

import segkit.config  # noqa: F401  (registers the resolvers conf/ uses: segkit_root, segkit_list)

__version__ = "0.1.0"
