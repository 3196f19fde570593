"""The ISBI 2012 EM challenge's scores of a membrane map: pixel error and Rand error.

A membrane (cell boundary) map splits an image into cells. ``membrane_class`` is the class
of the boundary; every other class is cell. Ground-truth pixels equal to ``ignore_index``
are left out of both scores.

* **Pixel error**: the fraction of scored pixels whose predicted membrane/cell label
  (the argmax labels, as every other segkit score) differs from the ground truth's.
* **Rand error**: the challenge's foreground-restricted Rand error, ``1 -`` the maximal
  F-score of the foreground-restricted Rand index (Arganda-Carreras et al., "Crowdsourcing the
  creation of image segmentation algorithms for connectomics", Front. Neuroanat. 2015; Fiji's
  ``trainableSegmentation.metrics.RandError.getForegroundRestrictedRandIndexMaximalFScore``,
  the challenge's scoring code). Segments are the 4-connected components of cell pixels, in
  the ground truth and in the prediction thresholded at ``t`` (cell where the cell
  probability ``> t``). Only pairs of ground-truth cell pixels count (the foreground
  restriction); a ground-truth cell pixel predicted membrane is a segment of its own. With
  ``n_ij`` the pixels of ground-truth segment ``i`` in predicted segment ``j >= 1``,
  ``a_i = sum_j n_ij`` (membrane-predicted pixels included), ``b_j = sum_i n_ij`` and ``s``
  the ground-truth cell pixels predicted membrane, each image gives, in ordered pixel pairs
  (each pixel paired with itself too: Fiji's "N^2 normalisation")::

      TP = sum_ij n_ij^2 + s      TP + FP = sum_j b_j^2 + s      TP + FN = sum_i a_i^2

  TP, FP and FN are summed over the images (Fiji pools them rather than averaging F-scores),
  ``F(t) = 2 TP / (2 TP + FP + FN)``, and the Rand error is ``1 - max_t F(t)`` over the
  thresholds (Fiji's challenge scripts: 0.0, 0.1, ..., 1.0). Labels without scores give one
  segmentation, the same for every threshold.

``skimage.metrics.adapted_rand_error`` (the SNEMI3D form) counts unordered pairs of distinct
pixels instead, and treats the prediction's 0 as one segment; given each membrane-predicted
pixel its own label, it returns ``1 - (TP - n) / ((2 TP + FP + FN) / 2 - n)`` for one image
with ``n`` ground-truth cell pixels. The two differ by ``2 n (FP + FN) / (D (D - 2 n))``,
``D = 2 TP + FP + FN``: below ``1e-3`` on ISBI slices, whose cells have thousands of pixels
(``tests/evaluation/test_membrane_metrics.py`` checks both).

The U-Net paper's Rand error 0.0382 and pixel error 0.0611 (Table 1) were measured by the
challenge on its unpublished 30-slice test stack; segkit scores the run's validation or test
split, so its values compare with those only roughly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torchmetrics import Metric

CHALLENGE_THRESHOLDS = tuple(step / 10 for step in range(11))  # Fiji: 0.0 to 1.0 by 0.1


def cell_segments(cell: np.ndarray) -> np.ndarray:
    """The 4-connected components of ``cell`` (bool ``[H, W]``): int32 ``[H, W]``, ``0`` off
    cell, ``1..K`` the segments (Fiji's 4-connectivity, as the challenge scored; scipy's
    default structuring element is the 4-neighbour cross)."""
    segments, _ = ndimage.label(cell)
    return segments.astype(np.int32)


def rand_counts(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Foreground-restricted Rand pair counts of one image (see the module docstring).

    Args:
        truth: ground-truth segments ``[H, W]``, ``0`` = not cell (membrane or ignored).
        prediction: predicted segments ``[H, W]``, ``0`` = membrane.

    Returns:
        int64 ``[3]``: ``TP, FP, FN`` in ordered pixel pairs.
    """
    inside = truth > 0
    rows = truth[inside].astype(np.int64)
    cols = prediction[inside].astype(np.int64)
    sizes = np.bincount(rows)  # a_i
    singles = int(np.count_nonzero(cols == 0))  # s: each its own segment
    rows, cols = rows[cols > 0], cols[cols > 0]
    predicted = np.bincount(cols)  # b_j, on ground-truth cell pixels only
    if cols.size:
        _, overlaps = np.unique(rows * (int(cols.max()) + 1) + cols, return_counts=True)
    else:
        overlaps = np.zeros(0, np.int64)
    same_both = int((overlaps.astype(np.int64) ** 2).sum()) + singles
    same_prediction = int((predicted.astype(np.int64) ** 2).sum()) + singles
    same_truth = int((sizes.astype(np.int64) ** 2).sum())
    return np.array(
        [same_both, same_prediction - same_both, same_truth - same_both], dtype=np.int64
    )


