"""The contract of every segkit semantic model, written once (as smp's ``base/model.py``).

A model subclasses :class:`SegmentationModel`, sets ``output_stride`` and implements
:meth:`~SegmentationModel.predict` (features -> head -> logits at any resolution) on an
input whose sides divide by ``output_stride``. :meth:`~SegmentationModel.forward` owns
the rest: zero-pad the input to that multiple, upsample the outputs bilinearly to the padded
size, crop them back to the input size, and drop the auxiliary output outside training.

The pretrained part is the submodule named ``encoder`` (``None`` when there is none), so
fine-tuning can treat it apart: :attr:`~SegmentationModel.backbone`,
:meth:`~SegmentationModel.backbone_parameters`, :meth:`~SegmentationModel.head_parameters`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.blocks import pad_to_multiple

Output = torch.Tensor | dict[str, torch.Tensor]


class SegmentationModel(nn.Module):
    """Base of the semantic models: ``[B, C_in, H, W]`` -> logits ``[B, C, H, W]``.

    Subclasses set :attr:`output_stride` and implement :meth:`predict`.

    Attributes:
        output_stride: inputs are zero-padded (bottom/right) to a multiple of it; the
            total stride of the model's deepest features (32 for VGG16 or a plain ResNet).
    """

    output_stride: int = 32

    def predict(self, x: torch.Tensor) -> Output:
        """Logits of a padded input.

        Args:
            x: ``[B, C_in, H', W']`` with ``H'`` and ``W'`` multiples of ``output_stride``.

        Returns:
            logits ``[B, C, H'/f, W'/f]`` for an integer ``f`` (1 when the model upsamples
            itself), or in train mode ``{"out": logits, "aux": aux logits}`` (each with its
            own ``f``).
        """
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> Output:
        """Map images ``[B, C_in, H, W]`` of any size to logits ``[B, C, H, W]``.

        Returns:
            logits, or in train mode ``{"out": [B,C,H,W], "aux": [B,C,H,W]}`` when the model
            has an auxiliary head.

        Raises:
            ValueError: an output whose size is not the padded size divided by an integer
                (the model's ``output_stride`` is then wrong).
        """
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x, self.output_stride)
        try:
            output = self.predict(padded)
        except ValueError as error:
            if "Expected more than 1 value per channel" not in str(error):
                raise
            raise ValueError(self._single_value_message(padded)) from error
        if isinstance(output, dict):
            if not self.training or output.get("aux") is None:
                return self._fit(output["out"], padded, "out", height, width)
            return {k: self._fit(v, padded, k, height, width) for k, v in output.items()}
        return self._fit(output, padded, "logits", height, width)

    def _single_value_message(self, padded: torch.Tensor) -> str:
        """What PyTorch's batch-norm error "Expected more than 1 value per channel when
        training" means for a segkit run: a training batch of one image whose features
        reached batch norm as a 1x1 map; the settings that cause it."""
        return (
            f"a training batch of {padded.shape[0]} {padded.shape[-2]}x{padded.shape[-1]} "
            f"(padded) image(s) reaches a batch norm of {type(self).__name__} as a 1x1 map "
            "(one value per channel), which cannot train: use data.batch_size>=2, or crops "
            f"with a side above {self.output_stride} (data.crop_size)."
        )

    def _fit(
        self, output: torch.Tensor, padded: torch.Tensor, name: str, height: int, width: int
    ) -> torch.Tensor:
        """Upsample ``output`` to the padded size (bilinear) and crop it to ``height x width``."""
        size = tuple(padded.shape[-2:])
        got = tuple(output.shape[-2:])
        if got != size:
            factor = size[0] // got[0] if got[0] else 0
            if not factor or got[0] * factor != size[0] or got[1] * factor != size[1]:
                raise ValueError(
                    f"{type(self).__name__} returned {name} of size {got[0]}x{got[1]} for an "
                    f"input padded to {size[0]}x{size[1]} (a multiple of its output_stride="
                    f"{self.output_stride}); outputs must be the padded size divided by an "
                    "integer. The model reduces its input by more than output_stride: set "
                    "output_stride to its total stride (e.g. 32 for five poolings), so that "
                    "inputs are padded to a multiple of it."
                )
            output = F.interpolate(output, size=size, mode="bilinear", align_corners=False)
        return output[..., :height, :width]

    @property
    def backbone(self) -> nn.Module | None:
        """The pretrained part (the submodule ``encoder``), or ``None`` if there is none.

        A property, so its parameters appear in the state dict once (under ``encoder.``).
        """
        return self._modules.get("encoder")

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of :attr:`backbone` (empty without one)."""
        return [] if self.backbone is None else list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """Every parameter not in :attr:`backbone`."""
        backbone = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]
