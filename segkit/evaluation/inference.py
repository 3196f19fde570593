"""How a trained model turns full images into class scores: whole, sliding-window, multi-scale.

* **whole**: one forward pass on the full image.
* **slide** (``crop_size``, ``stride``): the model sees overlapping ``crop_size`` windows
  that cover the image (the last window of a row or column is shifted back to end at the
  border); the logits of each pixel are averaged over the windows that contain it. The
  windows of all images in the batch run through the model together, ``window_batch`` at a
  time (by default as many as make about half a megapixel), and are summed on the device. A
  crop at least as large as the image is one window, i.e. whole inference. As in
  mmsegmentation's ``slide_inference``.
* **multi-scale + flip** (``scales``, ``flip``): the image is resized by each scale (and
  mirrored when ``flip``), run whole or sliding, the logits are resized back to the input
  size, and the softmax probabilities of all views are averaged (DeepLab, PSPNet practice).
  The mirrored view runs in the same forward pass as the unmirrored one (for whole images,
  while both together stay within ``WINDOW_PIXELS``).

:class:`Inference` bundles the choice (one config = one constructor call,
``conf/inference/*.yaml``); its output is the log of the averaged probabilities, so losses
that take logits (cross-entropy, Dice, focal) and ``argmax`` work on it unchanged.

:func:`load_checkpoint` and :func:`task_from_checkpoint` rebuild a trained task from the
config stored in a Lightning checkpoint (eval.py, predict.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or [height, width], got {value!r}")
    return int(pair[0]), int(pair[1])


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one side (the last one ends at the border).

    ``size=10, crop=4, stride=3`` gives ``[0, 3, 6]``; a crop ``>= size`` gives ``[0]``.
    """
    if crop >= size:
        return [0]
    count = math.ceil((size - crop) / stride) + 1
    return [min(i * stride, size - crop) for i in range(count)]


# Default pixels per forward pass of sliding windows. Measured on a 2-core CPU (BENCHMARKS.md):
# windows of 512x1024 ran 10% slower two per pass and 22% slower eight per pass than one at a
# time (the activations no longer fit the caches), while many small windows (32x64) in one
# pass ran about 4x faster than a loop. Half a megapixel keeps such large windows one per pass.
WINDOW_PIXELS = 1 << 19


def _check_window_batch(window_batch: int | None) -> int | None:
    if window_batch is not None and window_batch < 1:
        raise ValueError(f"inference.window_batch must be >= 1 or null, got {window_batch!r}")
    return window_batch


