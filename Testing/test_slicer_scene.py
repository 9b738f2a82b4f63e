"""The Slicer module's MRML logic on the real Slicer core (``slicer-core`` from PyPI).

Scene -> project export, results -> nodes, views, and accept/correct bookkeeping.  Every
volume goes through Slicer's own storage nodes and segmentation logic; the fake run folder is
real NIfTI written by the engine's ``SFRSegmenterLib.io`` on the exported images' geometry.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
import vtk.util.numpy_support  # noqa: E402
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core (MRML) is not installed", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SFRSegmenter"))

from SFRSegmenterLib.errors import SFRError  # noqa: E402
from SFRSegmenterLib.io import Volume, read_image, read_label, write_volume  # noqa: E402
from SFRSegmenterLib.manifest import load_project  # noqa: E402
from SFRSegmenterLib import runfolder  # noqa: E402
from SFRSegmenterLogicLib import cases as case_discovery  # noqa: E402
from SFRSegmenterLogicLib import export as project_export  # noqa: E402
from SFRSegmenterLogicLib import nodes as mrml_nodes  # noqa: E402
from SFRSegmenterLogicLib import provenance, review  # noqa: E402
from SFRSegmenterLogicLib import results as result_loading  # noqa: E402

SAMPLE = REPO / "SFRSegmenterLib" / "sample_data" / "hippocampus"
CLASS_NAMES = ["anterior", "posterior"]


# --------------------------------------------------------------------------- fixtures


def new_scene():
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)  # default colour tables, as in the app
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    scene._sfr_keep = (colors, logic)  # keep the logics alive with the scene
    return scene


def matrix(node):
    return mrml_nodes.ijk_to_ras(node)


def load_volume(scene, path, name):
    """Load a file as a user would (through a storage node)."""
    return mrml_nodes.read_node(scene, path, "vtkMRMLScalarVolumeNode", name)


def oblique_volume(scene, name="oblique scan"):
    """A synthetic volume with anisotropic spacing and a rotated, non-axis-aligned direction."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 1000, size=(7, 11, 9)).astype(np.int16)  # [k, j, i]
    slicer.util.updateVolumeFromArray(node, arr)
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s * 0.8, c * 0.8, 0.6], [-s * 0.6, -c * 0.6, 0.8]])
    m = np.eye(4)
    m[:3, :3] = rot * np.array([0.7, 1.3, 2.5])[None, :]
    m[:3, 3] = [12.5, -40.25, 7.0]
    node.SetIJKToRASMatrix(mrml_nodes.vtk_matrix(m))
    return node


def add_segmentation(scene, volume, label: np.ndarray, names, name="user segmentation"):
    """A user's segmentation on ``volume``: segment ``names[v-1]`` = voxels where label == v."""
    lm = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__test_lm__")
    lm.SetIJKToRASMatrix(mrml_nodes.vtk_matrix(matrix(volume)))
    slicer.util.updateVolumeFromArray(lm, label.astype(np.uint8))
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lm, seg)
    segmentation = seg.GetSegmentation()
    values = sorted(int(v) for v in np.unique(label) if v)
    for i, v in enumerate(values):
        segmentation.GetNthSegment(i).SetName(names[v - 1])
    scene.RemoveNode(lm)
    return seg


def sample_label(case):
    return read_label(SAMPLE / "labels" / f"{case}.nii.gz").array


def fingerprint(scene):
    """Names, voxels, geometry and segments of every node: to prove nothing was overwritten."""
    out = {}
    col = scene.GetNodesByClass("vtkMRMLNode")
    for i in range(col.GetNumberOfItems()):
        node = col.GetItemAsObject(i)
        entry = {"name": node.GetName(), "class": node.GetClassName()}
        if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is not None:
            arr = slicer.util.arrayFromVolume(node)
            entry["voxels"] = hash(arr.tobytes())
            entry["ijk"] = matrix(node).round(9).tobytes()
        if node.IsA("vtkMRMLSegmentationNode"):
            seg = node.GetSegmentation()
            entry["segments"] = [
                (seg.GetNthSegment(j).GetName(), tuple(round(c, 6) for c in seg.GetNthSegment(j).GetColor()))
                for j in range(seg.GetNumberOfSegments())
            ]
        out[node.GetID()] = entry
    return out


@pytest.fixture
def scene():
    return new_scene()


