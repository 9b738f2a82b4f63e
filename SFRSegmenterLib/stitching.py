"""Stitching: lay the slices of a volume out as one (or a few) large 2D mosaics.

A :class:`StitchPlan` is computed once from the volume (or crop) shape ``(D, H, W)`` and the
backbone's square canvas size.  Slice ``k`` (``volume[..., k, :, :]``) goes to grid cell
``k`` counted row by row; cells are the slice (optionally scaled in-plane) plus ``pad`` pixels
on each side; the grid is centred on the canvas.  When the grid is a little larger than the
canvas (the SFR LA layout: 9 x 114 = 1026 on a 1024 canvas) only padding is cut off, so
:func:`unstitch` returns the input exactly.  When a canvas cannot hold all slices, consecutive
slices go to several canvases ("slabs").

Both functions work on numpy arrays and torch tensors (any device, any leading batch or class
dimensions) with reshapes and transposes only: no Python loop over pixels or slices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

#: Label value written into padding and empty cells; losses ignore it.
IGNORE_INDEX = 255


@dataclass(frozen=True)
class StitchPlan:
    """Where every slice of a ``(D, H, W)`` volume goes on ``slabs`` canvases."""

    shape: tuple  # (D, H, W) of the volume or crop
    canvas: int  # square canvas side in pixels
    rows: int
    cols: int
    slabs: int
    cell: tuple  # (h, w) of one cell: scaled slice + 2 * pad
    pad: tuple  # (pad_h, pad_w) on each side of a slice inside its cell
    offset: tuple  # (y, x) of the grid's top-left corner on the canvas (negative: cropped pad)
    scaled: tuple  # (h, w) of a slice after in-plane scaling (== (H, W) when scale is 1)

    # ------------------------------------------------------------------ derived
    @property
    def depth(self) -> int:
        return int(self.shape[0])

    @property
    def cells_per_slab(self) -> int:
        return self.rows * self.cols

    @property
    def is_native(self) -> bool:
        """True when slices keep their resolution (unstitch is then exact)."""
        return tuple(self.scaled) == tuple(self.shape[1:])

    @property
    def scale(self) -> tuple:
        return (self.scaled[0] / self.shape[1], self.scaled[1] / self.shape[2])

    def slab_of(self, k: int) -> tuple:
        """(slab, row, col) of slice ``k``."""
        slab, rest = divmod(k, self.cells_per_slab)
        row, col = divmod(rest, self.cols)
        return slab, row, col

    def cell_box(self, k: int) -> tuple:
        """(slab, y0, x0, y1, x1): the slice's pixels on its canvas (may extend past it)."""
        slab, row, col = self.slab_of(k)
        y0 = self.offset[0] + row * self.cell[0] + self.pad[0]
        x0 = self.offset[1] + col * self.cell[1] + self.pad[1]
        return slab, y0, x0, y0 + self.scaled[0], x0 + self.scaled[1]

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["cells_per_slab"] = self.cells_per_slab
        d["native"] = self.is_native
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StitchPlan":
        fields = cls.__dataclass_fields__
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})


def _fit_pad(n: int, size: int, canvas: int, pad: int | None) -> tuple:
    """Padding per side and grid offset for ``n`` cells of ``size`` px along one axis."""
    if pad is None:
        pad = max(0, int(round((canvas / n - size) / 2)))
        # Only padding may be cut: the overflow on each side must stay within one pad.
        while pad > 0 and n * (size + 2 * pad) - canvas > 2 * pad:
            pad -= 1
    total = n * (size + 2 * pad)
    overflow = total - canvas
    if overflow > 2 * pad:
        raise ValueError(
            f"{n} cells of {size}+2*{pad} px need {total} px, more than the {canvas} px canvas"
        )
    offset = (canvas - total) // 2 if overflow <= 0 else -(overflow // 2)
    return pad, offset


