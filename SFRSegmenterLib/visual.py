"""Pictures a person looks at: mosaics with outlined labels, overlays (PNG via Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Outline colours for label values 1, 2, ... (RGB).
LABEL_COLORS = [(255, 64, 64), (64, 220, 64), (80, 160, 255), (255, 200, 0), (220, 80, 255)]


def to_uint8(image: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5, mask=None) -> np.ndarray:
    """Window an intensity image to 0..255 between two percentiles (of ``mask`` voxels)."""
    values = image[mask] if mask is not None and mask.any() else image
    lo, hi = np.percentile(values, [lo_pct, hi_pct]) if values.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def outline(label: np.ndarray) -> np.ndarray:
    """Pixels of each labelled region that touch another value (4-neighbourhood), 2D."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    return edge & (label > 0)


def overlay_rgb(gray_u8: np.ndarray, label: "np.ndarray | None" = None, ignore: int | None = None) -> np.ndarray:
    """RGB image of ``gray_u8`` with ``label`` outlines drawn in colour."""
    rgb = np.repeat(gray_u8[..., None], 3, axis=-1)
    if label is None:
        return rgb
    lab = label.astype(np.int64)
    if ignore is not None:
        lab = np.where(lab == ignore, 0, lab)
    edge = outline(lab)
    for value in np.unique(lab[edge]):
        color = LABEL_COLORS[(int(value) - 1) % len(LABEL_COLORS)]
        rgb[edge & (lab == value)] = color
    return rgb


def save_png(rgb: np.ndarray, path: "str | Path") -> Path:
    from PIL import Image

    from .io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG")
    return path


def side_by_side(images: list, gap: int = 8, value: int = 40) -> np.ndarray:
    """Join equally tall RGB images left to right with a gap."""
    h = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        if i:
            parts.append(np.full((h, gap, 3), value, dtype=np.uint8))
        parts.append(im)
    return np.concatenate(parts, axis=1)
