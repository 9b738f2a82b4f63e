"""Review and correction in the Slicer module, on the real Slicer core (``slicer-core``).

Moving through the flagged slices, unsaved edits to pseudo-labels, the Exclude role, the panel's
Segment Editor parameter node, the Sample Data entry and the quick self-test, the GPU/memory
check, and the run-folder reader shared with the engine.  Scenes, files and runs are the ones
of ``test_slicer_scene.py`` (real NIfTI written by the engine, read through storage nodes).
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core (MRML) is not installed", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SFRSegmenter"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_slicer_scene import (  # noqa: E402,F401 - fixtures
    CLASS_NAMES, exported, fingerprint, make_run, matrix, new_scene, sample_label, scene, user_scene)

from SFRSegmenterLib import review as engine_review  # noqa: E402
from SFRSegmenterLib import runfolder  # noqa: E402
from SFRSegmenterLib.errors import SFRError  # noqa: E402
from SFRSegmenterLib.manifest import load_project  # noqa: E402
from SFRSegmenterLogicLib import cases as case_discovery  # noqa: E402
from SFRSegmenterLogicLib import edits, provenance, resources, review, sampledata  # noqa: E402
from SFRSegmenterLogicLib import export as project_export  # noqa: E402
from SFRSegmenterLogicLib import nodes as mrml_nodes  # noqa: E402
from SFRSegmenterLogicLib import results as result_loading  # noqa: E402


def paint(scene, result, class_name, mask):
    """What a Segment Editor effect does: replace a segment's voxels (SetBinaryLabelmapToSegment)."""
    segmentation = result.segmentation.GetSegmentation()
    sid = segmentation.GetSegmentIdBySegmentName(class_name)
    labelmap = mrml_nodes.labelmap_like(scene, result.reference, mask.astype(np.uint8))
    logic = mrml_nodes.segmentation_logic(scene)
    oriented = logic.CreateOrientedImageDataFromVolumeNode(labelmap)
    assert logic.SetBinaryLabelmapToSegment(oriented, result.segmentation, sid,
                                            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    scene.RemoveNode(labelmap)


# --------------------------------------------------------------------------- flagged slices


def test_next_flagged_walks_every_case_worst_first_and_shows_each(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    loaded = {r.case: r for r in result_loading.load_results(scene, project_dir)}
    rows = review.flagged_slices({case: r.review for case, r in loaded.items()})
    assert review.flagged_rows(list(loaded.values())) == rows  # what the panel's table lists
    assert len(rows) == 4 and {r["case"] for r in rows} == set(loaded)
    assert [r["confidence"] for r in rows] == sorted(r["confidence"] for r in rows)
    position, seen = -1, []
    for _ in range(len(rows)):
        position = review.step(rows, position, +1)
        row = rows[position]
        review.show_flagged(scene, loaded, row)
        shown = loaded[row["case"]]
        # only that case's pseudo-label is visible, over its own volume, on its flagged slice
        for case, r in loaded.items():
            assert bool(r.segmentation.GetDisplayNode().GetVisibility()) == (case == row["case"])
        assert composite.GetBackgroundVolumeID() == shown.reference.GetID()
        center = np.array([red.GetSliceToRAS().GetElement(i, 3) for i in range(3)] + [1.0])
        assert (np.linalg.inv(matrix(shown.reference)) @ center)[2] == pytest.approx(row["index"], abs=1e-6)
        seen.append(position)
    assert seen == [0, 1, 2, 3]
    assert review.step(rows, 3, +1) == 0 and review.step(rows, 0, -1) == 3  # wraps both ways
    assert review.step(rows, -1, -1) == 3 and review.step([], -1, +1) == -1
    with pytest.raises(SFRError, match="no loaded result"):
        review.show_flagged(scene, loaded, {"case": "nope", "index": 0})


# --------------------------------------------------------------------------- unsaved edits


def test_unsaved_edits_are_found_and_cleared_by_save_correction(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    loaded = {r.case: r for r in result_loading.load_results(scene, project_dir)}
    assert edits.unsaved_results(scene) == []  # as loaded
    result = loaded["hippocampus_006"]
    # display changes are not edits
    segment = result.segmentation.GetSegmentation().GetSegment(
        result.segmentation.GetSegmentation().GetSegmentIdBySegmentName("posterior"))
    segment.SetColor(0.1, 0.2, 0.3)
    result.segmentation.GetDisplayNode().SetOpacity(0.5)
    assert edits.unsaved_results(scene) == []
    # painting is
    label = truth["hippocampus_006"][0]
    edited = label == 2
    edited[edited.shape[0] // 2] = False
    paint(scene, result, "posterior", edited)
    assert [case for case, _ in edits.unsaved_results(scene)] == ["hippocampus_006"]
    message = edits.unsaved_message(edits.unsaved_results(scene), "Retrain")
    assert "hippocampus_006" in message and "Save correction" in message
    # painting the original back ("undo") is no edit any more
    paint(scene, result, "posterior", label == 2)
    assert edits.unsaved_results(scene) == []
    # a labelmap padded to a larger extent, same voxels: no edit
    segmentation = result.segmentation.GetSegmentation()
    posterior = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("posterior"))
    representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    before = posterior.GetRepresentation(representation)
    padded = slicer.vtkOrientedImageData()
    pad = vtk.vtkImageConstantPad()
    pad.SetInputData(before)
    e = before.GetExtent()
    pad.SetOutputWholeExtent(e[0] - 2, e[1] + 3, e[2] - 1, e[3] + 1, e[4], e[5] + 2)
    pad.SetConstant(0)
    pad.Update()
    padded.ShallowCopy(pad.GetOutput())
    padded.CopyDirections(before)
    posterior.AddRepresentation(representation, padded)
    assert posterior.GetRepresentation(representation).GetExtent() != e
    assert edits.unsaved_results(scene) == []
    # a renamed segment is an edit; the low-confidence guide is not content
    posterior.SetName("Posterior")
    assert [case for case, _ in edits.unsaved_results(scene)] == ["hippocampus_006"]
    posterior.SetName("posterior")
    assert edits.unsaved_results(scene) == []
    paint(scene, result, "posterior", edited)
    guide = result.low_confidence_segment
    assert guide is not None
    low = np.zeros_like(label, bool)
    low[0, 0, 0] = True
    logic = mrml_nodes.segmentation_logic(scene)
    lm = mrml_nodes.labelmap_like(scene, result.reference, low.astype(np.uint8))
    assert logic.SetBinaryLabelmapToSegment(logic.CreateOrientedImageDataFromVolumeNode(lm), result.segmentation,
                                            guide, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    scene.RemoveNode(lm)
    # Save correction writes the edit and marks the node saved
    provenance.accept_case(scene, project_dir, "hippocampus_006", run_id=result_loading.run_of(result.segmentation),
                           segmentation_node=result.segmentation, reference=result.reference)
    assert edits.unsaved_results(scene) == []
    # reloading the same run reuses the node and keeps its saved state
    again = {r.case: r for r in result_loading.load_results(scene, project_dir)}
    assert again["hippocampus_006"].segmentation is result.segmentation
    assert again["hippocampus_006"].low_confidence_segment == guide
    paint(scene, again["hippocampus_004"], "anterior", truth["hippocampus_004"][0] == 2)
    assert [case for case, _ in edits.unsaved_results(scene)] == ["hippocampus_004"]


# --------------------------------------------------------------------------- exclude


def test_an_excluded_case_leaves_the_project_and_comes_back_as_it_was(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    result = {r.case: r for r in result_loading.load_results(scene, project_dir)}["hippocampus_004"]
    provenance.accept_case(scene, project_dir, "hippocampus_004", run_id=result_loading.run_of(result.segmentation))
    files = {p: p.read_bytes() for p in project_dir.rglob("*.nii.gz")}
    # an excluded volume may even be under a transform: it is not exported
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    nodes["hippocampus_004"].SetAndObserveTransformNodeID(transform.GetID())
    entries = case_discovery.scene_cases(scene)
    for entry in entries:
        if entry.name in ("hippocampus_004", "oblique_scan"):
            entry.role = case_discovery.EXCLUDED
    before = fingerprint(scene)
    project = project_export.export_project(scene, project_dir, entries)
    assert fingerprint(scene) == before
    assert {c.name for c in project.cases} == {"hippocampus_001", "hippocampus_003", "hippocampus_006"}
    assert {p: p.read_bytes() for p in files} == files  # nothing on disk deleted or rewritten
    states = provenance.case_states(project_dir)
    assert states["hippocampus_004"] == states["oblique_scan"] == "excluded"
    # included again: the accepted label and the user's label come back
    nodes["hippocampus_004"].SetAndObserveTransformNodeID(None)
    project = project_export.export_project(scene, project_dir, case_discovery.scene_cases(scene))
    back = {c.name: c for c in load_project(project_dir).cases}
    assert (back["hippocampus_004"].role, back["hippocampus_004"].label) == ("labeled", "labels/hippocampus_004.nii.gz")
    assert back["oblique_scan"].role == "labeled"
    assert provenance.case_states(project_dir)["hippocampus_004"] == "accepted"
    everything = case_discovery.scene_cases(scene)
    for entry in everything:
        entry.role = case_discovery.EXCLUDED
    with pytest.raises(SFRError, match="no volumes to export"):
        project_export.export_project(scene, project_dir, everything)


def test_pseudo_labels_keep_the_users_colours_and_terminology(user_scene, tmp_path):
    scene, nodes, segs, _ = user_scene
    term = "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^5001^Hippocampus~^^~~^^~^^"
    colors = {"anterior": (0.9, 0.1, 0.2), "posterior": (0.1, 0.3, 0.95)}
    for seg in segs.values():
        segmentation = seg.GetSegmentation()
        for name, color in colors.items():
            segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
            segment.SetColor(*color)
            if name == "anterior":
                segment.SetTag(segment.GetTerminologyEntryTagName(), term)
    user_seg = segs["oblique_scan"].GetSegmentation()  # the last labeled case exported
    user_posterior = user_seg.GetSegment(user_seg.GetSegmentIdBySegmentName("posterior"))
    user_posterior_term = mrml_nodes.tag(user_posterior, user_posterior.GetTerminologyEntryTagName())
    project_dir = tmp_path / "proj"
    project_export.export_project(scene, project_dir, case_discovery.scene_cases(scene))
    make_run(project_dir)
    for result in result_loading.load_results(scene, project_dir):
        segmentation = result.segmentation.GetSegmentation()
        for name, color in colors.items():
            segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
            assert segment.GetColor() == pytest.approx(color, abs=1e-4)
        anterior = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("anterior"))
        assert mrml_nodes.tag(anterior, anterior.GetTerminologyEntryTagName()) == term
        posterior = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("posterior"))
        assert mrml_nodes.tag(posterior, posterior.GetTerminologyEntryTagName()) == user_posterior_term


def test_a_project_folder_that_cannot_be_written_is_one_message(user_scene, tmp_path):
    scene, nodes, segs, _ = user_scene
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    before = fingerprint(scene)
    with pytest.raises(SFRError, match="cannot be written") as err:
        project_export.export_project(scene, blocker / "proj", case_discovery.scene_cases(scene))
    assert str(err.value).startswith(str(blocker / "proj"))  # names the folder
    assert fingerprint(scene) == before and blocker.read_text() == "not a folder"


# --------------------------------------------------------------------------- Segment Editor


def test_the_panel_editor_has_its_own_parameter_node_and_edits_the_shown_pseudo_label(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    node = edits.editor_node(scene)
    assert node.IsA("vtkMRMLSegmentEditorNode") and node.GetSingletonTag() == edits.EDITOR_SINGLETON_TAG
    assert edits.editor_node(scene) is node  # one per scene
    result = result_loading.load_results(scene, project_dir)[0]
    segmentation, volume, segment_id = edits.editing_target(result)
    assert segmentation is result.segmentation and volume is result.reference
    assert segmentation.GetSegmentation().GetSegment(segment_id).GetName() == CLASS_NAMES[0]


# --------------------------------------------------------------------------- sample data and self-test


def test_sample_data_entry_fetches_like_sample_data_and_passes_the_quick_self_test(tmp_path):
    source = sampledata.sample_source()
    assert source["category"] == sampledata.CATEGORY and source["sampleName"] == sampledata.SAMPLE_NAME
    n = len(source["uris"])
    assert n == 7 and all(len(source[k]) == n for k in ("fileNames", "nodeNames", "loadFileType", "checksums"))
    assert len(set(source["fileNames"])) == n and all(name.startswith("SFR-") for name in source["fileNames"])
    fetched = []
    for uri, name, checksum in zip(source["uris"], source["fileNames"], source["checksums"]):
        path = tmp_path / name
        urllib.request.urlretrieve(uri, path)  # what SampleDataLogic.downloadFile does
        algo, digest = checksum.split(":")
        assert algo == "SHA256" and sampledata._sha256(path) == digest
        fetched.append(path)
    report = sampledata.quick_check(new_scene(), tmp_path / "project", fetched)
    assert report["labeled"] == list(sampledata.LABELED)
    assert len(report["classes"]) == 3  # background and the two hippocampus parts
    project = load_project(tmp_path / "project")
    assert {c.name for c in project.by_role("unlabeled")} == set(sampledata.UNLABELED)


# --------------------------------------------------------------------------- GPU and memory


def test_resources_are_probed_for_real_and_warnings_name_the_problem():
    found = resources.probe("auto")  # this machine: torch and psutil for real
    import torch

    if torch.cuda.is_available():
        assert found.device.startswith("cuda") and found.gpu_free_gib is not None
    else:
        assert found.device in ("cpu", "mps")
    assert found.ram_available_gib and found.ram_available_gib > 0
    assert resources.describe(found).startswith(found.name)
    cpu = resources.Resources("cpu", "CPU (2 cores)", None, None, 2.0, 2)
    said = resources.warnings(cpu, "vit_b", "auto")
    assert any("No GPU" in s for s in said) and any("LiteMedSAM" in s for s in said)
    assert resources.warnings(resources.Resources("cpu", "CPU", None, None, 64.0), "lite_medsam", "cpu") == []
    assert any("3.9 GiB" in s for s in resources.warnings(cpu, "lite_medsam", "cpu"))
    small = resources.Resources("cuda:0", "GPU X", 12.0, 8.0, 64.0)
    assert any("GPU X has 8.0 GiB free" in s and "about 16.8 GiB" in s for s in resources.warnings(small, "vit_b"))
    assert any("not measured" in s for s in resources.warnings(small, "vit_h"))
    assert resources.warnings(resources.Resources("cuda:0", "GPU Y", 80.0, 70.0, 64.0), "vit_h") == []
    assert resources.warnings(small, "lite_medsam") == []  # never measured on a GPU: nothing guessed


# --------------------------------------------------------------------------- the run folder reader


def test_the_run_folder_reader_is_the_engines_contract(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    assert tuple(runfolder.CASE_FILES.values()) == engine_review.CASE_SUFFIXES
    assert runfolder.REVIEW_JSON == engine_review.REVIEW_JSON
    assert runfolder.latest_run_id(project_dir) == run.name
    assert runfolder.pseudo_cases(run) == ["hippocampus_004", "hippocampus_006"]
    assert set(runfolder.read_review(run)) == {"hippocampus_004", "hippocampus_006"}
    (run / "review.json").write_text("{broken")
    with pytest.raises(SFRError, match="not valid JSON"):
        runfolder.read_review(run)
    assert json.loads((project_dir / "sfr-project.json").read_text())["slicer"]["exports"]


def test_the_panel_shows_cases_by_estimated_dice_from_the_engines_review_schema(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    data = json.loads((run / "review.json").read_text())
    estimates = {"hippocampus_004": 0.81, "hippocampus_006": 0.62}
    data["cases"] = [engine_review.review_record({**e, "estimated_dice": estimates[e["case"]],
                                                  "estimated_dice_per_class": [estimates[e["case"]]] * 2},
                                                 e["trusted"]) for e in data["cases"]]
    (run / "review.json").write_text(json.dumps(data))
    loaded = result_loading.load_results(scene, project_dir)
    by_case = {r.case: r for r in loaded}
    for case, est in estimates.items():
        assert float(by_case[case].segmentation.GetAttribute("SFR.EstimatedDice")) == est
    ordered = review.review_order(loaded)
    assert [r.case for r in ordered] == ["hippocampus_006", "hippocampus_004"]  # worst estimate first
    assert review.case_label("hippocampus_006", by_case["hippocampus_006"].review).startswith(
        "hippocampus_006 (estimated Dice 62 %, confidence ")
    assert review.case_label("x", {}) == "x"
    menu = review.case_menu(loaded)  # the panel's case menu: worst estimate first, labelled
    assert [case for _label, case in menu] == ["hippocampus_006", "hippocampus_004"]
    assert menu[0][0] == review.case_label("hippocampus_006", by_case["hippocampus_006"].review)


def test_the_panel_reads_gpu_facts_in_a_short_child_process_never_in_its_own():
    """Slicer's process never imports torch for the GPU facts (torch.cuda.mem_get_info would make
    a CUDA context there, holding GPU memory while Slicer runs): a fresh Python asks the child."""
    import subprocess

    code = "\n".join([
        "import json, sys",
        f"sys.path[:0] = [{str(REPO / 'SFRSegmenter')!r}, {str(REPO)!r}]",
        "from SFRSegmenterLogicLib import resources",
        "found, devices = resources.device_facts('auto', python=sys.executable)",
        "print(json.dumps({'torch': 'torch' in sys.modules, 'device': found.device, 'cores': found.cpu_cores,",
        "                  'devices': [d.value for d in devices]}))",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["torch"] is False
    here = resources.probe("auto")
    assert said["device"] == here.device and said["cores"] == here.cpu_cores
    assert said["devices"][0] == "auto" and "cpu" in said["devices"]
    with pytest.raises(SFRError, match="could not read the GPU and memory"):
        resources.device_facts("auto", python=str(REPO / "no-such-python"))
