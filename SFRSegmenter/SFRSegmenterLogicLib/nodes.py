"""MRML helpers every part of the module uses: the attributes it sets, volumes through storage
nodes, geometry, and segmentation <-> label arrays.

Imports ``slicer`` (MRML classes), ``vtk``, ``numpy`` and the engine's plain-Python modules;
never Qt, CTK or ``ScriptedLoadableModule``, so it runs on ``slicer-core`` under pytest.

An engine array ``[z, y, x]`` is Slicer's ``[k, j, i]``: a flagged slice ``index`` is IJK ``k``.
Files are written through Slicer's storage nodes, so they carry the volume's IJK-to-RAS
geometry exactly (NIfTI stores it in LPS; the storage node converts).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import slicer
import vtk

from SFRSegmenterLib.errors import SFRError

#: Node attributes set on the nodes this module creates (never on the user's nodes).
ATTR_CASE = "SFR.Case"
ATTR_RUN = "SFR.Run"
ATTR_KIND = "SFR.Kind"
ATTR_PROJECT = "SFR.Project"
ATTR_ACCEPTED = "SFR.Accepted"
#: Segment tags.
TAG_KIND = "SFR.Kind"
TAG_CLASS = "SFR.Class"
TAG_RUN = "SFR.Run"
TAG_CASE = "SFR.Case"

KIND_PSEUDO = "pseudo_label"
KIND_LOWCONF = "low_confidence"
KIND_CONFIDENCE = "confidence"
KIND_IMAGE = "project_image"
#: A segmentation made by applying a run's network to a loaded volume (:mod:`.apply`).
KIND_PREDICTION = "prediction"

#: Segment colours by class value (class 1 first); Slicer-like soft tones.
CLASS_COLORS = [
    (0.945, 0.839, 0.569),
    (0.502, 0.682, 0.502),
    (0.847, 0.396, 0.310),
    (0.435, 0.722, 0.824),
    (0.694, 0.478, 0.396),
    (0.565, 0.933, 0.565),
    (0.862, 0.608, 0.870),
    (0.400, 0.600, 0.950),
]

_LOGICS: dict = {}


def class_color(value: int) -> tuple:
    return CLASS_COLORS[(int(value) - 1) % len(CLASS_COLORS)]


def segmentation_logic(scene):
    """The Segmentations module logic: Slicer's own in the app, else one bound to ``scene``."""
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "segmentations") and scene is getattr(slicer, "mrmlScene", None):
        return modules.segmentations.logic()
    key = id(scene)
    entry = _LOGICS.get(key)
    if entry is None or entry[0] is not scene:
        logic = slicer.vtkSlicerSegmentationsModuleLogic()
        logic.SetMRMLScene(scene)
        entry = (scene, logic)
        _LOGICS[key] = entry
    return entry[1]


# --------------------------------------------------------------------------- geometry


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtk_matrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def same_geometry(a, b, atol: float = 1e-4) -> bool:
    """True when two volume nodes share dimensions and IJK-to-RAS (NIfTI stores float32)."""
    ia, ib = a.GetImageData(), b.GetImageData()
    if ia is None or ib is None or tuple(ia.GetDimensions()) != tuple(ib.GetDimensions()):
        return False
    return bool(np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=atol, rtol=1e-5))


def volume_array(node) -> np.ndarray:
    """A copy of a volume node's voxels as ``[k, j, i]``."""
    return np.array(slicer.util.arrayFromVolume(node))


