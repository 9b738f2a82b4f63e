"""Backbone-specific intensity preprocessing of a whole volume (before cropping/stitching).

* ``percentile`` (LiteMedSAM, MedSAM, the test model): clip to the volume's 0.5-99.5
  percentiles and scale to [0, 1], as MedSAM prepares MR images.  Volumes that are not on a
  common intensity scale (such as per-volume z-scored MRI) become comparable; measured on LA
  with LiteMedSAM this took mean Dice from 0.02 (raw z-scores) to 0.33 (SFR_METHOD.md sec. 8).
* ``zscore`` (SAM ViT-B/L/H, as the SFR paper feeds it): zero mean, unit standard deviation.

The gray image is copied to 3 channels when the mosaic is built; no ImageNet mean/std.
"""

from __future__ import annotations

import numpy as np

from ..intensity import zscore

METHODS = ("percentile", "zscore")


def normalize(array: np.ndarray, method: str) -> np.ndarray:
    a = np.asarray(array, dtype=np.float32)
    if method == "percentile":
        lo, hi = np.percentile(a, [0.5, 99.5])
        if hi <= lo:
            return np.zeros_like(a)
        return ((np.clip(a, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if method == "zscore":
        return zscore(a)
    raise ValueError(f"unknown preprocessing {method!r} (choose from {METHODS})")
