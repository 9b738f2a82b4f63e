"""Sparse labels: a label voxel of 255 means "not annotated".

A labeled case may be annotated on a few slices only: every voxel of the slices left
unannotated holds :data:`NOT_ANNOTATED` (the value the stitching already uses for padding,
:data:`~SFRSegmenterLib.stitching.IGNORE_INDEX`).  Both training losses ignore those voxels;
the crops of both stages are drawn so that they hold annotated voxels.  A slice is an axial
slice of the array (index ``k`` of ``[D, H, W]``); it counts as annotated when one of its
voxels is not 255.

Classes are ``0..K-1`` with ``K <= 255``; any other value in a label is refused
(:func:`stray_values`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .stitching import IGNORE_INDEX

#: The label value of a voxel nobody annotated (ignored by both training losses).
NOT_ANNOTATED = IGNORE_INDEX


def annotated_mask(label: np.ndarray) -> np.ndarray:
    """True where the label says something (any value but :data:`NOT_ANNOTATED`)."""
    return label != NOT_ANNOTATED


def annotated_slice_indices(label: np.ndarray) -> list:
    """Indices ``k`` of the axial slices ``label[k]`` holding at least one annotated voxel."""
    return [int(k) for k in np.flatnonzero(annotated_mask(label).reshape(label.shape[0], -1).any(1))]


def annotated_slices(label: np.ndarray) -> int:
    """How many axial slices of ``label`` carry annotation."""
    return len(annotated_slice_indices(label))


def is_sparse(label: np.ndarray) -> bool:
    return bool((label == NOT_ANNOTATED).any())


def stray_values(values: Iterable[int], num_classes: int) -> list:
    """The values that are neither a class ``0..num_classes-1`` nor :data:`NOT_ANNOTATED`."""
    return sorted(int(v) for v in values if not (0 <= int(v) < num_classes or int(v) == NOT_ANNOTATED))


def describe_values(values: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" ... ({len(values)} values)" if len(values) > limit else "")


def contiguous_classes(values: Iterable[int]) -> "tuple[int, list]":
    """``(K, stray)`` for labels holding ``values``: classes ``0..K-1`` are the run from 0 without
    a gap; values after a gap (but 255) are stray (e.g. {0, 1, 200}: K = 2, stray [200])."""
    found = sorted({int(v) for v in values} - {NOT_ANNOTATED})
    k = 0
    while k in found:
        k += 1
    return max(k, 2), [v for v in found if v >= k]


def crop_starts(label: np.ndarray, crop: Sequence[int], rng: np.random.Generator) -> list:
    """A random crop start per axis such that the crop holds annotated voxels along every axis.

    For a fully annotated label every start is allowed and the draws are exactly
    ``rng.integers(0, s - c + 1)`` per axis (the crops of a dense label do not change)."""
    mask = annotated_mask(label)
    starts = []
    for axis, (s, c) in enumerate(zip(label.shape, crop)):
        n = s - int(c) + 1
        other = tuple(a for a in range(label.ndim) if a != axis)
        present = mask.any(axis=other)
        if present.all() or not present.any():
            starts.append(int(rng.integers(0, n)))
            continue
        window = np.convolve(present.astype(np.int64), np.ones(int(c), dtype=np.int64), mode="valid")[:n]
        allowed = np.flatnonzero(window > 0)
        starts.append(int(allowed[int(rng.integers(0, len(allowed)))]))
    return starts
