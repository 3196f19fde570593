"""Export a trained checkpoint for deployment:
python export.py ckpt_path=<.ckpt|model.pt> format=onnx|torchscript [+input_size=[H,W]]
[dynamic=true] [returns=labels] [output=<file>]

Writes ``<run folder>/model.onnx`` (or ``model.pt`` for TorchScript; ``output=`` names
another file): the model as predict.py runs it on one whole normalised image (padding to
the output stride, network, upsampling and crop inside the graph), returning logits
``[B, C, H, W]`` or, with ``returns=labels``, the int64 argmax ``[B, H, W]``; the
normalisation constants, class names, palette and test-time inference in its metadata.
The export is checked against PyTorch before it is written. ``predict.py ckpt_path=<.onnx>``
runs the ONNX file. See :mod:`segkit.deploy.export` for the graph, the metadata and the exporters.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from segkit.deploy.export import SUFFIXES, export_checkpoint, read_metadata
from segkit.engine.runner import print_results


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> Path:
    output = cfg.output or Path(cfg.paths.output_dir) / f"model{SUFFIXES.get(cfg.format, '')}"
    # +input_size=[H,W]: not declared, as in segkit.cli.model_summary
    input_size = cfg.get("input_size")
    path = export_checkpoint(
        cfg.ckpt_path,
        cfg.format,
        output,
        OmegaConf.to_container(input_size) if OmegaConf.is_config(input_size) else input_size,
        cfg.dynamic,
        cfg.returns,
    )
    meta = read_metadata(path)
    height, width = meta["input_size"]
    shape = "any batch size and image size" if cfg.dynamic else f"1x3x{height}x{width}"
    print(f"exported with {meta['exporter']}: input {shape}, returns {cfg.returns}")
    print_results(path.parent, f"{path.name}: {cfg.format}, checked against PyTorch")
    return path


if __name__ == "__main__":
    main()
