"""Run folder -> scene: a run's pseudo-labels, low-confidence regions and confidence maps as new
nodes on each case's volume.

The run folder is read through the engine's reader (``SFRSegmenterLib.runfolder``).  Nothing the
user made is modified: results always go into new nodes, tagged with their case and run, and
loading the same run twice reuses the nodes of the first time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer

from SFRSegmenterLib import runfolder
from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.manifest import Project, load_project

from .cases import scene_cases
from .edits import mark_saved
from .export import MANIFEST_KEY
from .nodes import (ATTR_CASE, ATTR_KIND, ATTR_PROJECT, ATTR_RUN, KIND_CONFIDENCE, KIND_IMAGE, KIND_LOWCONF,
                    KIND_PSEUDO, TAG_CASE, TAG_CLASS, TAG_KIND, TAG_RUN, class_color, node_ids, nodes_of_class,
                    read_node, remove_new_nodes, remove_node, same_geometry, segment_ids, segmentation_logic, set_tags,
                    volume_array)

LOWCONF_NAME = "low confidence"
LOWCONF_COLOR = (1.0, 0.85, 0.0)
CONFIDENCE_COLOR_NODE_ID = "vtkMRMLColorTableNodeRainbow"
#: Node references from a pseudo-label node to its case's volume and confidence map.
REF_REFERENCE = "sfrReference"
REF_CONFIDENCE = "sfrConfidence"


@dataclass
class CaseResult:
    """The nodes one case's results were loaded into."""

    case: str
    reference: object
    segmentation: object
    confidence: object = None
    review: dict = field(default_factory=dict)
    low_confidence_segment: str | None = None


def run_of(node) -> str | None:
    """The run a result node was loaded from (None for a node this module did not make)."""
    return node.GetAttribute(ATTR_RUN) if node is not None else None


def _find_reference(scene, case: str, reference_nodes: dict | None):
    if reference_nodes and case in reference_nodes:
        return reference_nodes[case]
    for entry in scene_cases(scene):
        if entry.name == case:
            return entry.volume
    return None


def _existing_result(scene, case: str, run_id: str):
    for seg in nodes_of_class(scene, "vtkMRMLSegmentationNode"):
        if (seg.GetAttribute(ATTR_KIND) == KIND_PSEUDO and seg.GetAttribute(ATTR_CASE) == case
                and seg.GetAttribute(ATTR_RUN) == run_id):
            return seg
    return None


def _low_confidence_segment_id(seg_node) -> str | None:
    segmentation = seg_node.GetSegmentation()
    for sid in segment_ids(seg_node):
        if segmentation.GetSegment(sid).GetName() == LOWCONF_NAME and seg_node.GetAttribute(ATTR_KIND) == KIND_PSEUDO:
            return sid
    return None


def _import_label(scene, seg_node, label_node) -> list:
    """Import a label map's values as segments; returns the new segment ids (by value order)."""
    before = set(segment_ids(seg_node))
    existing = node_ids(scene)
    try:
        if not segmentation_logic(scene).ImportLabelmapToSegmentationNode(label_node, seg_node):
            raise SFRError(f"cannot import {label_node.GetName()!r} as segments")
    finally:
        remove_new_nodes(scene, existing)
    return [sid for sid in segment_ids(seg_node) if sid not in before]


def load_results(scene, project_dir: "str | os.PathLike", run_id: str | None = None,
                 reference_nodes: dict | None = None) -> list:
    """Load every pseudo-label of a run into new nodes; returns a :class:`CaseResult` per case.

    For each case: a new segmentation node ``"<case> pseudo-label"`` (one segment per class,
    named and coloured by class, tagged with the run) plus a ``low confidence`` segment; the
    confidence map as a new scalar volume ``"<case> confidence"`` with a colour table.  The
    reference volume is the user's node for that case (``reference_nodes`` or the volume whose
    name gives the case name), or the project's image loaded as a new node.  Loading the same
    run twice reuses the nodes of the first time; no existing node is changed.
    """
    project = load_project(project_dir)
    path = runfolder.run_dir(project_dir, run_id)
    run_id = path.name
    review = runfolder.read_review(path)
    results = []
    for case in runfolder.result_cases(path, review):
        existing = _existing_result(scene, case, run_id)
        reference = _find_reference(scene, case, reference_nodes)
        if existing is not None:
            reference = existing.GetNodeReference(REF_REFERENCE) or reference
            conf = existing.GetNodeReference(REF_CONFIDENCE)
            results.append(CaseResult(case, reference, existing, conf, review.get(case, {}),
                                      _low_confidence_segment_id(existing)))
            continue
        if reference is None:
            reference = _load_project_image(scene, project, project_dir, case)
        results.append(_load_case(scene, project, path, case, reference, review.get(case, {})))
    hide_other_runs(scene, run_id)
    return results


