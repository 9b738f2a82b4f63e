"""Partially labeled cases: a segmentation drawn on some slices only, exported with 255 elsewhere.

The engine reads a label voxel of 255 as "not annotated" (:mod:`SFRSegmenterLib.sparse`): both
training losses ignore it.  A case marked *partially labeled* (:func:`set_partial`, an attribute
on its segmentation node) is exported with every slice that carries no annotation set to 255.
A slice (index ``k`` of the volume's IJK grid, the engine's first array axis) is annotated when

* one of the case's class segments has a voxel on it (the user drew there), or
* the user marked it "annotated, nothing there" (:func:`mark_empty`): background on the whole
  slice, or
* it was marked annotated for another reason (:func:`mark_annotated`).

:func:`save_corrected_slices` is Save correction for a pseudo-label of which the user corrected a
few (flagged) slices: the slices whose voxels differ from the run's pseudo-label, plus the slices
the user marked, become annotated slices of the case (added to those it already had); the case
is labeled with 255 on every other slice, so the rest of the pseudo-label is never taken as
ground truth.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from SFRSegmenterLib import runfolder
from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.io import read_label
from SFRSegmenterLib.manifest import load_project
from SFRSegmenterLib.sparse import NOT_ANNOTATED, annotated_slice_indices

from .nodes import content_sha, ijk_to_ras, labelmap_like, remove_node, segmentation_to_label, write_node

ATTR_PARTIAL = "SFR.PartiallyLabeled"
ATTR_EMPTY = "SFR.EmptySlices"  # JSON list: slices annotated as background only
ATTR_ANNOTATED = "SFR.AnnotatedSlices"  # JSON list: slices annotated whatever their drawing


def is_partial(segmentation_node) -> bool:
    return segmentation_node is not None and segmentation_node.GetAttribute(ATTR_PARTIAL) == "1"


def set_partial(segmentation_node, partial: bool = True) -> None:
    """Mark (or unmark) the case of ``segmentation_node`` as partially labeled."""
    if partial:
        segmentation_node.SetAttribute(ATTR_PARTIAL, "1")
    else:
        segmentation_node.RemoveAttribute(ATTR_PARTIAL)


def _slices(node, attr: str) -> list:
    text = node.GetAttribute(attr)
    try:
        return sorted({int(k) for k in json.loads(text)}) if text else []
    except (TypeError, ValueError):
        return []


def _set_slices(node, attr: str, slices) -> None:
    node.SetAttribute(attr, json.dumps(sorted({int(k) for k in slices})))


def _check_slice(reference, k: int) -> int:
    depth = reference.GetImageData().GetDimensions()[2]
    if not 0 <= int(k) < depth:
        raise SFRError(f"slice {k} is outside {reference.GetName()!r} (0..{depth - 1})")
    return int(k)


def mark_empty(segmentation_node, reference, k: int, empty: bool = True) -> list:
    """Slice ``k``: "annotated, nothing there" (or not any more); marks the case partially labeled.
    Returns the slices so marked."""
    k = _check_slice(reference, k)
    marked = set(_slices(segmentation_node, ATTR_EMPTY))
    marked = marked | {k} if empty else marked - {k}
    _set_slices(segmentation_node, ATTR_EMPTY, marked)
    set_partial(segmentation_node)
    return sorted(marked)


def mark_annotated(segmentation_node, reference, slices) -> list:
    """Slices annotated whatever is drawn on them (a corrected or confirmed flagged slice)."""
    slices = {_check_slice(reference, k) for k in slices}
    _set_slices(segmentation_node, ATTR_ANNOTATED, set(_slices(segmentation_node, ATTR_ANNOTATED)) | slices)
    set_partial(segmentation_node)
    return sorted(slices)


def drawn_slices(label: np.ndarray) -> list:
    """Slices of a label array ``[k, j, i]`` holding a class voxel."""
    return [int(k) for k in np.flatnonzero((label > 0).reshape(label.shape[0], -1).any(axis=1))]


def annotated(segmentation_node, label: np.ndarray) -> list:
    """The annotated slices of a partially labeled case with ``label`` (its drawing)."""
    marked = set(_slices(segmentation_node, ATTR_EMPTY)) | set(_slices(segmentation_node, ATTR_ANNOTATED))
    return sorted(set(drawn_slices(label)) | {k for k in marked if 0 <= k < label.shape[0]})


def with_unannotated(label: np.ndarray, slices) -> np.ndarray:
    """``label`` with every slice not in ``slices`` set to 255 (not annotated); an empty-marked
    slice keeps its background."""
    out = np.full_like(label, NOT_ANNOTATED)
    keep = sorted(set(int(k) for k in slices))
    out[keep] = label[keep]
    return out


def partial_label(scene, segmentation_node, reference, classes: list, add_classes: bool = True) -> np.ndarray:
    """The label of a partially labeled case: its classes on its annotated slices, 255 elsewhere."""
    label = segmentation_to_label(scene, segmentation_node, reference, classes, add_classes=add_classes)
    slices = annotated(segmentation_node, label)
    if not slices:
        raise SFRError(f"the partially labeled segmentation {segmentation_node.GetName()!r} has no annotated "
                       "slice: draw on a slice or mark one 'annotated, nothing there'")
    return with_unannotated(label, slices)


# --------------------------------------------------------------------------- corrected flagged slices


def _write_label(scene, reference, label: np.ndarray, target: Path) -> str:
    node = labelmap_like(scene, reference, label)
    try:
        write_node(scene, node, target)
    finally:
        remove_node(scene, node)
    return content_sha(label, ijk_to_ras(reference))


def save_corrected_slices(scene, project_dir: "str | os.PathLike", case: str, segmentation_node, reference,
                          run_id: "str | None" = None) -> dict:
    """Save correction, slice-wise: the slices where ``segmentation_node`` (an edited pseudo-label
    of ``case``) differs from the run's pseudo-label, and the slices marked on it, become annotated
    slices of the case (with those it had); every other slice of its label is 255.  The label and
    its provenance go through :func:`.provenance.accept_case` (which never replaces a user's label).
    Returns the provenance record, with ``annotated_slices``."""
    from .export import slicer_state
    from .provenance import accept_case

    root = Path(project_dir)
    project = load_project(root)
    run_path = runfolder.run_dir(root, run_id)
    pseudo = read_label(runfolder.case_file(run_path, case)).array
    now = segmentation_to_label(scene, segmentation_node, reference, list(project.classes), add_classes=False)
    if now.shape != pseudo.shape:
        raise SFRError(f"the segmentation of case {case!r} is not on its pseudo-label's grid")
    changed = [int(k) for k in np.flatnonzero((now != pseudo).reshape(now.shape[0], -1).any(axis=1))]
    marked = set(_slices(segmentation_node, ATTR_EMPTY)) | set(_slices(segmentation_node, ATTR_ANNOTATED))
    before = []
    if case in slicer_state(project)["provenance"] and project.case(case).label:
        old = project.label_path(project.case(case))
        if old.exists():
            before = annotated_slice_indices(read_label(old).array)
    slices = sorted(set(changed) | marked | set(before))
    if not slices:
        raise SFRError(f"no corrected slice in case {case!r}: edit a flagged slice, or mark it annotated")
    record = accept_case(scene, root, case, run_path.name, segmentation_node, reference)
    project = load_project(root)  # accept_case labeled the case: labels/<case>.nii.gz
    digest = _write_label(scene, reference, with_unannotated(now, slices), project.label_path(project.case(case)))
    record = slicer_state(project)["provenance"][case]
    record.update(sha256=digest, annotated_slices=slices)  # source stays "corrected"
    project.save()
    set_partial(segmentation_node)
    mark_annotated(segmentation_node, reference, slices)
    return record