@pytest.fixture
def user_scene(scene):
    """Two labeled hippocampus cases, two unlabeled, one labeled oblique synthetic volume."""
    nodes = {}
    for case in ("hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"):
        nodes[case] = load_volume(scene, SAMPLE / "images" / f"{case}.nii.gz", case)
    segs = {
        "hippocampus_001": add_segmentation(scene, nodes["hippocampus_001"], sample_label("hippocampus_001"), CLASS_NAMES),
        "hippocampus_003": add_segmentation(scene, nodes["hippocampus_003"], sample_label("hippocampus_003"), CLASS_NAMES, "seg 3"),
    }
    obl = oblique_volume(scene)
    ob_label = np.zeros((7, 11, 9), np.uint8)
    ob_label[2:5, 3:8, 1:6] = 2
    ob_label[1, 1, 1] = 1
    segs["oblique_scan"] = add_segmentation(scene, obl, ob_label, CLASS_NAMES, "oblique seg")
    nodes["oblique_scan"] = obl
    return scene, nodes, segs, {"oblique_scan": ob_label}


# --------------------------------------------------------------------------- scene -> project


def test_scene_cases_pair_volumes_with_their_segmentations(user_scene):
    scene, nodes, segs, _ = user_scene
    cases = {c.name: c for c in case_discovery.scene_cases(scene)}
    assert set(cases) == set(nodes)
    for name, entry in cases.items():
        assert entry.volume is nodes[name]
        assert entry.segmentation is segs.get(name)
        assert entry.effective_role == ("labeled" if name in segs else "unlabeled")


def test_export_keeps_geometry_and_labels_exactly(user_scene, tmp_path):
    scene, nodes, segs, extra_labels = user_scene
    project_dir = tmp_path / "proj"
    before = fingerprint(scene)
    project = project_export.export_project(scene, project_dir, case_discovery.scene_cases(scene))
    assert fingerprint(scene) == before  # export changes nothing in the scene

    assert project.classes == ["background", *CLASS_NAMES]
    roles = {c.name: c.role for c in load_project(project_dir).cases}
    assert roles == {
        "hippocampus_001": "labeled",
        "hippocampus_003": "labeled",
        "hippocampus_004": "unlabeled",
        "hippocampus_006": "unlabeled",
        "oblique_scan": "labeled",
    }
    for name, node in nodes.items():
        image_file = project_dir / "images" / f"{name}.nii.gz"
        # read back through Slicer: the same IJK-to-RAS (NIfTI stores float32) and voxels
        back = load_volume(scene, image_file, "back")
        np.testing.assert_allclose(matrix(back), matrix(node), atol=2e-5, rtol=1e-6)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), slicer.util.arrayFromVolume(node))
        # and through the engine's reader: same voxels in [z, y, x]
        eng = read_image(image_file)
        np.testing.assert_array_equal(eng.array, slicer.util.arrayFromVolume(node).astype(np.float32))
        if name in segs:
            label = read_label(project_dir / "labels" / f"{name}.nii.gz", reference=eng, num_classes=3)
            expected = extra_labels.get(name)
            if expected is None:
                expected = sample_label(name)
            np.testing.assert_array_equal(label.array, expected)
    # an oblique direction survives: engine geometry is LPS = diag(-1,-1,1) @ RAS
    eng = read_image(project_dir / "images" / "oblique_scan.nii.gz")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix(nodes["oblique_scan"])
    np.testing.assert_allclose(eng.ijk_to_world(), lps, atol=2e-5)


