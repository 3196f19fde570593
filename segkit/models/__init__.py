"""Segmentation models. Each returns logits [B, C, H, W] at input size (or {"out", "aux"})."""
