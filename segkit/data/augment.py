"""Training augmentation presets: the pieces the ``augment`` config group is built from.

``conf/augment/<preset>.yaml`` replaces ``data.train_transform`` (package
``data.train_transform``) with one :class:`SemanticCompose` of albumentations transforms:

* ``default``: nothing is replaced: the data config's own recipe, the one every shipped
  result was trained with.
* ``none``: only the random crop to ``data.crop_size`` that batching needs.
* ``light``: scale 0.75-1.25, crop, rotation +-10 deg and shift +-5% (half the samples),
  horizontal flip, colour jitter.
* ``strong``: scale 0.5-2.0, crop, rotation +-30 deg, shift +-10% and shear +-10 deg,
  horizontal and vertical flips, colour jitter, PCA colour jitter, Gaussian noise and blur.

Conventions: every geometric transform fills the pixels it creates with 0 in the image and
``ignore_index`` in the mask (``fill_mask: ${data.ignore_index}``), so borders are left out
of losses and metrics instead of being learnt as class 0; masks are resampled with nearest
neighbour, so they hold only class indices and ``ignore_index``. The crop size comes from
the data config (``data.crop_size: [H, W]``). Presets are for semantic masks:
:class:`SemanticCompose` refuses instance masks (their fill would have to be 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A

from segkit.data.io import DataError


def check_crop_size(crop_size: Sequence[int] | None, key: str = "data.crop_size") -> None:
    """Raise :class:`ValueError` unless ``crop_size`` is ``None`` or ``[H, W]``, positive ints."""
    if crop_size is None:
        return
    values = list(crop_size) if isinstance(crop_size, Sequence) else []
    if len(values) != 2 or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(
            f"{key}={crop_size!r}: the training crop is [height, width], two positive "
            f"integers, e.g. {key}=[512,512] (or null for no crop)."
        )


def random_crop(size: Sequence[int] | None, fill_mask: int) -> A.RandomCrop:
    """A random ``size = [H, W]`` crop that first pads smaller images (image with 0, mask with
    ``fill_mask``), so every sample has one size and padding is ignored.

    Raises:
        ValueError: ``size`` is ``None`` (the data config sets no crop) or not ``[H, W]``.
    """
    if size is None:
        raise ValueError(
            "the augment presets crop every training sample to data.crop_size, which this "
            "data config leaves null: set data.crop_size=[H,W] (e.g. the image size), or "
            "use augment=default. Instance data (data=coco, shapes_instances) keeps "
            "augment=default."
        )
    check_crop_size(size)
    height, width = size
    return A.RandomCrop(height, width, pad_if_needed=True, fill=0, fill_mask=fill_mask)


class SemanticCompose(A.Compose):
    """``albumentations.Compose`` for an image and its semantic mask; refuses instance masks.

    Called as ``transform(image=uint8 [H, W, 3], mask=[H, W])``, like ``Compose``. The
    presets fill geometric borders of every mask with ``ignore_index``, which in an instance
    mask (``masks=[N, H, W]`` of 0/1) would become object pixels, so instance data stops.

    Raises:
        DataError: on a call with ``masks``.
    """

    def __call__(self, *args: Any, force_apply: bool = False, **data: Any) -> dict[str, Any]:
        if "masks" in data:
            raise DataError(
                "augment presets are for semantic masks: their geometric borders get "
                "ignore_index, which would turn into object pixels of instance masks. Use "
                "augment=default with instance data, or write data.train_transform yourself."
            )
        return super().__call__(*args, force_apply=force_apply, **data)