def _load_project_image(scene, project: Project, project_dir, case: str):
    try:
        image_path = project.image_path(project.case(case))
    except SFRError:
        image_path = Path(project_dir) / "images" / f"{case}.nii.gz"
    reference = read_node(scene, image_path, "vtkMRMLScalarVolumeNode", case)
    reference.SetAttribute(ATTR_KIND, KIND_IMAGE)
    reference.SetAttribute(ATTR_CASE, case)
    reference.CreateDefaultDisplayNodes()
    return reference


def hide_other_runs(scene, run_id: str) -> int:
    """Hide the pseudo-labels loaded from runs other than ``run_id`` (they stay in the scene)."""
    hidden = 0
    for seg in nodes_of_class(scene, "vtkMRMLSegmentationNode"):
        if seg.GetAttribute(ATTR_KIND) == KIND_PSEUDO and seg.GetAttribute(ATTR_RUN) != run_id:
            display = seg.GetDisplayNode()
            if display is not None and display.GetVisibility():
                display.SetVisibility(False)
                hidden += 1
    return hidden


def _check_on_grid(node, reference, path) -> None:
    if not same_geometry(node, reference):
        raise SFRError(
            f"does not lie on the voxel grid of {reference.GetName()!r} "
            "(size or IJK-to-RAS differs); was the volume changed after the run?",
            path,
        )


def _new_result_node(scene, project: Project, case: str, run_id: str, reference):
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{case} pseudo-label"))
    seg_node.CreateDefaultDisplayNodes()
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    seg_node.SetNodeReferenceID(REF_REFERENCE, reference.GetID())
    for key, value in ((ATTR_KIND, KIND_PSEUDO), (ATTR_CASE, case), (ATTR_RUN, run_id), (ATTR_PROJECT, str(project.root))):
        seg_node.SetAttribute(key, value)
    return seg_node


def _load_classes(scene, project: Project, path: Path, case: str, reference):
    """The pseudo-label's classes as segments of a new node, one per class, in class order."""
    run_id = path.name
    return import_classes(scene, project, runfolder.case_file(path, case), reference,
                          lambda: _new_result_node(scene, project, case, run_id, reference),
                          {TAG_KIND: KIND_PSEUDO, TAG_RUN: run_id, TAG_CASE: case})


def import_classes(scene, project: Project, label_path: Path, reference, new_node, tags: dict):
    """A label map file (value *i* = class ``project.classes[i]``) as the segments of the node
    ``new_node()`` makes once the file is read and lies on ``reference``'s voxel grid: one segment
    per class, in class order, named and coloured as the project's classes (empty ones too, so
    every class stays editable), each tagged with ``tags`` and its class value."""
    label_node = read_node(scene, label_path, "vtkMRMLLabelMapVolumeNode", "__sfr_label__")
    seg_node = None
    try:
        _check_on_grid(label_node, reference, label_path)
        values = sorted(int(v) for v in np.unique(volume_array(label_node)) if v != 0)
        seg_node = new_node()
        new_ids = _import_label(scene, seg_node, label_node) if values else []
        if len(new_ids) != len(values):
            raise SFRError(f"imported {len(new_ids)} segments for label values {values}", label_path)
    except SFRError:
        remove_node(scene, seg_node)  # no half-made node stays in the scene
        raise
    finally:
        remove_node(scene, label_node)
    segmentation = seg_node.GetSegmentation()
    by_value = dict(zip(values, new_ids))
    styles = project.extra.get(MANIFEST_KEY, {}).get("class_styles", {})
    for value in range(1, max([project.num_classes - 1, *values]) + 1):
        name = project.classes[value] if value < project.num_classes else f"class_{value}"
        sid = by_value.get(value)
        if sid is None:  # keep every class editable even when this case has none of it
            sid = segmentation.AddEmptySegment(f"sfr_class_{value}", name)
        segment = segmentation.GetSegment(sid)
        segment.SetName(name)
        style = styles.get(name.lower(), {})  # the user's colour and terminology for the class
        segment.SetColor(*(style.get("color") or class_color(value)))
        if style.get("terminology"):
            segment.SetTag(segment.GetTerminologyEntryTagName(), style["terminology"])
        set_tags(segment, {**tags, TAG_CLASS: str(value)})
        segmentation.SetSegmentIndex(sid, value - 1)  # segments in class order
    return seg_node


