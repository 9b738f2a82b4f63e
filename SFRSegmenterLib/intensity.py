"""Intensity normalisation shared by stage F (SAM ViT-B/L/H preprocessing) and stage R (V-Net)."""

from __future__ import annotations

import numpy as np

#: A volume whose standard deviation is at most this is treated as constant.
CONSTANT_STD = 1e-8


def zscore(array: np.ndarray) -> np.ndarray:
    """Per-volume z-score as float32; a constant volume becomes zeros (not amplified noise)."""
    a = np.asarray(array, dtype=np.float32)
    std = float(a.std())
    return ((a - float(a.mean())) / (std if std > CONSTANT_STD else 1.0)).astype(np.float32)
