"""Segmentation models. Each returns logits [B, C, H, W] at input size (or {"out", "aux"}).

The bottom layer beside ``data``: a model file imports only ``segkit.models`` (its base,
blocks and weights), so it is read and tested alone. A model config is built by
:func:`segkit.models.weights.build_model`: the constructor builds the layers, then the
config's ``weights_path`` is loaded.
"""
