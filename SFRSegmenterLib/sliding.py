"""Sliding windows: where they go, and one inferer that averages any predictor's outputs.

Windows of ``window`` voxels start along each axis at ``min(i * stride, size - window)`` (the last
window touches the far border), the rule of the paper's test code and of MONAI's
``dense_patch_slices``.  The stride comes from one of:

* an **overlap** fraction of the window (the default, as MONAI's inferers; the V-Net's default
  :data:`DEFAULT_OVERLAP`, SAM's :data:`SAM_OVERLAP`):
  ``stride = ceil(window * (1 - overlap))``, so along any axis a voxel lies in at most
  ``ceil(1 / (1 - overlap))`` windows, whatever the window size;
* the ``"paper"`` preset: the SFR paper's LA stride (4, 18, 18) for its (80, 112, 112) window,
  scaled to other windows (the old default, costly for small windows);
* an explicit stride per axis.

:func:`sliding_window` runs any predictor (the V-Net's softmax, SAM's stitch -> decode -> unstitch)
over those windows and averages the probabilities where windows overlap (constant weights, or a
Gaussian centred on each window).  Numbers behind the default: ``bench/results/inference_cost.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .errors import Cancelled, SFRError

#: The paper's LA window and stride, array order (D, H, W).
PAPER_WINDOW = (80, 112, 112)
PAPER_STRIDE = (4, 18, 18)
#: The default window overlap of the V-Net (predict, review, the confidence stage), chosen from
#: bench/results/inference_cost.md.
DEFAULT_OVERLAP = 0.5
#: The default window overlap of SAM's pseudo-labelling (stage F's, unchanged; not measured there).
SAM_OVERLAP = 0.25
#: The largest overlap accepted: at most 10 windows cover a voxel along an axis.
MAX_OVERLAP = 0.9
#: Named strides.
STRIDE_PRESETS = ("paper",)
#: Ways to average overlapping windows.
BLENDS = ("constant", "gaussian")


@dataclass(frozen=True)
class Overlap:
    """A stride given as the overlap of neighbouring windows, a fraction of the window (what
    ``--overlap`` puts where a stride goes, so that every stride-taking function accepts it)."""

    fraction: float


def window_starts(size: int, window: int, stride: int) -> list:
    """Start positions of windows of ``window`` voxels covering ``size`` voxels at ``stride``."""
    if size <= window:
        return [0]
    n = math.ceil((size - window) / stride) + 1
    return sorted({min(i * stride, size - window) for i in range(n)})


def check_overlap(overlap: float, option: str = "--overlap") -> float:
    """``overlap`` as a float in ``[0, MAX_OVERLAP]``, else :class:`SFRError` naming ``option``."""
    try:
        value = float(overlap)
    except (TypeError, ValueError):
        raise SFRError(f"{option} must be a number in [0, {MAX_OVERLAP}], got {overlap!r}") from None
    if not 0.0 <= value <= MAX_OVERLAP:  # also refuses nan
        raise SFRError(f"{option} must be in [0, {MAX_OVERLAP}] (a fraction of the window), got {overlap}")
    return value


def overlap_stride(window: Sequence[int], overlap: float) -> tuple:
    """The stride of windows overlapping by ``overlap`` (a fraction of the window)."""
    overlap = check_overlap(overlap)
    return tuple(max(1, math.ceil(round(int(w) * (1.0 - overlap), 6))) for w in window)


def paper_stride(window: Sequence[int]) -> tuple:
    """The paper's stride scaled to ``window``: (4, 18, 18) for (80, 112, 112)."""
    return tuple(max(1, round(int(w) * s / p)) for w, s, p in zip(window, PAPER_STRIDE, PAPER_WINDOW))


def resolve_stride(window: Sequence[int], stride=None, overlap: "float | None" = None) -> tuple:
    """The stride for ``window`` from an explicit ``stride`` (three ints, a preset name or an
    :class:`Overlap`), an ``overlap`` fraction, or neither (:data:`DEFAULT_OVERLAP`); giving both
    is an error."""
    window = tuple(int(w) for w in window)
    if stride is not None and overlap is not None:
        raise SFRError("give --stride or --overlap, not both")
    if isinstance(stride, Overlap):
        stride, overlap = None, stride.fraction
    if stride is None:
        return overlap_stride(window, DEFAULT_OVERLAP if overlap is None else overlap)
    if isinstance(stride, str):
        if stride != "paper":
            raise SFRError(f"--stride must be three positive integers or one of {', '.join(STRIDE_PRESETS)}, got {stride!r}")
        return paper_stride(window)
    stride = tuple(int(s) for s in stride)
    if len(stride) != len(window) or any(s < 1 for s in stride):
        raise SFRError(f"--stride {list(stride)} must be {len(window)} positive integers")
    return stride


