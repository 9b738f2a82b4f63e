"""Review in the slice views: the flagged slices (worst first, across cases), moving through them,
and the low-confidence overlay.

* :func:`flagged_slices` turns a run's review entries into the table's rows, least confident
  first across all cases; :func:`step` moves through them (next / previous, wrapping) and
  :func:`show_flagged` shows a row: its case's pseudo-label, its volume, the slice.
* :func:`show_low_confidence` colours only the voxels whose confidence is below a threshold (the
  rest of the confidence map is transparent: the display node's threshold) over the case's
  volume; the foreground layer and opacity each view had before are remembered on the view and
  put back by :func:`hide_low_confidence`.
"""

from __future__ import annotations

import json

import numpy as np

from SFRSegmenterLib.errors import SFRError

from .nodes import ijk_to_ras, nodes_of_class

#: Attribute on a slice composite node holding the layers the overlay replaced.
ATTR_SAVED_LAYERS = "SFR.SavedLayers"
#: The overlay's defaults: voxels below this confidence are coloured, at this opacity.
DEFAULT_OPACITY = 0.6


def default_threshold() -> float:
    """The engine's low-confidence voxel threshold (what ``<case>_lowconf`` marks)."""
    from SFRSegmenterLib.confidence import VOXEL_THRESHOLD

    return float(VOXEL_THRESHOLD)


# --------------------------------------------------------------------------- cases


def case_label(case: str, entry: dict) -> str:
    """How the panel names a reviewed case: its estimated Dice first (what a reviewer sorts by),
    then its confidence; the bare name when the run measured neither."""
    parts = []
    if entry.get("estimated_dice") is not None:
        parts.append(f"estimated Dice {100 * float(entry['estimated_dice']):.0f} %")
    if entry.get("confidence") is not None:
        parts.append(f"confidence {float(entry['confidence']):.3f}")
    return f"{case} ({', '.join(parts)})" if parts else case


def review_order(results: list) -> list:
    """Results (with ``.case`` and ``.review``) lowest estimated Dice first, unestimated ones last."""
    def key(r):
        est = r.review.get("estimated_dice")
        return (est is None, float(est) if est is not None else 0.0, r.case)

    return sorted(results, key=key)


def case_menu(results: list) -> list:
    """``[(label, case)]`` of the panel's case menu: the loaded results in :func:`review_order`,
    each named by :func:`case_label`."""
    return [(case_label(r.case, r.review), r.case) for r in review_order(results)]


# --------------------------------------------------------------------------- flagged slices


def flagged_slices(review: dict) -> list:
    """Rows for the flagged-slices table: ``{"case", "index", "confidence", "trusted"}``,
    least confident first across all cases."""
    rows = []
    for case, entry in review.items():
        for s in entry.get("flagged_slices", []) or []:
            try:
                rows.append({"case": case, "index": int(s["index"]),
                             "confidence": float(s.get("confidence", float("nan"))), "trusted": entry.get("trusted")})
            except (KeyError, TypeError, ValueError):
                continue
    rows.sort(key=lambda r: (r["confidence"] if r["confidence"] == r["confidence"] else 2.0))
    return rows


def flagged_rows(results: list) -> list:
    """:func:`flagged_slices` of loaded results (each with ``.case`` and ``.review``)."""
    return flagged_slices({r.case: r.review for r in results})


def flagged_cells(row: dict) -> list:
    """The flagged-slices table's texts for one row: case, slice index, confidence, trusted."""
    trusted = row.get("trusted")
    return [row["case"], str(row["index"]), f"{row['confidence']:.3f}",
            "" if trusted is None else ("yes" if trusted else "no")]


def step(rows: list, position: int, delta: int = 1) -> int:
    """The row after (``delta=1``) or before (``-1``) ``position``, wrapping; -1 when no rows.
    From no position (-1), next is the worst row and previous the last."""
    if not rows:
        return -1
    if position < 0:
        return 0 if delta >= 0 else len(rows) - 1
    return (position + delta) % len(rows)


def show_case(scene, results: dict, case: str) -> object:
    """Show one case: its pseudo-label visible (the others of the loaded run hidden) and its
    volume as every view's background; returns its result."""
    result = results.get(case)
    if result is None:
        raise SFRError(f"case {case!r} has no loaded result")
    for other in results.values():
        display = other.segmentation.GetDisplayNode()
        if display is not None:
            display.SetVisibility(other is result)
    for composite in nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(result.reference.GetID())
    return result