def content_sha(array: np.ndarray, matrix: np.ndarray) -> str:
    """A digest of voxels and geometry (to rewrite a project file only when it changed)."""
    h = hashlib.sha256()
    h.update(str((array.dtype.str, array.shape)).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    h.update(np.round(matrix, 6).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- nodes in the scene


def nodes_of_class(scene, class_name: str) -> list:
    col = scene.GetNodesByClass(class_name)
    return [col.GetItemAsObject(i) for i in range(col.GetNumberOfItems())]


def is_ours(node) -> bool:
    """A node this module made (a result, a project image), not one of the user's."""
    return node.GetAttribute(ATTR_KIND) is not None


def node_ids(scene) -> set:
    col = scene.GetNodes()
    return {col.GetItemAsObject(i).GetID() for i in range(col.GetNumberOfItems())}


def remove_new_nodes(scene, existing: set, keep=()) -> None:
    """Remove every node added since ``existing`` was taken (helpers' display and colour nodes)."""
    keep_ids = {n.GetID() for n in keep if n is not None}
    for node_id in node_ids(scene) - existing - keep_ids:
        node = scene.GetNodeByID(node_id)
        if node is not None:
            scene.RemoveNode(node)


def remove_node(scene, node) -> None:
    """Remove a node with its display and storage nodes."""
    if node is None:
        return
    for i in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
        display = node.GetNthDisplayNode(i)
        if display is not None:
            scene.RemoveNode(display)
    if hasattr(node, "GetStorageNode") and node.GetStorageNode() is not None:
        scene.RemoveNode(node.GetStorageNode())
    scene.RemoveNode(node)


# --------------------------------------------------------------------------- files


def write_node(scene, node, path: "str | os.PathLike") -> Path:
    """Write a volume node to ``path`` through a storage node, atomically (temp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".nii.gz", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # the storage node would log that it replaces an "old version"
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(tmp)
        storage.SetUseCompression(1)
        if not storage.WriteData(node):
            raise SFRError(f"Slicer could not write volume {node.GetName()!r}", path)
        os.replace(tmp, path)
    finally:
        scene.RemoveNode(storage)
        Path(tmp).unlink(missing_ok=True)
    return path


def read_node(scene, path: "str | os.PathLike", class_name: str, name: str):
    """Read a volume file into a new node of ``class_name`` (through a storage node)."""
    path = Path(path)
    if not path.exists():
        raise SFRError("file not found", path)
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if class_name == "vtkMRMLLabelMapVolumeNode":
        storage.SetCenterImage(0)
    ok = storage.ReadData(node)
    scene.RemoveNode(storage)
    if not ok or node.GetImageData() is None:
        scene.RemoveNode(node)
        raise SFRError("Slicer could not read this volume", path)
    return node


def labelmap_like(scene, reference, array: np.ndarray, name: str = "__sfr_temp__"):
    """A new label map node holding ``array`` on ``reference``'s voxel grid."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras(reference)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    return node


# --------------------------------------------------------------------------- segments


def segment_ids(segmentation_node) -> list:
    seg = segmentation_node.GetSegmentation()
    return [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]


def tag(segment, name: str) -> str | None:
    """A segment tag's value, or None (``vtkSegment.GetTag`` fills a reference argument)."""
    value = vtk.reference("")
    if segment.GetTag(name, value):
        return str(value)
    return None


def set_tags(segment, tags: dict) -> None:
    for key, value in tags.items():
        segment.SetTag(key, str(value))


def is_low_confidence_segment(segment) -> bool:
    return tag(segment, TAG_KIND) == KIND_LOWCONF


def segment_mask(scene, segmentation_node, segment_id: str, reference) -> np.ndarray:
    """Boolean ``[k, j, i]`` mask of one segment on ``reference``'s voxel grid."""
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    existing = node_ids(scene)
    tmp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__sfr_export__")
    try:
        ok = segmentation_logic(scene).ExportSegmentsToLabelmapNode(segmentation_node, ids, tmp, reference)
        if not ok:
            raise SFRError(
                f"cannot export segment {segment_id!r} of {segmentation_node.GetName()!r} "
                f"onto {reference.GetName()!r}"
            )
        mask = volume_array(tmp) > 0
    finally:
        # the export adds a display node and a "<segmentation>_ColorTable": remove them all
        remove_new_nodes(scene, existing)
    expected = tuple(reference.GetImageData().GetDimensions()[::-1])
    if mask.shape != expected:
        raise SFRError(f"segment {segment_id!r} exported with shape {mask.shape}, expected {expected}")
    return mask


def segmentation_to_label(scene, segmentation_node, reference, classes: list, add_classes: bool = True) -> np.ndarray:
    """A segmentation -> a label array ``[k, j, i]`` on ``reference``'s grid, values by class name.

    Segments are matched to ``classes`` by name (case-insensitive); a new name is appended to
    ``classes`` (in place) when ``add_classes`` is true, else it is an error.  Segments this
    module marked as low-confidence regions are skipped.  Overlaps: the later segment wins.
    """
    dims = reference.GetImageData().GetDimensions()
    label = np.zeros(dims[::-1], dtype=np.uint8)
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    seg = segmentation_node.GetSegmentation()
    for sid in segment_ids(segmentation_node):
        segment = seg.GetSegment(sid)
        if is_low_confidence_segment(segment):
            continue
        name = segment.GetName()
        value = lookup.get(name.lower())
        if value is None or value == 0:
            if not add_classes:
                raise SFRError(
                    f"segment {name!r} of {segmentation_node.GetName()!r} is not one of the "
                    f"project's classes ({', '.join(classes[1:])}); rename it"
                )
            classes.append(name)
            value = len(classes) - 1
            lookup[name.lower()] = value
        if value > 255:
            raise SFRError("more than 255 classes are not supported")
        label[segment_mask(scene, segmentation_node, sid, reference)] = value
    return label


def segment_names(segmentation_node) -> list:
    """Names of a segmentation's segments that are classes (not low-confidence regions)."""
    seg = segmentation_node.GetSegmentation()
    return [seg.GetSegment(sid).GetName() for sid in segment_ids(segmentation_node)
            if not is_low_confidence_segment(seg.GetSegment(sid))]
