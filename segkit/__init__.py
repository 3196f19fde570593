"""segkit: semantic segmentation research codebase."""

__version__ = "0.1.0"
