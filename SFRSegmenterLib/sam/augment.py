"""The SFR fine-tuning augmentations, driven by an explicit numpy ``Generator``.

3D random rotation (90 degrees in-plane) and flip, random crop, a random Bezier intensity
curve per slice (p = 0.5), and a random 90-degree rotation / flip of the whole mosaic.
"""

from __future__ import annotations

import numpy as np

from ..sparse import crop_starts
from ..stitching import IGNORE_INDEX
from .layout import pad_to


def rot_flip_3d(image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
    k = int(rng.integers(4))
    image, label = np.rot90(image, k, axes=(1, 2)), np.rot90(label, k, axes=(1, 2))
    axis = int(rng.integers(1, 3))
    return np.flip(image, axis), np.flip(label, axis)


def random_crop(image: np.ndarray, label: np.ndarray, crop, rng: np.random.Generator):
    image = pad_to(image, crop, 0.0)
    label = pad_to(label, crop, IGNORE_INDEX)
    starts = crop_starts(label, crop, rng)  # a crop holding annotation (any start for a dense label)
    box = tuple(slice(s, s + c) for s, c in zip(starts, crop))
    return np.ascontiguousarray(image[box]), np.ascontiguousarray(label[box])


def bezier_curve(rng: np.random.Generator, n: int = 256):
    """A random monotone intensity curve on [0, 1]: cubic Bezier from (0, 0) to (1, 1)."""
    p1, p2 = rng.random(2), rng.random(2)
    t = np.linspace(0.0, 1.0, n)
    b, c, d = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3  # the P0 = (0, 0) term is zero
    x = b * p1[0] + c * p2[0] + d
    y = b * p1[1] + c * p2[1] + d
    order = np.argsort(x, kind="stable")
    return x[order], np.maximum.accumulate(y[order])


def bezier_per_slice(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Remap the intensities of each slice, with probability ``p``, through a random curve.

    Each slice is scaled to [0, 1] by its own range, remapped, and scaled back.
    """
    out = image.copy()
    chosen = rng.random(image.shape[0]) < p
    for k in np.flatnonzero(chosen):
        sl = out[k]
        lo, hi = float(sl.min()), float(sl.max())
        xs, ys = bezier_curve(rng)
        if hi <= lo:
            continue
        out[k] = np.interp((sl - lo) / (hi - lo), xs, ys).astype(np.float32) * (hi - lo) + lo
    return out


def rot_flip_2d(canvas: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """Rotate/flip mosaics ``[..., S, S]`` (image and label alike)."""
    k = int(rng.integers(4))
    canvas, labels = np.rot90(canvas, k, axes=(-2, -1)), np.rot90(labels, k, axes=(-2, -1))
    if rng.random() < 0.5:
        canvas, labels = np.flip(canvas, -1), np.flip(labels, -1)
    return np.ascontiguousarray(canvas), np.ascontiguousarray(labels)
