"""segkit: semantic segmentation research codebase."""

import segkit.config  # noqa: F401  (registers the resolvers conf/ uses: segkit_root, segkit_list)

__version__ = "0.1.0"
