"""segkit: semantic segmentation research codebase."""

import segkit.config  # noqa: F401  (registers the ${segkit_root:} resolver of conf/paths)

__version__ = "0.1.0"
