"""Partially labeled cases on the real Slicer core: drawn slices annotated, 255 elsewhere.

Real MRML nodes (``slicer-core``), real files written through storage nodes, read back by the
engine's reader and its ``sfr info`` in a real subprocess.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_slicer_scene import (CLASS_NAMES, SAMPLE, add_segmentation, exported, load_volume, make_run,  # noqa: F401
                               new_scene, sample_label, scene, slicer, user_scene)

from SFRSegmenterLib.errors import SFRError  # noqa: E402
from SFRSegmenterLib.io import read_image, read_label  # noqa: E402
from SFRSegmenterLib.sparse import NOT_ANNOTATED  # noqa: E402
from SFRSegmenterLogicLib import cases as case_discovery  # noqa: E402
from SFRSegmenterLogicLib import export as project_export  # noqa: E402
from SFRSegmenterLogicLib import nodes as mrml_nodes  # noqa: E402
from SFRSegmenterLogicLib import partial  # noqa: E402
from SFRSegmenterLogicLib import results as result_loading  # noqa: E402

DRAWN = (10, 15, 20)


def partial_scene(scene):
    """hippocampus_001 drawn on three slices (marked partially labeled), 003 fully, 004 unlabeled."""
    nodes = {c: load_volume(scene, SAMPLE / "images" / f"{c}.nii.gz", c)
             for c in ("hippocampus_001", "hippocampus_003", "hippocampus_004")}
    full = sample_label("hippocampus_001")
    drawn = np.zeros_like(full)
    drawn[list(DRAWN)] = full[list(DRAWN)]
    seg = add_segmentation(scene, nodes["hippocampus_001"], drawn, CLASS_NAMES, "few slices")
    add_segmentation(scene, nodes["hippocampus_003"], sample_label("hippocampus_003"), CLASS_NAMES, "seg 3")
    return nodes, seg, full


def test_a_partially_labeled_case_exports_255_on_unannotated_slices(scene, tmp_path, sfr):
    nodes, seg, full = partial_scene(scene)
    partial.set_partial(seg)
    assert partial.mark_empty(seg, nodes["hippocampus_001"], 2) == [2]  # "annotated, nothing there"
    with pytest.raises(SFRError, match="outside"):
        partial.mark_empty(seg, nodes["hippocampus_001"], 999)
    project_dir = tmp_path / "proj"
    project_export.export_project(scene, project_dir, case_discovery.scene_cases(scene))
    image = read_image(project_dir / "images" / "hippocampus_001.nii.gz")
    label = read_label(project_dir / "labels" / "hippocampus_001.nii.gz", image, num_classes=3, sparse=True).array
    annotated = [k for k in range(label.shape[0]) if (label[k] != NOT_ANNOTATED).any()]
    assert annotated == [2, *DRAWN]
    assert (label[2] == 0).all()
    for k in DRAWN:
        np.testing.assert_array_equal(label[k], full[k])
    assert (label[[k for k in range(label.shape[0]) if k not in annotated]] == NOT_ANNOTATED).all()
    # a case that is not marked keeps background on its undrawn slices (a whole-volume label)
    other = read_label(project_dir / "labels" / "hippocampus_003.nii.gz").array
    assert not (other == NOT_ANNOTATED).any()
    info = json.loads(sfr("info", project_dir, "--json", check=True).stdout)
    by_name = {c["name"]: c for c in info["case_list"]}
    assert by_name["hippocampus_001"]["annotated_slices"] == 4
    assert by_name["hippocampus_003"]["annotated_slices"] == by_name["hippocampus_003"]["slices"]


def test_a_partial_case_with_nothing_annotated_is_refused(scene, tmp_path):
    nodes = {"a": load_volume(scene, SAMPLE / "images" / "hippocampus_001.nii.gz", "hippocampus_001")}
    seg = add_segmentation(scene, nodes["a"], np.zeros_like(sample_label("hippocampus_001")), CLASS_NAMES, "empty")
    partial.set_partial(seg)
    entry = case_discovery.CaseEntry(nodes["a"], seg, "labeled")
    with pytest.raises(SFRError, match="no annotated slice"):
        project_export.export_project(scene, tmp_path / "p", [entry])
    assert not (tmp_path / "p" / "sfr-project.json").exists()


def paint(scene, result, source, label):
    segmentation = result.segmentation.GetSegmentation()
    seg_logic = mrml_nodes.segmentation_logic(scene)
    for value, name in enumerate(CLASS_NAMES, start=1):
        sid = segmentation.GetSegmentIdBySegmentName(name)
        lm = mrml_nodes.labelmap_like(scene, source, (label == value).astype(np.uint8))
        oriented = seg_logic.CreateOrientedImageDataFromVolumeNode(lm)
        assert seg_logic.SetBinaryLabelmapToSegment(oriented, result.segmentation, sid,
                                                    slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        scene.RemoveNode(lm)


def test_corrected_flagged_slices_become_the_annotated_slices(exported, sfr):
    scene, nodes, segs, project_dir, run, truth = exported
    case = "hippocampus_006"
    result = {r.case: r for r in result_loading.load_results(scene, project_dir)}[case]
    source = nodes[case]
    pseudo = truth[case][0]
    d, h, w = pseudo.shape
    edited = pseudo.copy()
    edited[d // 2, :, : w // 2] = 0  # the clinician fixes the flagged slice d // 2
    paint(scene, result, source, edited)
    record = partial.save_corrected_slices(scene, project_dir, case, result.segmentation, source)
    assert record["annotated_slices"] == [d // 2] and record["source"] == "corrected"
    label_path = project_dir / "labels" / f"{case}.nii.gz"
    saved = read_label(label_path, read_image(project_dir / "images" / f"{case}.nii.gz"), 3, sparse=True).array
    np.testing.assert_array_equal(saved[d // 2], edited[d // 2])
    assert (np.delete(saved, d // 2, axis=0) == NOT_ANNOTATED).all()
    # the second flagged slice looked right: confirmed as it is; the earlier correction stays
    partial.mark_annotated(result.segmentation, source, [1])
    record = partial.save_corrected_slices(scene, project_dir, case, result.segmentation, source)
    assert record["annotated_slices"] == [1, d // 2]
    saved = read_label(label_path).array
    np.testing.assert_array_equal(saved[1], pseudo[1])
    np.testing.assert_array_equal(saved[d // 2], edited[d // 2])
    info = json.loads(sfr("info", project_dir, "--json", check=True).stdout)
    assert {c["name"]: c for c in info["case_list"]}[case]["annotated_slices"] == 2


def test_nothing_corrected_is_refused(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    result = {r.case: r for r in result_loading.load_results(scene, project_dir)}["hippocampus_004"]
    before = (project_dir / "sfr-project.json").read_bytes()
    with pytest.raises(SFRError, match="no corrected slice"):
        partial.save_corrected_slices(scene, project_dir, "hippocampus_004", result.segmentation, nodes["hippocampus_004"])
    assert (project_dir / "sfr-project.json").read_bytes() == before
    assert not (project_dir / "labels" / "hippocampus_004.nii.gz").exists()
