"""The stitching layout of a fine-tuned model: canvas, crop (= inference window), grid, scale.

Training samples crops of ``crop = (D, H, W)`` voxels and stitches each crop with one
:class:`~SFRSegmenterLib.stitching.StitchPlan`; inference slides the same window over the
whole volume (window positions: :mod:`SFRSegmenterLib.sliding`, shared with the V-Net).  A crop larger than the volumes is cut to the largest volume extent; volumes
smaller than the crop are padded (image 0, label IGNORE_INDEX).  A crop given explicitly is
kept as given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..stitching import StitchPlan, make_plan


@dataclass(frozen=True)
class Layout:
    canvas: int
    crop: tuple  # (D, H, W)
    grid: "tuple | None" = None  # (rows, cols); None: native-resolution grid chosen by make_plan
    scale: "float | None" = None

    def plan(self) -> StitchPlan:
        return make_plan(self.crop, self.canvas, grid=self.grid, scale=self.scale)

    def to_dict(self) -> dict:
        return {
            "canvas": self.canvas,
            "crop": list(self.crop),
            "grid": None if self.grid is None else list(self.grid),
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        return cls(
            int(d["canvas"]),
            tuple(int(v) for v in d["crop"]),
            None if d.get("grid") is None else tuple(int(v) for v in d["grid"]),
            d.get("scale"),
        )


def resolve_layout(canvas: int, crop, grid, scale, shapes, cut: bool = True) -> Layout:
    """The layout; with ``cut``, ``crop`` is cut to the largest extent of ``shapes`` per axis."""
    if cut:
        biggest = np.max(np.asarray([tuple(s) for s in shapes]), axis=0)
        crop = tuple(int(min(c, b)) for c, b in zip(crop, biggest))
    else:
        crop = tuple(int(c) for c in crop)
    return Layout(int(canvas), crop, None if grid is None else tuple(int(g) for g in grid), scale)


def pad_to(array: np.ndarray, shape, value) -> np.ndarray:
    """Pad the last three axes at their end up to ``shape`` (no-op where already larger)."""
    extra = [max(0, int(s) - a) for s, a in zip(shape, array.shape[-3:])]
    if not any(extra):
        return array
    widths = [(0, 0)] * (array.ndim - 3) + [(0, e) for e in extra]
    return np.pad(array, widths, constant_values=value)

