"""Segmentation models. Each returns logits [B, C, H, W] at input size (or {"out", "aux"}).

The bottom layer beside ``data``: a model file imports only ``segkit.models`` (its base,
blocks and weights), so it is read and tested alone.
"""
