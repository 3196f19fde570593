"""``python export.py ckpt_path=<.ckpt|model.pt> format=onnx|torchscript [+input_size=[H,W]]
[dynamic=true] [returns=labels] [output=<file>]`` (or ``python -m segkit.cli.export``).

Writes ``<run folder>/model.onnx`` (or ``model.pt`` for TorchScript; ``output=`` names
another file; an existing file stops the export unless ``overwrite=true``), checked against
PyTorch before it is written
(:func:`segkit.deploy.export.export_checkpoint`; the graph, the metadata and the exporters:
:mod:`segkit.deploy.export`). ``predict.py ckpt_path=<.onnx>`` runs the ONNX file.
docs/export.md.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from segkit.config import CONF_DIR
from segkit.config_values import check_config
from segkit.deploy.export import SUFFIXES, export_checkpoint, read_metadata
from segkit.engine.runner import print_results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> Path:
    """The Hydra app: the exported file's path."""
    check_config(cfg)  # keys and values, before the checkpoint is read
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
        cfg.overwrite,
    )
    meta = read_metadata(path)
    height, width = meta["input_size"]
    shape = "any batch size and image size" if cfg.dynamic else f"1x3x{height}x{width}"
    print(f"exported with {meta['exporter']}: input {shape}, returns {cfg.returns}")
    print_results(path.parent, f"{path.name}: {cfg.format}, checked against PyTorch")
    return path


if __name__ == "__main__":
    main()
