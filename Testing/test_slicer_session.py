"""The panel's jobs without Qt (``session.PanelJobs``): one task at a time delivered by polling,
the buttons' inputs, Accept and Save correction on the shown run, and the self-test's whole loop
with a real detached ``sfr run`` on real MRML nodes."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from test_slicer_scene import (CLASS_NAMES, SAMPLE, add_segmentation, exported, load_volume, make_run,  # noqa: F401
                               new_scene, sample_label, scene, slicer, user_scene)

from SFRSegmenterLib.errors import SFRError  # noqa: E402
from SFRSegmenterLib.io import read_label  # noqa: E402
from SFRSegmenterLogicLib import nodes as mrml_nodes  # noqa: E402
from SFRSegmenterLogicLib import provenance, sampledata, session  # noqa: E402
from SFRSegmenterLogicLib import results as result_loading  # noqa: E402
from SFRSegmenterLogicLib.tasks import CommandJob, Step  # noqa: E402


def test_one_task_at_a_time_delivered_by_polling(tmp_path):
    jobs = session.PanelJobs(slicer.vtkMRMLScene())
    assert jobs.active_jobs() == [] and jobs.state() == {"job_state": None, "applying": False, "busy": False}
    slow = CommandJob([Step("counting", [sys.executable, "-c", "import time\nfor i in range(3):\n print(i, flush=True)\n"
                                         " time.sleep(0.3)"])], jobs.runner_factory, what="Counting")
    lines = []
    jobs.start_task(slow, lambda kind, text: lines.append((kind, text)))
    assert jobs.state()["busy"] and jobs.active_jobs() == [slow]
    with pytest.raises(SFRError, match="Counting is still running"):
        jobs.start_task(CommandJob([], what="Other"))
    import time

    deadline = time.monotonic() + 60
    while jobs.active_jobs() and time.monotonic() < deadline:
        assert jobs.poll() == []
        time.sleep(0.05)
    assert slow.state == "done" and [t for k, t in lines if k == "log"][-3:] == ["0", "1", "2"]
    assert not jobs.state()["busy"]


def test_accept_and_save_correction_use_the_shown_run(exported):
    scene, nodes, segs, project_dir, run, truth = exported
    jobs = session.PanelJobs(scene)
    results = jobs.load_results(project_dir, run.name)
    run_id, lines = jobs.results_summary(project_dir, results)
    assert run_id == run.name and lines[0] == f"loaded 2 pseudo-labeled cases of run {run.name}"
    later, _ = make_run(project_dir, run_id="20261128-000000-0000")  # a newer run is not the one shown
    assert jobs.accept(project_dir, "hippocampus_004") == "hippocampus_004: pseudo-label accepted as its label"
    shown = jobs.results["hippocampus_004"].segmentation
    assert shown.GetAttribute(mrml_nodes.ATTR_ACCEPTED) == "accepted"
    state = provenance.case_states(project_dir)
    assert state["hippocampus_004"] == "accepted"
    np.testing.assert_array_equal(read_label(project_dir / "labels" / "hippocampus_004.nii.gz").array,
                                  truth["hippocampus_004"][0])
    assert jobs.save_correction(project_dir, "hippocampus_006") == "hippocampus_006: correction saved as its label"
    assert provenance.case_states(project_dir)["hippocampus_006"] == "corrected"


def test_the_self_tests_whole_loop_runs_on_real_mrml(tmp_path):
    pytest.importorskip("segment_anything")
    scene = slicer.vtkMRMLScene()
    report = sampledata.workflow_check(scene, tmp_path / "proj", timeout_s=800, say=lambda text: None)
    assert report["results"] == sorted(sampledata.UNLABELED)
    assert provenance.case_states(tmp_path / "proj")[report["accepted"]] == "accepted"


def test_the_cases_table_keeps_picks_and_roles_and_gives_what_it_shows(user_scene):
    from SFRSegmenterLogicLib import cases

    scene, nodes, segs, _ = user_scene
    entries = cases.scene_cases(scene)
    rows = {row.name: row for row in cases.table_rows(scene, entries, {}, {}, {"hippocampus_001": "labeled"})}
    assert rows["hippocampus_001"].picked == segs["hippocampus_001"].GetID() and rows["hippocampus_001"].state == "labeled"
    assert rows["hippocampus_004"].picked == "" and rows["hippocampus_004"].state == "new"
    assert rows["hippocampus_004"].choices[0] == ("(none)", "")
    assert {seg.GetID() for seg in segs.values()} <= {node_id for _, node_id in rows["hippocampus_004"].choices}
    picks = {"hippocampus_004": segs["hippocampus_003"].GetID(), "hippocampus_001": ""}
    roles = {"hippocampus_006": "validation"}
    rows = {row.name: row for row in cases.table_rows(scene, entries, picks, roles, {})}
    assert rows["hippocampus_004"].picked == segs["hippocampus_003"].GetID() and rows["hippocampus_001"].picked == ""
    assert rows["hippocampus_006"].role == "validation" and rows["hippocampus_003"].role == ""
    shown = {entry.name: entry for entry in cases.entries_from_table(scene, entries, picks, roles)}
    assert shown["hippocampus_004"].segmentation is segs["hippocampus_003"]
    assert shown["hippocampus_001"].segmentation is None and shown["hippocampus_001"].effective_role == "unlabeled"
    assert shown["hippocampus_006"].role == "validation"
    scene.RemoveNode(segs["hippocampus_003"])  # a picked node removed: back to what was found
    rows = {row.name: row for row in cases.table_rows(scene, cases.scene_cases(scene), picks, roles, {})}
    assert rows["hippocampus_004"].picked == ""


def test_the_cases_table_keeps_choices_across_refreshes_and_gives_each_note_once(user_scene, tmp_path):
    import vtk

    from SFRSegmenterLib.manifest import MANIFEST_NAME
    from SFRSegmenterLogicLib import cases

    scene, nodes, segs, _ = user_scene
    photo = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")  # not a case: a note
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    photo.SetAndObserveImageData(image)
    table = cases.CasesTable()
    rows, lines = table.refresh(scene, tmp_path / "no project yet")
    assert {row.name for row in rows} == set(nodes) and {row.state for row in rows} == {"new"}
    assert len(lines) == 1 and "'photo'" in lines[0]
    table.picks["hippocampus_004"] = segs["hippocampus_003"].GetID()  # what the row's combo box records
    table.roles["hippocampus_006"] = "validation"
    (tmp_path / MANIFEST_NAME).write_text("{damaged")
    rows, lines = table.refresh(scene, tmp_path)  # the note is not given again; the damaged project is one line
    assert len(lines) == 1 and lines[0].startswith("error: ") and MANIFEST_NAME in lines[0]
    shown = {row.name: row for row in rows}
    assert shown["hippocampus_004"].picked == segs["hippocampus_003"].GetID()
    assert shown["hippocampus_006"].role == "validation" and shown["hippocampus_006"].state == "new"
    entries = {entry.name: entry for entry in table.entries(scene)}
    assert entries["hippocampus_004"].segmentation is segs["hippocampus_003"]
    assert table.reference_nodes() == {entry.name: entry.volume for entry in table.cases}
    table.forget_choices()  # the scene closed
    assert table.picks == {} and table.roles == {}
    assert table.refresh(scene, tmp_path / "no project yet")[1] == []


def test_run_says_what_the_device_offers_and_what_is_short_read_in_a_child_process():
    from SFRSegmenterLib import runcontrol

    line, warnings = session.PanelJobs.resource_warnings(runcontrol.RunSettings(backbone="vit_b", device="cpu"))
    assert line.startswith("device: CPU (") and "GiB RAM available" in line
    assert any("LiteMedSAM is the backbone made for CPUs" in text for text in warnings)


def test_device_menu_without_probing_is_auto_and_cpu():
    from SFRSegmenterLogicLib import environment

    choices, error = session.PanelJobs.device_choices(probe=False)
    assert [c.value for c in choices] == ["auto", "cpu"] and error is None
    assert "expand Settings to detect" in environment.device_info(choices[0].label, probed=False)
    assert environment.device_info(choices[0].label, probed=True) == choices[0].label