def window_corners(shape: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> list:
    """Every window's first voxel ``(z, y, x)``, in raster order."""
    starts = [window_starts(int(s), int(w), int(st)) for s, w, st in zip(shape, window, stride)]
    return [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]


def count_windows(shape: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> int:
    """How many windows cover a volume of ``shape`` (after padding to the window)."""
    return int(np.prod([len(window_starts(max(int(s), int(w)), int(w), int(st)))
                        for s, w, st in zip(shape, window, stride)]))


def gaussian_weights(window: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """A window's blending weights: a Gaussian of sigma ``sigma_scale * window`` centred on the
    window, scaled to 1 at the centre and kept above 1e-3 so that every voxel counts."""
    axes = []
    for w in window:
        x = np.arange(int(w), dtype=np.float64) - (int(w) - 1) / 2.0
        sigma = max(sigma_scale * int(w), 1e-6)
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(weights / weights.max(), 1e-3).astype(np.float32)


def _pad(array: np.ndarray, window, pad: str, value: float):
    """Pad ``array`` up to ``window`` where smaller: ``center`` (split evenly) or ``end``."""
    extra = [max(0, int(w) - s) for w, s in zip(window, array.shape)]
    widths = [(e // 2, e - e // 2) if pad == "center" else (0, e) for e in extra]
    if any(extra):
        array = np.pad(array, widths, constant_values=value)
    return array, widths


def sliding_window(
    array: np.ndarray,
    window: Sequence[int],
    stride: Sequence[int],
    predictor: Callable,
    batch: int = 4,
    blend: str = "constant",
    pad: str = "center",
    should_stop: "Callable[[], bool] | None" = None,
) -> np.ndarray:
    """Probabilities ``[K, D, H, W]`` (float32) of ``array`` (``[D, H, W]``) from windows.

    ``predictor(tiles, corners)`` gets ``tiles`` (float32 ``[n, *window]``) and their first voxels
    in the padded volume, and returns ``[n, K, *window]`` probabilities (numpy or torch).  A volume
    smaller than the window is padded with zeros (``pad``: ``center`` or at the ``end``) and the
    padding cut away afterwards.  Windows are averaged where they overlap, with ``blend`` weights.
    """
    if blend not in BLENDS:
        raise SFRError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    window = tuple(int(w) for w in window)
    shape = array.shape
    padded, widths = _pad(np.asarray(array, dtype=np.float32), window, pad, 0.0)
    corners = window_corners(padded.shape, window, stride)
    weights = gaussian_weights(window) if blend == "gaussian" else np.ones(window, dtype=np.float32)
    acc, total = None, np.zeros(padded.shape, dtype=np.float32)
    step = max(1, int(batch))
    for i in range(0, len(corners), step):
        if should_stop is not None and should_stop():
            raise Cancelled("sliding-window inference stopped")
        group = corners[i : i + step]
        tiles = np.stack([padded[z : z + window[0], y : y + window[1], x : x + window[2]] for z, y, x in group])
        prob = predictor(np.ascontiguousarray(tiles), group)
        prob = prob.detach().float().cpu().numpy() if hasattr(prob, "detach") else np.asarray(prob, dtype=np.float32)
        if acc is None:
            acc = np.zeros((prob.shape[1], *padded.shape), dtype=np.float32)
        for p, (z, y, x) in zip(prob, group):
            region = (slice(z, z + window[0]), slice(y, y + window[1]), slice(x, x + window[2]))
            acc[(slice(None), *region)] += p * weights if blend == "gaussian" else p
            total[region] += weights
    acc /= total[None]
    inner = tuple(slice(before, before + s) for (before, _), s in zip(widths, shape))
    return np.ascontiguousarray(acc[(slice(None), *inner)])