def show_for_editing(scene, results: dict, case: str) -> tuple:
    """Show ``case`` (:func:`show_case`); what the panel's Segment Editor then edits
    (``edits.editing_target``: its pseudo-label, its volume, the first class segment)."""
    from .edits import editing_target

    return editing_target(show_case(scene, results, case))


def show_flagged(scene, results: dict, row: dict) -> tuple:
    """Show a flagged-slice row: its case (:func:`show_case`) with the views on its slice."""
    result = show_case(scene, results, row["case"])
    return jump_to_slice(scene, result.reference, row["index"])


def slice_center_ras(volume, k: int) -> tuple:
    """RAS of the centre of slice ``k`` (IJK) of ``volume``."""
    dims = volume.GetImageData().GetDimensions()
    if not 0 <= int(k) < dims[2]:
        raise SFRError(f"slice {k} is outside {volume.GetName()!r} (0..{dims[2] - 1})")
    ijk = np.array([(dims[0] - 1) / 2.0, (dims[1] - 1) / 2.0, float(k), 1.0])
    ras = ijk_to_ras(volume) @ ijk
    return tuple(float(v) for v in ras[:3])


def jump_to_slice(scene, volume, k: int) -> tuple:
    """Centre every slice view on slice ``k`` of ``volume``; returns the RAS point."""
    r, a, s = slice_center_ras(volume, k)
    for node in nodes_of_class(scene, "vtkMRMLSliceNode"):
        node.JumpSliceByCentering(r, a, s)
    return (r, a, s)


# --------------------------------------------------------------------------- low-confidence overlay


def show_low_confidence(scene, background, confidence, threshold: float | None = None,
                        opacity: float = DEFAULT_OPACITY) -> int:
    """Colour only ``confidence``'s voxels below ``threshold`` over ``background`` in every slice
    view (the other voxels are transparent); returns the number of views.

    The first time a view gets the overlay, its foreground layer and opacity are remembered on
    it; :func:`hide_low_confidence` puts them back.
    """
    threshold = default_threshold() if threshold is None else float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise SFRError(f"the confidence threshold must be in (0, 1], got {threshold}")
    if not 0.0 <= opacity <= 1.0:
        raise SFRError(f"the overlay opacity must be in [0, 1], got {opacity}")
    if confidence.GetDisplayNode() is None:
        confidence.CreateDefaultDisplayNodes()
    display = confidence.GetDisplayNode()
    display.SetApplyThreshold(1)
    display.SetLowerThreshold(0.0)
    display.SetUpperThreshold(threshold)
    display.AutoWindowLevelOff()
    low, _high = confidence.GetImageData().GetScalarRange()
    display.SetWindowLevelMinMax(min(float(low), threshold - 1e-3), threshold)  # the whole colour scale below it
    views = 0
    for composite in nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        if composite.GetAttribute(ATTR_SAVED_LAYERS) is None:
            saved = {"foreground": composite.GetForegroundVolumeID(), "opacity": composite.GetForegroundOpacity()}
            composite.SetAttribute(ATTR_SAVED_LAYERS, json.dumps(saved))
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(confidence.GetID())
        composite.SetForegroundOpacity(opacity)
        views += 1
    return views


def hide_low_confidence(scene) -> int:
    """Put back the foreground layer and opacity each view had before the overlay."""
    views = 0
    for composite in nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        text = composite.GetAttribute(ATTR_SAVED_LAYERS)
        if text is None:
            continue
        saved = json.loads(text)
        foreground = saved.get("foreground")
        composite.SetForegroundVolumeID(foreground if foreground and scene.GetNodeByID(foreground) else None)
        composite.SetForegroundOpacity(float(saved.get("opacity", 0.0)))
        composite.RemoveAttribute(ATTR_SAVED_LAYERS)
        views += 1
    return views


def update_overlay(scene, result, shown: bool, threshold: float | None = None, opacity: float = DEFAULT_OPACITY) -> int:
    """The overlay as the panel's controls ask: over ``result``'s volume (:func:`show_low_confidence`)
    when ``shown`` and the result has a confidence map; otherwise, and with no result, every view's
    own layers back (:func:`hide_low_confidence`).  The number of views changed."""
    if result is None or result.confidence is None or not shown:
        return hide_low_confidence(scene)
    return show_low_confidence(scene, result.reference, result.confidence, threshold, opacity)
