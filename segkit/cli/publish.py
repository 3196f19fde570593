"""Publish a finished train.py run as a small result folder that eval.py and predict.py load.

    python -m segkit.cli.publish <run dir> <result folder> [--data-root <root>] [--overwrite]

What the folder holds: :mod:`segkit.deploy.publish`. Prints the folder's ``run.json``. A
result folder that already holds one of its files stops it (exit status 1) unless
``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from segkit.deploy.publish import publish
from segkit.outputs import OutputExistsError


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m segkit.cli.publish <run dir> <result folder> [--data-root <root>]
    [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="python -m segkit.cli.publish", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a finished train.py run dir")
    parser.add_argument("out_dir", type=Path, help="e.g. results/camvid/<recipe>")
    parser.add_argument("--data-root", type=Path, help="dataset root for the sample images")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the files of an earlier publish"
    )
    args = parser.parse_args(argv)
    try:
        info = publish(args.run_dir, args.out_dir, args.data_root, args.overwrite)
    except OutputExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