def test_export_rewrites_only_what_changed(user_scene, tmp_path):
    scene, nodes, segs, _ = user_scene
    project_dir = tmp_path / "proj"
    project_export.export_project(scene, project_dir, case_discovery.scene_cases(scene))
    files = sorted((project_dir / "images").glob("*.nii.gz")) + sorted((project_dir / "labels").glob("*.nii.gz"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    os.utime(files[0], ns=(1, 1))  # a marker: an untouched file keeps it
    stamps[files[0]] = 1
    # change one voxel of one labeled case's segmentation
    lab = sample_label("hippocampus_003")
    k, j, i = np.argwhere(lab == 0)[0]
    lab[k, j, i] = 1
    scene.RemoveNode(segs["hippocampus_003"])
    add_segmentation(scene, nodes["hippocampus_003"], lab, CLASS_NAMES, "edited")
    project_export.export_project(scene, project_dir, case_discovery.scene_cases(scene))
    changed = {p.relative_to(project_dir).as_posix() for p in files if p.stat().st_mtime_ns != stamps[p]}
    assert changed == {"labels/hippocampus_003.nii.gz"}
    np.testing.assert_array_equal(read_label(project_dir / "labels" / "hippocampus_003.nii.gz").array, lab)


def test_export_refuses_transformed_volume_and_duplicate_names(scene, tmp_path):
    vol = load_volume(scene, SAMPLE / "images" / "hippocampus_001.nii.gz", "a")
    t = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    vol.SetAndObserveTransformNodeID(t.GetID())
    with pytest.raises(SFRError, match="transform"):
        project_export.export_project(scene, tmp_path / "p", case_discovery.scene_cases(scene))
    vol.SetAndObserveTransformNodeID(None)
    other = load_volume(scene, SAMPLE / "images" / "hippocampus_003.nii.gz", "b")
    other.SetName("a")
    cases = [case_discovery.CaseEntry(vol), case_discovery.CaseEntry(other)]
    with pytest.raises(SFRError, match="same case name"):
        project_export.export_project(scene, tmp_path / "p", cases)


def test_export_refuses_labeled_role_without_segmentation(scene, tmp_path):
    vol = load_volume(scene, SAMPLE / "images" / "hippocampus_001.nii.gz", "a")
    with pytest.raises(SFRError, match="no segmentation"):
        project_export.export_project(scene, tmp_path / "p", [case_discovery.CaseEntry(vol, None, "labeled")])


# --------------------------------------------------------------------------- results -> scene


def make_run(project_dir, run_id="20261127-000000-0000", trusted=None, with_lowconf=True):
    """A run folder as the engine writes it: pseudo-labels on the exported images' geometry."""
    project = load_project(project_dir)
    run = project_dir / "runs" / run_id
    review = []
    truth = {}
    for i, case in enumerate(project.by_role("unlabeled")):
        image = read_image(project.image_path(case))
        d, h, w = image.shape
        label = np.zeros(image.shape, np.uint8)
        label[d // 4 : d // 2, h // 4 : h // 2, w // 4 : w // 2] = 1
        label[d // 2 : 3 * d // 4, h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 2
        if i == 1:
            label[label == 1] = 2  # a case with no class-1 voxels
        conf = np.linspace(0.5, 1.0, label.size, dtype=np.float32).reshape(label.shape)
        low = ((conf < 0.6) & (label > 0)).astype(np.uint8)
        low[d // 2, h // 2, w // 2] = 1
        write_volume(image.with_array(label), run / "pseudo" / f"{case.name}.nii.gz")
        write_volume(image.with_array(conf), run / "pseudo" / f"{case.name}_confidence.nii.gz")
        if with_lowconf:
            write_volume(image.with_array(low), run / "pseudo" / f"{case.name}_lowconf.nii.gz")
        truth[case.name] = (label, conf, low)
        review.append(
            {
                "case": case.name,
                "confidence": 0.97 - 0.01 * i,
                "trusted": (trusted if trusted is not None else i == 0),
                "flagged_slices": [{"index": d // 2, "confidence": 0.8 - 0.1 * i}, {"index": 1, "confidence": 0.9}],
                "low_confidence_voxels": int(low.sum()),
            }
        )
    (run / "review.json").write_text(json.dumps({"cases": review}))
    (project_dir / "runs" / "latest").write_text(run_id + "\n")
    # a finished run, as the engine leaves it (the State column reads only finished runs)
    (run / "status.json").write_text(json.dumps({"state": "done", "run_id": run_id, "finished": run_id}))
    return run, truth


@pytest.fixture
def exported(user_scene, tmp_path):
    scene, nodes, segs, extra = user_scene
    project_dir = tmp_path / "proj"
    project_export.export_project(scene, project_dir, case_discovery.scene_cases(scene))
    run, truth = make_run(project_dir)
    return scene, nodes, segs, project_dir, run, truth


def test_results_load_into_new_nodes_on_the_source_geometry(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    before = fingerprint(scene)
    results = result_loading.load_results(scene, project_dir)
    after = fingerprint(scene)
    for node_id, entry in before.items():  # nothing that existed was changed or removed
        assert after[node_id] == entry
    assert {r.case for r in results} == {"hippocampus_004", "hippocampus_006"}
    for r in results:
        label, conf, low = truth[r.case]
        source = nodes[r.case]
        assert r.reference is source
        assert r.segmentation.GetID() not in before and r.confidence.GetID() not in before
        assert r.segmentation.GetName() == f"{r.case} pseudo-label"
        assert r.confidence.GetName() == f"{r.case} confidence"
        # geometry of every loaded node equals the source volume's
        np.testing.assert_allclose(matrix(r.confidence), matrix(source), atol=2e-5, rtol=1e-6)
        seg_geom = r.segmentation.GetSegmentation().GetConversionParameter("Reference image geometry")
        assert seg_geom  # segmentation bound to the source's grid
        np.testing.assert_allclose(slicer.util.arrayFromVolume(r.confidence), conf, atol=1e-7)
        # segments: one per class, named and coloured as the user's, tagged, exact voxels
        segmentation = r.segmentation.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        assert names == [*CLASS_NAMES, result_loading.LOWCONF_NAME]
        for value, cname in enumerate(CLASS_NAMES, start=1):
            sid = segmentation.GetSegmentIdBySegmentName(cname)
            segment = segmentation.GetSegment(sid)
            user_color = load_project(project_dir).extra["slicer"]["class_styles"][cname]["color"]
            assert segment.GetColor() == pytest.approx(user_color, abs=1e-4)  # the user's colour of the class
            assert mrml_nodes.tag(segment, mrml_nodes.TAG_CLASS) == str(value)
            assert mrml_nodes.tag(segment, mrml_nodes.TAG_KIND) == mrml_nodes.KIND_PSEUDO
            assert mrml_nodes.tag(segment, mrml_nodes.TAG_RUN) == run.name
            mask = mrml_nodes.segment_mask(scene, r.segmentation, sid, source)
            np.testing.assert_array_equal(mask, label == value)
        low_id = segmentation.GetSegmentIdBySegmentName(result_loading.LOWCONF_NAME)
        assert low_id == r.low_confidence_segment
        assert mrml_nodes.tag(segmentation.GetSegment(low_id), mrml_nodes.TAG_KIND) == mrml_nodes.KIND_LOWCONF
        np.testing.assert_array_equal(mrml_nodes.segment_mask(scene, r.segmentation, low_id, source), low > 0)
        # confidence display: colour table, fixed window
        display = r.confidence.GetDisplayNode()
        assert display.GetColorNodeID() == result_loading.CONFIDENCE_COLOR_NODE_ID
        assert scene.GetNodeByID(result_loading.CONFIDENCE_COLOR_NODE_ID) is not None
        assert display.GetWindowLevelMin() == pytest.approx(1 / 3) and display.GetWindowLevelMax() == pytest.approx(1.0)
    # a user's segmentation of the same name is not touched, and loading twice adds nothing
    count = scene.GetNumberOfNodes()
    again = result_loading.load_results(scene, project_dir)
    assert scene.GetNumberOfNodes() == count
    assert [a.segmentation.GetID() for a in again] == [r.segmentation.GetID() for r in results]


def test_results_never_reuse_a_user_node_with_the_result_name(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    users = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "hippocampus_004 pseudo-label")
    users.GetSegmentation().AddEmptySegment("mine", "mine")
    results = {r.case: r for r in result_loading.load_results(scene, project_dir)}
    assert results["hippocampus_004"].segmentation is not users
    assert results["hippocampus_004"].segmentation.GetName() != users.GetName()
    assert users.GetSegmentation().GetNumberOfSegments() == 1


def test_results_without_the_source_volume_load_the_project_image(exported, tmp_path):
    _, _, _, project_dir, run, truth = exported
    scene = new_scene()
    results = result_loading.load_results(scene, project_dir)
    for r in results:
        image = read_image(project_dir / "images" / f"{r.case}.nii.gz")
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix(r.reference)
        np.testing.assert_allclose(lps, image.ijk_to_world(), atol=2e-5)
        np.testing.assert_allclose(matrix(r.confidence), matrix(r.reference), atol=1e-9)
    count = scene.GetNumberOfNodes()
    again = result_loading.load_results(scene, project_dir)  # the loaded images are reused, not loaded twice
    assert scene.GetNumberOfNodes() == count
    assert [a.reference.GetID() for a in again] == [r.reference.GetID() for r in results]


def test_results_on_the_wrong_grid_are_refused(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    image = read_image(project_dir / "images" / "hippocampus_004.nii.gz")
    shifted = Volume(truth["hippocampus_004"][0], image.spacing, tuple(o + 5 for o in image.origin), image.direction)
    write_volume(shifted, run / "pseudo" / "hippocampus_004.nii.gz")
    with pytest.raises(SFRError, match="voxel grid"):
        result_loading.load_results(scene, project_dir)


def test_flagged_slices_and_jump(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    rows = review.flagged_slices(runfolder.read_review(run))
    assert [r["confidence"] for r in rows] == sorted(r["confidence"] for r in rows)
    assert {r["case"] for r in rows} == {"hippocampus_004", "hippocampus_006"}
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    vol = nodes["hippocampus_004"]
    k = rows[0]["index"]
    r, a, s = review.jump_to_slice(scene, vol, k)
    # the slice plane now passes through voxel plane k: its centre maps back to IJK k
    ras_to_ijk = np.linalg.inv(matrix(vol))
    center = np.array([red.GetSliceToRAS().GetElement(i, 3) for i in range(3)] + [1.0])
    assert (ras_to_ijk @ center)[2] == pytest.approx(k, abs=1e-6)
    dims = vol.GetImageData().GetDimensions()
    ijk = ras_to_ijk @ np.array([r, a, s, 1.0])
    np.testing.assert_allclose(ijk[:3], [(dims[0] - 1) / 2, (dims[1] - 1) / 2, k], atol=1e-6)
    with pytest.raises(SFRError, match="outside"):
        review.jump_to_slice(scene, vol, dims[2])


def test_low_confidence_overlay_colours_only_low_voxels_and_restores_the_layers(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    user_fg = nodes["hippocampus_001"]
    comps = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    for comp in comps:
        comp.SetForegroundVolumeID(user_fg.GetID())  # the user's own foreground layer
        comp.SetForegroundOpacity(0.3)
    result = result_loading.load_results(scene, project_dir)[0]
    threshold = 0.7
    assert review.show_low_confidence(scene, result.reference, result.confidence, threshold, 0.45) == 3
    for comp in comps:
        assert comp.GetBackgroundVolumeID() == result.reference.GetID()
        assert comp.GetForegroundVolumeID() == result.confidence.GetID()
        assert comp.GetForegroundOpacity() == pytest.approx(0.45)
    # what Slicer's own display pipeline draws: opaque exactly where confidence <= threshold
    display = result.confidence.GetDisplayNode()
    display.SetInputImageDataConnection(result.confidence.GetImageDataConnection())
    display.UpdateImageDataPipeline()
    port = display.GetOutputImageDataConnection()
    port.GetProducer().Update()
    rgba = port.GetProducer().GetOutputDataObject(port.GetIndex())
    alpha = vtk.util.numpy_support.vtk_to_numpy(rgba.GetPointData().GetScalars())[:, -1]
    conf = slicer.util.arrayFromVolume(result.confidence).ravel()
    np.testing.assert_array_equal(alpha > 0, conf <= threshold)
    assert 0 < (alpha > 0).sum() < conf.size  # not the whole view
    # a second overlay (another case) keeps the first remembered layers; hiding restores them
    other = result_loading.load_results(scene, project_dir)[1]
    review.show_low_confidence(scene, other.reference, other.confidence)
    assert review.hide_low_confidence(scene) == 3
    for comp in comps:
        assert comp.GetForegroundVolumeID() == user_fg.GetID()
        assert comp.GetForegroundOpacity() == pytest.approx(0.3)
        assert comp.GetAttribute(review.ATTR_SAVED_LAYERS) is None
    with pytest.raises(SFRError, match="threshold"):
        review.show_low_confidence(scene, result.reference, result.confidence, 1.5)


def test_the_overlay_follows_the_panels_controls_and_the_editor_gets_the_shown_case(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    comps = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(2)]
    loaded = {r.case: r for r in result_loading.load_results(scene, project_dir)}
    result = loaded["hippocampus_004"]
    assert review.update_overlay(scene, result, True, 0.7, 0.45) == 2
    assert all(c.GetForegroundVolumeID() == result.confidence.GetID() for c in comps)
    assert review.update_overlay(scene, result, False) == 2  # unchecked: the layers come back
    assert all(c.GetForegroundVolumeID() is None and c.GetAttribute(review.ATTR_SAVED_LAYERS) is None for c in comps)
    review.update_overlay(scene, result, True)
    assert review.update_overlay(scene, None, True) == 2  # no case shown
    without_map = result_loading.CaseResult(result.case, result.reference, result.segmentation)
    assert review.update_overlay(scene, without_map, True) == 0  # a run without maps: nothing over the views
    assert all(c.GetForegroundVolumeID() is None for c in comps)
    with pytest.raises(SFRError, match="opacity"):
        review.update_overlay(scene, result, True, 0.7, 2.0)
    segmentation, volume, segment_id = review.show_for_editing(scene, loaded, "hippocampus_006")
    shown = loaded["hippocampus_006"]
    assert (segmentation, volume) == (shown.segmentation, shown.reference)
    assert segmentation.GetSegmentation().GetSegment(segment_id).GetName() != result_loading.LOWCONF_NAME
    assert shown.segmentation.GetDisplayNode().GetVisibility()
    assert not result.segmentation.GetDisplayNode().GetVisibility()  # the other case's pseudo-label hidden
    assert all(c.GetBackgroundVolumeID() == shown.reference.GetID() for c in comps)


# --------------------------------------------------------------------------- accept / correct


def test_accept_makes_the_pseudo_label_the_case_label_with_provenance(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    assert provenance.case_states(project_dir) == {
        "hippocampus_001": "labeled",
        "hippocampus_003": "labeled",
        "hippocampus_004": "pseudo-labeled",
        "hippocampus_006": "flagged",
        "oblique_scan": "labeled",
    }
    record = provenance.accept_case(scene, project_dir, "hippocampus_004")
    project = load_project(project_dir)
    case = project.case("hippocampus_004")
    assert (case.role, case.label) == ("labeled", "labels/hippocampus_004.nii.gz")
    np.testing.assert_array_equal(read_label(project_dir / case.label).array, truth["hippocampus_004"][0])
    kept = project_dir / record["pseudo_label"]
    assert kept.exists() and kept.read_bytes() == (run / "pseudo" / "hippocampus_004.nii.gz").read_bytes()
    prov = json.loads((project_dir / "sfr-project.json").read_text())["slicer"]["provenance"]["hippocampus_004"]
    assert prov["source"] == "accepted" and prov["run"] == run.name
    assert provenance.case_states(project_dir)["hippocampus_004"] == "accepted"
    # a later export (the case has no segmentation of its own in the table) keeps it labeled
    project_export.export_project(scene, project_dir, case_discovery.scene_cases(scene))
    case = load_project(project_dir).case("hippocampus_004")
    assert (case.role, case.label) == ("labeled", "labels/hippocampus_004.nii.gz")
    # the user then draws their own segmentation: it labels the case, the acceptance is history
    own = sample_label("hippocampus_004")
    add_segmentation(scene, nodes["hippocampus_004"], own, CLASS_NAMES, "my own")
    project_export.export_project(scene, project_dir, case_discovery.scene_cases(scene))
    np.testing.assert_array_equal(read_label(project_dir / "labels" / "hippocampus_004.nii.gz").array, own)
    state = json.loads((project_dir / "sfr-project.json").read_text())["slicer"]
    assert "hippocampus_004" not in state["provenance"]
    assert state["superseded"]["hippocampus_004"][0]["source"] == "accepted"
    assert provenance.case_states(project_dir)["hippocampus_004"] == "labeled"


def test_correction_saves_the_edited_segmentation(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    result = {r.case: r for r in result_loading.load_results(scene, project_dir)}["hippocampus_006"]
    source = nodes["hippocampus_006"]
    # "edit in the Segment Editor": erase the first class-2 slab, add voxels to class 1
    label = truth["hippocampus_006"][0].copy()
    edited = label.copy()
    edited[edited.shape[0] // 2] = 0
    edited[0, 0, :3] = 1
    segmentation = result.segmentation.GetSegmentation()
    for value, name in enumerate(CLASS_NAMES, start=1):
        sid = segmentation.GetSegmentIdBySegmentName(name)
        lm = mrml_nodes.labelmap_like(scene, source, (edited == value).astype(np.uint8))
        seg_logic = mrml_nodes.segmentation_logic(scene)
        oriented = seg_logic.CreateOrientedImageDataFromVolumeNode(lm)
        assert seg_logic.SetBinaryLabelmapToSegment(
            oriented, result.segmentation, sid, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
        )
        scene.RemoveNode(lm)
    record = provenance.accept_case(scene, project_dir, "hippocampus_006", segmentation_node=result.segmentation, reference=source)
    assert record["source"] == "corrected"
    saved = read_label(project_dir / "labels" / "hippocampus_006.nii.gz", reference=read_image(project_dir / "images" / "hippocampus_006.nii.gz"))
    np.testing.assert_array_equal(saved.array, edited)  # the low-confidence segment is not a class
    assert (project_dir / record["pseudo_label"]).read_bytes() == (run / "pseudo" / "hippocampus_006.nii.gz").read_bytes()
    assert provenance.case_states(project_dir)["hippocampus_006"] == "corrected"
    # correcting again keeps the history
    again = provenance.accept_case(scene, project_dir, "hippocampus_006")
    assert again["source"] == "accepted" and again["history"][0]["source"] == "corrected"


def test_accept_never_overwrites_a_user_label(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    (run / "pseudo").joinpath("hippocampus_001.nii.gz").write_bytes((run / "pseudo" / "hippocampus_004.nii.gz").read_bytes())
    before = (project_dir / "labels" / "hippocampus_001.nii.gz").read_bytes()
    with pytest.raises(SFRError, match="user's label"):
        provenance.accept_case(scene, project_dir, "hippocampus_001")
    assert (project_dir / "labels" / "hippocampus_001.nii.gz").read_bytes() == before
    with pytest.raises(SFRError, match="not found"):
        provenance.accept_case(scene, project_dir, "hippocampus_004", run_id="nope")
    (run / "pseudo" / "hippocampus_004.nii.gz").unlink()
    with pytest.raises(SFRError, match="no pseudo-label"):
        provenance.accept_case(scene, project_dir, "hippocampus_004")


def test_accept_refuses_hidden_ground_truth(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    project = load_project(project_dir)
    case = project.case("hippocampus_004")
    case.label = str(SAMPLE / "labels" / "hippocampus_004.nii.gz")  # evaluation-only label
    project.save()
    with pytest.raises(SFRError, match="ground-truth"):
        provenance.accept_case(scene, project_dir, "hippocampus_004")
    assert load_project(project_dir).case("hippocampus_004").role == "unlabeled"


# --------------------------------------------------------------------------- with the real engine


def test_end_to_end_with_the_engine(user_scene, tmp_path):
    import time

    from SFRSegmenterLib import runcontrol
    from SFRSegmenterLogicLib import jobs

    scene, nodes, segs, _ = user_scene
    project_dir = tmp_path / "proj"
    project = project_export.export_project(scene, project_dir, case_discovery.scene_cases(scene))
    project_export.check_ready_to_run(project)
    settings = runcontrol.RunSettings(
        backbone=os.environ.get("SFR_SLICER_E2E_BACKBONE", "tiny_test"), device="cpu",
        iterations_sam=3, iterations_vnet=3, report=False,
    )
    job = jobs.SFRJob(project_dir, settings=settings, python=sys.executable)
    job.start()
    if not job.wait(float(os.environ.get("SFR_SLICER_E2E_TIMEOUT", "900"))):
        job.stop()
        pytest.fail("sfr run did not finish in time")
    assert job.state == "done", (job.error, job.progress.log[-40:])
    assert job.progress.stages_done
    before = fingerprint(scene)
    results = result_loading.load_results(scene, project_dir, run_id=job.run_id)
    assert {r.case for r in results} == {"hippocampus_004", "hippocampus_006"}
    after = fingerprint(scene)
    assert all(after[k] == v for k, v in before.items())
    for r in results:
        assert r.reference is nodes[r.case]
        if r.confidence is not None:
            np.testing.assert_allclose(matrix(r.confidence), matrix(nodes[r.case]), atol=2e-5)
    record = provenance.accept_case(scene, project_dir, results[0].case, run_id=result_loading.run_of(results[0].segmentation))
    assert load_project(project_dir).case(results[0].case).role == "labeled" and record["source"] == "accepted"
    assert record["run"] == job.run_id


# --------------------------------------------------------------------------- cases found reliably


def write_segmentation(scene, seg, path):
    """Save a segmentation as Slicer does (``.seg.nrrd`` through its storage node)."""
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(seg)
    scene.RemoveNode(storage)


def read_segmentation(scene, path, name):
    """Load a ``.seg.nrrd`` as Slicer's Add Data does: a segmentation node with its storage node."""
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    seg.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(seg)
    seg.CreateDefaultDisplayNodes()
    return seg


def test_segmentations_read_from_seg_nrrd_files_pair_with_their_volume(tmp_path):
    first = new_scene()
    vols = {c: load_volume(first, SAMPLE / "images" / f"{c}.nii.gz", c) for c in ("hippocampus_001", "hippocampus_003")}
    write_segmentation(first, add_segmentation(first, vols["hippocampus_001"], sample_label("hippocampus_001"),
                                               CLASS_NAMES), tmp_path / "hippocampus_001.seg.nrrd")
    write_segmentation(first, add_segmentation(first, vols["hippocampus_003"], sample_label("hippocampus_003"),
                                               CLASS_NAMES), tmp_path / "my drawing.seg.nrrd")
    # a new session: volumes and segmentations loaded from files, no node references between them
    scene = new_scene()
    vols = {c: load_volume(scene, SAMPLE / "images" / f"{c}.nii.gz", c)
            for c in ("hippocampus_001", "hippocampus_003", "hippocampus_004")}
    by_name = read_segmentation(scene, tmp_path / "hippocampus_001.seg.nrrd", "hippocampus_001")
    by_grid = read_segmentation(scene, tmp_path / "my drawing.seg.nrrd", "my drawing")
    assert case_discovery.reference_volume(by_name) is None
    cases = {c.name: c for c in case_discovery.scene_cases(scene)}
    assert cases["hippocampus_001"].segmentation is by_name  # its name and grid
    assert cases["hippocampus_003"].segmentation is by_grid  # the only one on its grid
    assert cases["hippocampus_004"].segmentation is None  # no segmentation on this grid
    project = project_export.export_project(scene, tmp_path / "proj", list(cases.values()))
    assert [c.name for c in project.by_role("labeled")] == ["hippocampus_001", "hippocampus_003"]
    np.testing.assert_array_equal(read_label(tmp_path / "proj" / "labels" / "hippocampus_001.nii.gz").array,
                                  sample_label("hippocampus_001"))


def test_colour_volumes_are_skipped_with_a_note(user_scene):
    scene, nodes, _, _ = user_scene
    rgb = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    rgb.SetAndObserveImageData(image)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no data")
    names = {c.name for c in case_discovery.scene_cases(scene)}
    assert "photo" not in names and "no_data" not in names and set(nodes) <= names
    notes = case_discovery.skipped_volumes(scene)
    assert any("'photo'" in n and "3 components" in n for n in notes)
    assert any("'no data'" in n and "no voxel data" in n for n in notes)
    assert empty.GetImageData() is None


def test_different_segment_names_are_one_message_and_nothing_is_written(user_scene, tmp_path):
    scene, nodes, segs, _ = user_scene
    seg = segs["hippocampus_003"].GetSegmentation()
    seg.GetNthSegment(1).SetName("Posterior hippocampus")
    with pytest.raises(SFRError) as err:
        project_export.export_project(scene, tmp_path / "proj", case_discovery.scene_cases(scene))
    text = str(err.value)
    assert "hippocampus_001: anterior, posterior" in text
    assert "hippocampus_003: anterior, Posterior hippocampus" in text
    assert not (tmp_path / "proj").exists()
    seg.GetNthSegment(1).SetName("POSTERIOR")  # the same name in another case: same class
    project = project_export.export_project(scene, tmp_path / "proj", case_discovery.scene_cases(scene))
    assert project.classes == ["background", *CLASS_NAMES]


def test_a_case_missing_one_structure_is_told_to_add_an_empty_segment_which_works(user_scene, tmp_path):
    """One kidney, no tumour: the case lacks one structure. The message names the case and the
    missing name and says an empty segment of that name labels it absent; nothing is written.
    With the empty segment the export works and the engine's own checks accept the project."""
    from SFRSegmenterLib.preflight import check_run
    from SFRSegmenterLib.run.config import RunConfig

    scene, nodes, segs, _ = user_scene
    label = sample_label("hippocampus_003")
    label[label == 2] = 0  # this case shows no posterior part
    scene.RemoveNode(segs["hippocampus_003"])
    seg = add_segmentation(scene, nodes["hippocampus_003"], label, CLASS_NAMES, "seg 3")
    assert mrml_nodes.segment_names(seg) == ["anterior"]
    with pytest.raises(SFRError) as err:
        project_export.export_project(scene, tmp_path / "proj", case_discovery.scene_cases(scene))
    text = str(err.value)
    assert "hippocampus_003 has no 'posterior'" in text and "hippocampus_001 has no" not in text
    assert "add an empty segment of that name" in text and "\n" not in text
    assert not (tmp_path / "proj").exists()

    seg.GetSegmentation().AddEmptySegment("", "posterior")
    project = project_export.export_project(scene, tmp_path / "proj", case_discovery.scene_cases(scene))
    assert project.classes == ["background", *CLASS_NAMES]
    engine_project = load_project(tmp_path / "proj")
    check_run(engine_project, RunConfig())  # the engine's preflight: labels readable, within the classes
    case = next(c for c in engine_project.cases if c.name == "hippocampus_003")
    written = read_label(engine_project.label_path(case)).array
    assert sorted(np.unique(written)) == [0, 1]
    assert np.array_equal(written, label)


# --------------------------------------------------------------------------- results tied to a run


def test_accept_and_correction_use_the_run_of_the_node_not_the_latest(exported):
    scene, nodes, segs, project_dir, first, truth = exported
    shown = {r.case: r for r in result_loading.load_results(scene, project_dir, run_id=first.name)}
    # a later run (cancelled, failed, or another setting) becomes runs/latest with other labels
    later, _ = make_run(project_dir, run_id="20261128-000000-0000")
    for p in (later / "pseudo").glob("*.nii.gz"):
        if not p.name.endswith(("_confidence.nii.gz", "_lowconf.nii.gz")):
            img = read_label(p)
            write_volume(img.with_array(np.zeros_like(img.array)), p)
    assert runfolder.latest_run_id(project_dir) == later.name
    result = shown["hippocampus_004"]
    assert result_loading.run_of(result.segmentation) == first.name and result_loading.run_of(nodes["hippocampus_004"]) is None
    record = provenance.accept_case(scene, project_dir, "hippocampus_004", run_id=result_loading.run_of(result.segmentation))
    assert record["run"] == first.name
    np.testing.assert_array_equal(read_label(project_dir / "labels" / "hippocampus_004.nii.gz").array,
                                  truth["hippocampus_004"][0])
    corrected = shown["hippocampus_006"]
    record = provenance.accept_case(scene, project_dir, "hippocampus_006", run_id=result_loading.run_of(corrected.segmentation),
                            segmentation_node=corrected.segmentation, reference=corrected.reference)
    assert record["run"] == first.name and record["pseudo_label"] == f"provenance/hippocampus_006/{first.name}_pseudo.nii.gz"
    # loading the later run hides the nodes of the first one
    result_loading.load_results(scene, project_dir, run_id=later.name)
    assert not result.segmentation.GetDisplayNode().GetVisibility()
    links = provenance.links_html(project_dir, first.name)
    assert 'project folder</a>' in links and f"run {first.name}</a>" in links and "file://" in links


def test_a_deleted_run_folder_is_one_clear_message(exported):
    import shutil

    scene, nodes, segs, project_dir, run, truth = exported
    shutil.rmtree(run)
    before = fingerprint(scene)
    with pytest.raises(SFRError, match="not found"):
        result_loading.load_results(scene, project_dir, run_id=run.name)
    assert fingerprint(scene) == before