def _load_low_confidence(scene, seg_node, path: Path, case: str, reference) -> str | None:
    """The low-confidence mask as a ``low confidence`` segment (None when the run has none)."""
    lowconf_path = runfolder.case_file(path, case, "lowconf")
    if not lowconf_path.exists():
        return None
    segmentation = seg_node.GetSegmentation()
    low = read_node(scene, lowconf_path, "vtkMRMLLabelMapVolumeNode", "__sfr_lowconf__")
    try:
        _check_on_grid(low, reference, lowconf_path)
        arr = volume_array(low)
        if arr.any():
            if arr.max() != 1:
                slicer.util.updateVolumeFromArray(low, (arr > 0).astype(np.uint8))
            ids = _import_label(scene, seg_node, low)
            lowconf_id = ids[0] if ids else None
        else:
            lowconf_id = segmentation.AddEmptySegment("sfr_low_confidence", LOWCONF_NAME)
    finally:
        remove_node(scene, low)
    segment = segmentation.GetSegment(lowconf_id)
    segment.SetName(LOWCONF_NAME)
    segment.SetColor(*LOWCONF_COLOR)
    set_tags(segment, {TAG_KIND: KIND_LOWCONF, TAG_RUN: path.name, TAG_CASE: case})
    display = seg_node.GetDisplayNode()
    if display is not None:
        display.SetSegmentOpacity2DFill(lowconf_id, 0.25)
        display.SetSegmentVisibility3D(lowconf_id, False)
    return lowconf_id


def _load_confidence(scene, project: Project, path: Path, case: str, reference):
    conf_path = runfolder.case_file(path, case, "confidence")
    if not conf_path.exists():
        return None
    return load_confidence_map(scene, project, conf_path, reference, f"{case} confidence",
                               {ATTR_KIND: KIND_CONFIDENCE, ATTR_CASE: case, ATTR_RUN: path.name})


def load_confidence_map(scene, project: Project, conf_path: Path, reference, name: str, attributes: dict):
    """A confidence map file as a new scalar volume ``name`` on ``reference``'s grid, coloured
    from the lowest possible confidence (1 / classes) to 1."""
    confidence = read_node(scene, conf_path, "vtkMRMLScalarVolumeNode", name)
    try:
        _check_on_grid(confidence, reference, conf_path)
    except SFRError:
        remove_node(scene, confidence)
        raise
    for key, value in attributes.items():
        confidence.SetAttribute(key, value)
    confidence.CreateDefaultDisplayNodes()
    display = confidence.GetDisplayNode()
    display.SetAndObserveColorNodeID(CONFIDENCE_COLOR_NODE_ID)
    display.AutoWindowLevelOff()
    low_end = 1.0 / max(2, project.num_classes)
    display.SetWindowLevelMinMax(low_end, 1.0)
    return confidence


def _load_case(scene, project: Project, path: Path, case: str, reference, review: dict) -> CaseResult:
    seg_node = _load_classes(scene, project, path, case, reference)
    lowconf_id = _load_low_confidence(scene, seg_node, path, case, reference)
    confidence = _load_confidence(scene, project, path, case, reference)
    if confidence is not None:
        seg_node.SetNodeReferenceID(REF_CONFIDENCE, confidence.GetID())
    if review.get("confidence") is not None:
        seg_node.SetAttribute("SFR.CaseConfidence", str(review.get("confidence")))
    if review.get("estimated_dice") is not None:
        seg_node.SetAttribute("SFR.EstimatedDice", str(review.get("estimated_dice")))
    mark_saved(seg_node)  # as loaded: no edits yet
    return CaseResult(case, reference, seg_node, confidence, review, lowconf_id)