def make_plan(
    shape: Sequence[int],
    canvas: int = 1024,
    *,
    grid: "Sequence[int] | None" = None,
    scale: "float | None" = None,
    pad: "int | None" = None,
) -> StitchPlan:
    """Compute the stitching plan for a volume of ``shape = (D, H, W)``.

    * ``grid=(rows, cols)`` fixes the grid (slices beyond ``rows*cols`` go to further slabs);
      with no ``scale`` the slices are then scaled in-plane to fit (never enlarged).
    * ``scale`` scales slices in-plane (e.g. 0.5 for half resolution).
    * Otherwise slices keep their native resolution and the grid is the smallest near-square
      one that holds all slices on one canvas, or as many slabs as needed.
    * ``pad`` (per side) defaults to centring each slice in an equal share of the canvas.
    """
    D, H, W = (int(s) for s in shape)
    if min(D, H, W) < 1:
        raise ValueError(f"cannot stitch an empty volume of shape {tuple(shape)}")
    canvas = int(canvas)
    if grid is not None:
        rows, cols = (int(g) for g in grid)
        if rows < 1 or cols < 1:
            raise ValueError(f"grid must be positive, got {grid}")
        if scale is None:
            scale = min(1.0, (canvas // rows) / H, (canvas // cols) / W)
    scale = 1.0 if scale is None else float(scale)
    if not 0 < scale:
        raise ValueError(f"scale must be positive, got {scale}")
    sh, sw = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
    if sh > canvas or sw > canvas:
        raise ValueError(
            f"a {H}x{W} slice scaled by {scale:g} ({sh}x{sw}) does not fit a {canvas} px canvas; "
            "use a smaller scale"
        )
    if grid is None:
        max_rows, max_cols = canvas // sh, canvas // sw
        per_slab = max_rows * max_cols
        slabs = math.ceil(D / per_slab)
        n = math.ceil(D / slabs)  # balance slices over slabs
        # near-square grid in pixels: cols/rows ~ sh/sw
        cols = min(max_cols, max(1, math.ceil(math.sqrt(n * sh / sw))))
        rows = math.ceil(n / cols)
        if rows > max_rows:
            rows = max_rows
            cols = math.ceil(n / rows)
        # drop a column that the grid does not need
        while cols > 1 and rows * (cols - 1) >= n:
            cols -= 1
    else:
        if rows * sh > canvas or cols * sw > canvas:
            raise ValueError(f"a {rows}x{cols} grid of {sh}x{sw} cells exceeds {canvas} px")
        slabs = math.ceil(D / (rows * cols))
    pad_h, off_y = _fit_pad(rows, sh, canvas, pad)
    pad_w, off_x = _fit_pad(cols, sw, canvas, pad)
    return StitchPlan(
        shape=(D, H, W),
        canvas=canvas,
        rows=rows,
        cols=cols,
        slabs=slabs,
        cell=(sh + 2 * pad_h, sw + 2 * pad_w),
        pad=(pad_h, pad_w),
        offset=(off_y, off_x),
        scaled=(sh, sw),
    )


# --------------------------------------------------------------------------- backends


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _pad_last2(x, top, bottom, left, right, value):
    """Pad (positive) or crop (negative) the last two axes."""
    if _is_torch(x):
        import torch.nn.functional as F

        if x.dtype == __import__("torch").bool:
            x = x.to(__import__("torch").uint8)
        return F.pad(x, (left, right, top, bottom), value=value)
    crop = [slice(None)] * x.ndim
    crop[-2] = slice(max(0, -top), x.shape[-2] - max(0, -bottom))
    crop[-1] = slice(max(0, -left), x.shape[-1] - max(0, -right))
    x = x[tuple(crop)]
    widths = [(0, 0)] * (x.ndim - 2) + [(max(0, top), max(0, bottom)), (max(0, left), max(0, right))]
    return np.pad(x, widths, constant_values=value)


def _pad_axis(x, axis: int, after: int, value):
    """Append ``after`` entries filled with ``value`` along ``axis`` (numpy or torch)."""
    if after == 0:
        return x
    shape = list(x.shape)
    shape[axis] = after
    if _is_torch(x):
        import torch

        fill = torch.full(shape, value, dtype=x.dtype, device=x.device)
        return torch.cat([x, fill], dim=axis)
    return np.concatenate([x, np.full(shape, value, dtype=x.dtype)], axis=axis)


def _permute(x, order):
    return x.permute(*order) if _is_torch(x) else x.transpose(order)


def _resize(x, size, mode: str):
    """Resize the last two axes of ``x`` to ``size``; ``mode`` 'nearest' or 'bilinear'."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    import torch
    import torch.nn.functional as F

    is_t = _is_torch(x)
    t = x if is_t else torch.from_numpy(np.ascontiguousarray(x))
    lead = t.shape[:-2]
    flat = t.reshape((-1, 1) + tuple(t.shape[-2:]))
    dtype = flat.dtype
    work = flat.float() if mode == "nearest" else flat.to(torch.float32)
    if mode == "nearest":
        out = F.interpolate(work, size=tuple(size), mode="nearest-exact")
    else:
        out = F.interpolate(work, size=tuple(size), mode="bilinear", align_corners=False)
    out = out.to(dtype).reshape(tuple(lead) + tuple(size))
    return out if is_t else out.numpy()


# --------------------------------------------------------------------------- stitch


def stitch(volume, plan: StitchPlan, fill=0, mode: str = "bilinear"):
    """Stitch ``volume[..., D, H, W]`` into canvases ``[..., slabs, canvas, canvas]``.

    ``fill`` goes into padding and empty cells: 0 for images and probabilities,
    :data:`IGNORE_INDEX` for labels.  ``mode`` is the in-plane resampling used when the plan
    scales slices: 'bilinear' for images and probabilities, 'nearest' for labels.
    """
    D, H, W = plan.shape
    if tuple(volume.shape[-3:]) != (D, H, W):
        raise ValueError(f"volume shape {tuple(volume.shape)} does not match plan {plan.shape}")
    lead = tuple(volume.shape[:-3])
    nl = len(lead)
    x = _resize(volume, plan.scaled, mode)
    x = _pad_last2(x, plan.pad[0], plan.pad[0], plan.pad[1], plan.pad[1], fill)
    ch, cw = plan.cell
    n_cells = plan.slabs * plan.rows * plan.cols
    x = _pad_axis(x, nl, n_cells - D, fill)  # empty cells after the last slice
    x = x.reshape(lead + (plan.slabs, plan.rows, plan.cols, ch, cw))
    # [..., S, R, C, ch, cw] -> [..., S, R, ch, C, cw]
    order = list(range(nl)) + [nl, nl + 1, nl + 3, nl + 2, nl + 4]
    x = _permute(x, order).reshape(lead + (plan.slabs, plan.rows * ch, plan.cols * cw))
    oy, ox = plan.offset
    return _pad_last2(
        x,
        oy,
        plan.canvas - oy - plan.rows * ch,
        ox,
        plan.canvas - ox - plan.cols * cw,
        fill,
    )


def unstitch(canvases, plan: StitchPlan, mode: str = "bilinear"):
    """Inverse of :func:`stitch`: ``[..., slabs, canvas, canvas]`` -> ``[..., D, H, W]``.

    Exact when the plan keeps native resolution; otherwise cells are resampled back to the
    slice size (``mode`` 'bilinear' for probabilities, 'nearest' for labels).
    """
    if tuple(canvases.shape[-3:]) != (plan.slabs, plan.canvas, plan.canvas):
        raise ValueError(
            f"canvas shape {tuple(canvases.shape)} does not match plan "
            f"({plan.slabs}, {plan.canvas}, {plan.canvas})"
        )
    lead = tuple(canvases.shape[:-3])
    nl = len(lead)
    ch, cw = plan.cell
    oy, ox = plan.offset
    # undo the canvas placement: the cropped pad comes back as zeros, it is dropped below
    x = _pad_last2(
        canvases,
        -oy,
        plan.rows * ch - plan.canvas + oy,
        -ox,
        plan.cols * cw - plan.canvas + ox,
        0,
    )
    x = x.reshape(lead + (plan.slabs, plan.rows, ch, plan.cols, cw))
    order = list(range(nl)) + [nl, nl + 1, nl + 3, nl + 2, nl + 4]
    x = _permute(x, order).reshape(lead + (plan.slabs * plan.rows * plan.cols, ch, cw))
    ph, pw = plan.pad
    x = x[..., : plan.depth, ph : ph + plan.scaled[0], pw : pw + plan.scaled[1]]
    x = _resize(x, plan.shape[1:], mode)
    if _is_torch(x):
        return x.contiguous()
    return np.ascontiguousarray(x)