def rand_f_score(counts: np.ndarray | torch.Tensor) -> float:
    """``2 TP / (2 TP + FP + FN)`` of pooled ``[TP, FP, FN]`` counts; NaN for no pairs."""
    tp, fp, fn = (float(v) for v in counts)
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator > 0 else float("nan")


class MembraneErrors(Metric):
    """Pixel error and Rand error of a membrane map, accumulated over images and processes.

    Args:
        membrane_class: class index of the membrane (boundary); every other class is cell.
        ignore_index: ground-truth value left out of both scores (``None`` keeps all).
        thresholds: cell-probability thresholds the Rand F-score is maximised over.

    ``update(preds, target)`` takes scores ``[B, C, H, W]`` (logits or log-probabilities;
    softmax gives the cell probability ``1 - p(membrane)``, argmax the labels) or labels
    ``[B, H, W]``, and targets ``[B, H, W]``. The segmentations are computed on the CPU
    (connected components); the sums are int64 states summed across processes.
    ``compute()`` returns ``{"pixel_error": float, "rand_error": float}`` (NaN where nothing
    was scored).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(
        self,
        membrane_class: int = 0,
        ignore_index: int | None = 255,
        thresholds: Sequence[float] = CHALLENGE_THRESHOLDS,
    ) -> None:
        super().__init__()
        if not thresholds:
            raise ValueError("MembraneErrors needs at least one threshold")
        self.membrane_class = membrane_class
        self.ignore_index = ignore_index
        self.thresholds = tuple(float(t) for t in thresholds)
        zero = torch.zeros((), dtype=torch.int64)
        self.add_state("wrong_pixels", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("pixels", default=zero.clone(), dist_reduce_fx="sum")
        counts = torch.zeros(len(self.thresholds), 3, dtype=torch.int64)
        self.add_state("rand_counts", default=counts, dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim == target.ndim + 1:
            probabilities = preds.detach().float().softmax(dim=1)
            cell_probability = 1 - probabilities[:, self.membrane_class]  # [B, H, W]
            labels = preds.argmax(dim=1)
        else:
            cell_probability, labels = None, preds
        truth = target.detach().cpu().numpy()
        predicted_membrane = (labels == self.membrane_class).cpu().numpy()
        scored = np.ones_like(truth, dtype=bool)
        if self.ignore_index is not None:
            scored = truth != self.ignore_index
        membrane = truth == self.membrane_class
        self.wrong_pixels += int(np.count_nonzero((predicted_membrane != membrane) & scored))
        self.pixels += int(np.count_nonzero(scored))
        counts = torch.zeros_like(self.rand_counts, device="cpu")
        for index in range(len(truth)):
            truth_segments = cell_segments(scored[index] & ~membrane[index])
            if cell_probability is None:
                segments = cell_segments(~predicted_membrane[index])
                counts += torch.from_numpy(rand_counts(truth_segments, segments))
                continue
            probability = cell_probability[index].cpu().numpy()
            for row, threshold in enumerate(self.thresholds):
                segments = cell_segments(probability > threshold)
                counts[row] += torch.from_numpy(rand_counts(truth_segments, segments))
        self.rand_counts += counts.to(self.rand_counts.device)

    def compute(self) -> dict[str, float]:
        pixels = int(self.pixels)
        pixel_error = int(self.wrong_pixels) / pixels if pixels else float("nan")
        f_scores = [rand_f_score(row) for row in self.rand_counts.cpu()]
        scored = [f for f in f_scores if not np.isnan(f)]
        return {
            "pixel_error": pixel_error,
            "rand_error": 1 - max(scored) if scored else float("nan"),
        }
