"""Backbone-specific intensity preprocessing of a whole volume (before cropping/stitching).

* ``percentile`` (LiteMedSAM, MedSAM, the test model): clip to the volume's 0.5-99.5
  percentiles and scale to [0, 1], as MedSAM prepares MR images.  Volumes that are not on a
  common intensity scale (such as per-volume z-scored MRI) become comparable (the measurement:
  docs/stage-f.md, "Backbones").
* ``zscore`` (SAM ViT-B/L/H, as the SFR paper feeds it): zero mean, unit standard deviation.
* ``rank`` (histogram equalisation): each voxel becomes its intensity's rank in the volume,
  scaled to [0, 1], so every volume has the same (uniform) histogram whatever its contrast.

The gray image is copied to 3 channels when the mosaic is built; no ImageNet mean/std.
"""

from __future__ import annotations

import numpy as np

from ..intensity import zscore

METHODS = ("percentile", "zscore", "rank")


def normalize(array: np.ndarray, method: str) -> np.ndarray:
    a = np.asarray(array, dtype=np.float32)
    if method == "percentile":
        lo, hi = np.percentile(a, [0.5, 99.5])
        if hi <= lo:
            return np.zeros_like(a)
        return ((np.clip(a, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if method == "zscore":
        return zscore(a)
    if method == "rank":
        values, inverse = np.unique(a, return_inverse=True)
        if values.size < 2:
            return np.zeros_like(a)
        # mid-rank of each distinct value: ties share one level, the result is in [0, 1]
        counts = np.bincount(inverse.ravel(), minlength=values.size)
        ends = np.cumsum(counts)
        mid = (ends - (counts + 1) / 2.0) / max(1, a.size - 1)
        return mid[inverse].reshape(a.shape).astype(np.float32)
    raise ValueError(f"unknown preprocessing {method!r} (choose from {METHODS})")
