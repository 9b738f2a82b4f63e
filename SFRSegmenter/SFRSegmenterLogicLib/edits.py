"""Unsaved edits to the pseudo-labels: found before a run, an Accept or a reload drops them.

A pseudo-label node records a digest of its content when it is loaded and when its correction is
saved (:func:`mark_saved`).  The content is each class segment's name and voxels (where its
binary labelmap holds its label value, and the grid's geometry); colours, opacity, the labelmap's
extent and the ``low confidence`` segment are not content.  Painting and then undoing leaves the digest as it
was, so only real changes count.
"""

from __future__ import annotations

import hashlib

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from .nodes import ATTR_CASE, ATTR_KIND, KIND_PSEUDO, is_low_confidence_segment, nodes_of_class, segment_ids

ATTR_SAVED = "SFR.SavedContent"


def _labelmap_digest(h, image, label_value: int) -> None:
    """Where the segment is: its voxels inside their bounding box, placed by whole-grid IJK
    indices (so a labelmap padded, cropped or shared with other segments digests the same), and
    the grid's geometry."""
    if image is None or image.GetPointData().GetScalars() is None:
        return
    e = image.GetExtent()
    if e[1] < e[0] or e[3] < e[2] or e[5] < e[4]:
        return  # an empty segment
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    h.update(np.round([matrix.GetElement(r, c) for r in range(4) for c in range(4)], 6).tobytes())
    voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    mask = voxels == label_value
    box = []
    for axis in range(3):  # the mask's bounding box: the same voxels digest alike in any extent
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            return
        box.append((int(hits[0]), int(hits[-1]) + 1))
    origin = np.array([box[0][0] + e[4], box[1][0] + e[2], box[2][0] + e[0]], dtype=np.int64)
    cropped = mask[box[0][0]:box[0][1], box[1][0]:box[1][1], box[2][0]:box[2][1]]
    h.update(origin.tobytes() + np.asarray(cropped.shape, dtype=np.int64).tobytes())
    h.update(np.packbits(cropped).tobytes())


def content_digest(segmentation_node) -> str:
    """A digest of the class segments' names and voxels."""
    h = hashlib.sha256()
    segmentation = segmentation_node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    for sid in segment_ids(segmentation_node):
        segment = segmentation.GetSegment(sid)
        if is_low_confidence_segment(segment):
            continue
        h.update(sid.encode() + b"\0" + segment.GetName().encode() + b"\0")
        _labelmap_digest(h, segment.GetRepresentation(name), int(segment.GetLabelValue()))
    return h.hexdigest()


def mark_saved(segmentation_node) -> None:
    """The node's content as it is now is saved (loaded from the run, or saved as a correction)."""
    segmentation_node.SetAttribute(ATTR_SAVED, content_digest(segmentation_node))


def has_unsaved_edits(segmentation_node) -> bool:
    saved = segmentation_node.GetAttribute(ATTR_SAVED)
    return saved is not None and saved != content_digest(segmentation_node)


def unsaved_results(scene) -> list:
    """``(case, node)`` for every pseudo-label node whose edits were not saved as a correction."""
    return [(node.GetAttribute(ATTR_CASE), node) for node in nodes_of_class(scene, "vtkMRMLSegmentationNode")
            if node.GetAttribute(ATTR_KIND) == KIND_PSEUDO and has_unsaved_edits(node)]


def unsaved_message(unsaved: list, action: str) -> str:
    """One warning naming the cases whose edits ``action`` would leave out."""
    names = ", ".join(sorted(str(case) for case, _ in unsaved))
    return (f"These pseudo-labels have edits that were not saved as a correction: {names}. "
            f"{action} does not use them; press Save correction first to keep them.")


# --------------------------------------------------------------------------- the embedded Segment Editor

#: Singleton tag of the module's own Segment Editor parameter node (the Segment Editor module
#: keeps its own under "SegmentEditor"; sharing it would change the user's editor settings).
EDITOR_SINGLETON_TAG = "SFRSegmenterEditor"


def editor_node(scene):
    """The parameter node of the panel's Segment Editor (one per scene, created once; Slicer's
    default editor settings, so painting a class erases the other classes there)."""
    node = scene.GetSingletonNode(EDITOR_SINGLETON_TAG, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = slicer.vtkMRMLSegmentEditorNode()
        node.SetSingletonTag(EDITOR_SINGLETON_TAG)
        node = scene.AddNode(node)
    return node


def editing_target(result) -> tuple:
    """(segmentation node, source volume, segment ID to select) for correcting a loaded result:
    its pseudo-label on its own volume, the first class segment selected."""
    segmentation = result.segmentation.GetSegmentation()
    for sid in segment_ids(result.segmentation):
        if not is_low_confidence_segment(segmentation.GetSegment(sid)):
            return result.segmentation, result.reference, sid
    return result.segmentation, result.reference, ""