def windows_per_pass(crop_size: Sequence[int], window_batch: int | None) -> int:
    """``window_batch``, or for ``None`` as many windows as hold ``WINDOW_PIXELS`` (at least 1).

    Raises a ValueError naming ``inference.window_batch`` for a value below 1.
    """
    if _check_window_batch(window_batch) is None:
        return max(1, WINDOW_PIXELS // (crop_size[0] * crop_size[1]))
    return window_batch


def slide_logits(
    model: Model,
    images: torch.Tensor,
    crop_size: int | Sequence[int],
    stride: int | Sequence[int],
    window_batch: int | None = None,
) -> torch.Tensor:
    """Sliding-window logits, averaged where windows overlap.

    Args:
        model: maps ``[N, 3, h, w]`` to logits ``[N, C, h, w]``.
        images: ``[B, 3, H, W]``.
        crop_size: window ``(h, w)`` (or one int); clipped to the image size.
        stride: step between windows ``(h, w)``; smaller than the crop gives overlap.
        window_batch: windows per forward pass, taken across the images of the batch;
            ``None`` fits as many as hold about ``WINDOW_PIXELS`` (half a megapixel) together,
            at least one.

    Returns:
        logits ``[B, C, H, W]`` on the images' device, where the sums and the count map
        are accumulated (no host round trip). Windows keep the images' memory format, so
        a channels_last batch stays channels_last.
    """
    crop_h, crop_w = _pair(crop_size, "crop_size")
    stride_h, stride_w = _pair(stride, "stride")
    batch, _, height, width = images.shape
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    boxes = [
        (y, x)
        for y in window_starts(height, crop_h, stride_h)
        for x in window_starts(width, crop_w, stride_w)
    ]
    windows = [(b, y, x) for b in range(batch) for y, x in boxes]
    chunk = windows_per_pass((crop_h, crop_w), window_batch)
    memory_format = (
        torch.channels_last
        if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
        else torch.contiguous_format
    )
    total: torch.Tensor | None = None
    for start in range(0, len(windows), chunk):
        part = windows[start : start + chunk]
        crops = torch.stack([images[b, :, y : y + crop_h, x : x + crop_w] for b, y, x in part])
        logits = model(crops.contiguous(memory_format=memory_format))  # [len(part), C, h, w]
        if total is None:
            total = logits.new_zeros((batch, logits.shape[1], height, width))
        for (b, y, x), window in zip(part, logits, strict=True):
            total[b, :, y : y + crop_h, x : x + crop_w] += window
    assert total is not None
    count = total.new_zeros((height, width))  # the same windows cover every image
    for y, x in boxes:
        count[y : y + crop_h, x : x + crop_w] += 1
    return total / count


class Inference:
    """Whole, sliding-window and multi-scale/flip inference (see the module docstring).

    Args:
        scales: image scale factors; ``[1.0]`` is single-scale.
        flip: also run on the horizontally mirrored image of each scale.
        crop_size: sliding-window size ``[h, w]`` at each scale; ``None`` runs whole images.
        stride: window step ``[h, w]``; defaults to ``crop_size`` (no overlap).
        window_batch: sliding windows per forward pass, across images and mirrors (see
            :func:`slide_logits`); ``None`` takes about half a megapixel per pass.
    """

    def __init__(
        self,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        window_batch: int | None = None,
    ) -> None:
        if not scales or min(scales) <= 0:
            raise ValueError(f"inference scales must be positive numbers, got {scales!r}")
        if stride is not None and crop_size is None:
            raise ValueError("inference stride is set but crop_size is null; set both or none")
        self.scales = [float(s) for s in scales]
        self.flip = flip
        self.crop_size = None if crop_size is None else _pair(crop_size, "crop_size")
        self.stride = self.crop_size if stride is None else _pair(stride, "stride")
        self.window_batch = _check_window_batch(window_batch)  # fails at start-up, not in val

    def __repr__(self) -> str:
        return (
            f"Inference(scales={self.scales}, flip={self.flip}, crop_size={self.crop_size}, "
            f"stride={self.stride}, window_batch={self.window_batch})"
        )

    def logits(self, model: Model, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, H, W]`` of one view, whole or sliding."""
        if self.crop_size is None:
            return model(images)
        return slide_logits(model, images, self.crop_size, self.stride, self.window_batch)

    def __call__(self, model: Model, images: torch.Tensor) -> torch.Tensor:
        """Log of the view-averaged class probabilities.

        Args:
            model: maps ``[N, 3, h, w]`` to logits ``[N, C, h, w]``.
            images: ``[B, 3, H, W]``.

        Returns:
            ``[B, C, H, W]`` log-probabilities (``exp`` sums to 1 over ``C``).
        """
        size = images.shape[-2:]
        total: torch.Tensor | None = None
        views = 0
        for scale in self.scales:
            scaled = images
            if scale != 1.0:
                new_size = [max(1, round(side * scale)) for side in size]
                scaled = F.interpolate(images, size=new_size, mode="bilinear", align_corners=False)
            if not self.flip:
                scale_logits = [self.logits(model, scaled)]
            elif self.crop_size is not None or 2 * scaled[:, 0].numel() <= WINDOW_PIXELS:
                # image and mirror in one pass (sliding windows are chunked by slide_logits)
                plain, mirrored = self.logits(model, torch.cat([scaled, scaled.flip(-1)])).chunk(2)
                scale_logits = [plain, mirrored.flip(-1)]
            else:  # large whole images: one pass each, as a batched pass would not fit caches
                plain = self.logits(model, scaled)
                scale_logits = [plain, self.logits(model, scaled.flip(-1)).flip(-1)]
            for logits in scale_logits:
                if scale != 1.0:
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                log_probs = F.log_softmax(logits.float(), dim=1)
                # log(p1 + p2 + ...) without leaving log space; exact for a single view
                total = log_probs if total is None else torch.logaddexp(total, log_probs)
                views += 1
        assert total is not None
        return total - math.log(views) if views > 1 else total
