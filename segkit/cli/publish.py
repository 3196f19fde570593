"""Publish a finished train.py run as a small result folder that eval.py and predict.py load.

    python -m segkit.cli.publish <run dir> <result folder> [--data-root <root>]

What the folder holds: :mod:`segkit.deploy.publish`. Prints the folder's ``run.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from segkit.deploy.publish import publish


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m segkit.cli.publish <run dir> <result folder> [--data-root <root>]``."""
    parser = argparse.ArgumentParser(prog="python -m segkit.cli.publish", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a finished train.py run dir")
    parser.add_argument("out_dir", type=Path, help="e.g. results/camvid/<recipe>")
    parser.add_argument("--data-root", type=Path, help="dataset root for the sample images")
    args = parser.parse_args(argv)
    info = publish(args.run_dir, args.out_dir, args.data_root)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
