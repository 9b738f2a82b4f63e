"""After one real short ``sfr run`` (tiny test backbone, CPU, SFR+) of a project exported from
real MRML: its network applied to any loaded volume (``SFRSegmenterLogicLib.apply``, the real
``sfr predict`` through the plain-Python runner the panel's run tests use), what Run says once
every case is labeled, and the progress the panel showed during that run (monotone, one total)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core (MRML) is not installed", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SFRSegmenter"))

from conftest import run_sfr  # noqa: E402
from test_slicer_scene import (CLASS_NAMES, SAMPLE, add_segmentation, fingerprint, load_volume, matrix,  # noqa: E402
                               new_scene, sample_label)

from SFRSegmenterLib import runcontrol  # noqa: E402
from SFRSegmenterLib.errors import SFRError  # noqa: E402
from SFRSegmenterLib.io import read_label  # noqa: E402
from SFRSegmenterLogicLib import apply as apply_model  # noqa: E402
from SFRSegmenterLogicLib import cases as case_discovery  # noqa: E402
from SFRSegmenterLogicLib import export as project_export  # noqa: E402
from SFRSegmenterLogicLib import jobs  # noqa: E402
from SFRSegmenterLogicLib import nodes as mrml_nodes  # noqa: E402
from SFRSegmenterLogicLib.runner import SubprocessRunner  # noqa: E402

#: A sample volume that is in no project: the "next patient".
NEXT_PATIENT = "hippocampus_007"


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_project(tmp_path_factory):
    """A project exported from a real scene (two labeled, one unlabeled case) and one finished
    real run of it; yields ``(scene, project folder, job)``."""
    scene = new_scene()
    for case in ("hippocampus_001", "hippocampus_003", "hippocampus_004"):
        volume = load_volume(scene, SAMPLE / "images" / f"{case}.nii.gz", case)
        if case != "hippocampus_004":
            add_segmentation(scene, volume, sample_label(case), CLASS_NAMES, f"{case} seg")
    project_dir = tmp_path_factory.mktemp("apply") / "proj"
    project_export.check_ready_to_run(
        project_export.export_project(scene, project_dir, case_discovery.scene_cases(scene)))
    settings = runcontrol.RunSettings(backbone="tiny_test", device="cpu", iterations_sam=3, iterations_vnet=3,
                                      report=False)
    job = jobs.SFRJob(project_dir, settings=settings, python=sys.executable)
    job.shown = []  # (fraction, stages_total) the panel showed after each poll with events
    job.on_progress = lambda j: j.shown.append((j.progress.panel(j.status)[0], j.progress.stages_total))
    job.start()
    if not job.wait(float(os.environ.get("SFR_SLICER_E2E_TIMEOUT", "900"))):
        job.stop()
        pytest.fail("sfr run did not finish in time")
    assert job.state == "done", (job.error, job.progress.log[-40:])
    return scene, project_dir, job


def apply_to(scene, project_dir, volume, work_root, run_id=None):
    job = apply_model.ApplyJob(scene, project_dir, volume, run_id=run_id, runner=SubprocessRunner(),
                               python=sys.executable, device="cpu", work_root=str(work_root))
    log = []
    job.on_log = log.append
    job.start()
    assert job.wait(300), "sfr predict did not finish in time"
    return job, log


def test_the_model_segments_a_volume_of_no_project_into_new_nodes(finished_project, tmp_path):
    scene, project_dir, run = finished_project
    volume = load_volume(scene, SAMPLE / "images" / f"{NEXT_PATIENT}.nii.gz", NEXT_PATIENT)
    before, project_before = fingerprint(scene), tree_digest(project_dir)
    (tmp_path / "work").mkdir()
    job, log = apply_to(scene, project_dir, volume, tmp_path / "work")
    assert job.state == "done", (job.error, job.lines[-20:])
    assert job.run_id == run.run_id  # the newest finished run by default
    seg = job.segmentation
    assert seg.GetName() == f"{NEXT_PATIENT} SFR ({run.run_id})"
    assert seg.GetAttribute(mrml_nodes.ATTR_KIND) == mrml_nodes.KIND_PREDICTION
    assert mrml_nodes.segment_names(seg) == CLASS_NAMES  # the project's classes, in class order
    assert seg.GetNodeReference("sfrReference") is volume
    np.testing.assert_allclose(matrix(job.confidence), matrix(volume), atol=2e-5)
    # the label equals what `sfr predict` writes for the file itself, voxel for voxel
    out = tmp_path / "cli"
    run_sfr("predict", "--model", Path(run.run_path) / "vnet", "--images", SAMPLE / "images" / f"{NEXT_PATIENT}.nii.gz",
            "--out", out, "--device", "cpu", check=True)
    expected = read_label(out / f"{NEXT_PATIENT}.nii.gz").array
    got = mrml_nodes.segmentation_to_label(scene, seg, volume, ["background", *CLASS_NAMES], add_classes=False)
    np.testing.assert_array_equal(got, expected)
    # nothing that was there changed; the project is untouched; the temporary folder is gone
    after = fingerprint(scene)
    assert all(after[node_id] == entry for node_id, entry in before.items())
    assert tree_digest(project_dir) == project_before
    assert list((tmp_path / "work").iterdir()) == []
    assert any("segmented with the model of run" in line for line in log)
    # applying again makes another node, never reuses or overwrites the first
    again, _ = apply_to(scene, project_dir, volume, tmp_path / "work")
    assert again.state == "done" and again.segmentation is not seg
    assert again.segmentation.GetName() != seg.GetName()
    np.testing.assert_array_equal(
        mrml_nodes.segmentation_to_label(scene, seg, volume, ["background", *CLASS_NAMES], add_classes=False), got)


def test_a_volume_under_a_transform_is_refused_naming_it_and_nothing_is_written(finished_project, tmp_path):
    scene, project_dir, _ = finished_project
    volume = load_volume(scene, SAMPLE / "images" / f"{NEXT_PATIENT}.nii.gz", "moved patient")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    before, project_before = fingerprint(scene), tree_digest(project_dir)
    (tmp_path / "work").mkdir()
    with pytest.raises(SFRError) as err:
        apply_to(scene, project_dir, volume, tmp_path / "work")
    assert "'moved patient'" in str(err.value) and "'registration'" in str(err.value)
    assert "harden" in str(err.value).lower()
    assert fingerprint(scene) == before and tree_digest(project_dir) == project_before
    assert list((tmp_path / "work").iterdir()) == []


def test_a_label_map_or_a_project_without_a_model_is_one_message(finished_project, tmp_path):
    scene, project_dir, _ = finished_project
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "some labels")
    slicer.util.updateVolumeFromArray(labelmap, np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(SFRError, match="'some labels' is not a scalar volume"):
        apply_to(scene, project_dir, labelmap, tmp_path)
    volume = load_volume(scene, SAMPLE / "images" / f"{NEXT_PATIENT}.nii.gz", NEXT_PATIENT)
    with pytest.raises(SFRError, match="no finished run with a trained model"):
        apply_to(scene, tmp_path / "empty project", volume, tmp_path)
    with pytest.raises(SFRError, match="run 20990101-000000-0000 is not a finished run"):
        apply_to(scene, project_dir, volume, tmp_path, run_id="20990101-000000-0000")
    assert [p for p in tmp_path.iterdir() if p.name.startswith("sfr-apply-")] == []


# --------------------------------------------------------------------------- every case labeled


def test_every_case_labeled_names_apply_model_once_a_run_has_a_model(finished_project, tmp_path):
    from SFRSegmenterLogicLib import panelrules

    scene, project_dir, run = finished_project
    entries = [e for e in case_discovery.scene_cases(scene) if e.segmentation is not None]
    for entry in case_discovery.scene_cases(scene):
        if entry.segmentation is None:
            entry.role = "excluded"
            entries.append(entry)
    with pytest.raises(SFRError) as err:
        panelrules.check_cases(entries, project_dir)
    message = str(err.value)
    assert "every case is labeled (2)" in message and "nothing left to pseudo-label" in message
    assert f"model of run {run.run_id}" in message and "Apply model" in message
    with pytest.raises(SFRError) as err:  # a project without a finished run: no model to offer
        panelrules.check_cases(entries, tmp_path / "new project")
    assert "Apply model" not in str(err.value) and "Load the next volumes" in str(err.value)


# --------------------------------------------------------------------------- progress of the real run


def test_the_progress_the_panel_showed_never_went_back_and_kept_one_total(finished_project):
    _, _, run = finished_project
    fractions = [fraction for fraction, _ in run.shown]
    assert len(fractions) >= 3
    assert all(b >= a for a, b in zip(fractions, fractions[1:])), fractions
    totals = {total for _, total in run.shown if total}
    assert len(totals) == 1, totals  # fixed by the first pipeline event


def test_replaying_the_runs_events_gives_a_fixed_total_and_a_monotone_bar(finished_project):
    from SFRSegmenterLib.runfolder import RunFolder
    from SFRSegmenterLogicLib.progress import JobProgress

    _, _, run = finished_project
    progress, seen, plans = JobProgress(), [], set()
    for line in RunFolder(run.run_path).events.read_text(encoding="utf-8").splitlines():
        event = progress.feed(line)
        if event is None:
            continue
        if event.get("event") == "stage" and event.get("pipeline"):
            plans.add(event.get("of"))
        seen.append((progress.panel()[0], progress.stages_total))
    first_total = next(total for _, total in seen if total)
    assert all(total in (0, first_total) for _, total in seen)
    bar = [fraction for fraction, _ in seen]
    assert all(b >= a for a, b in zip(bar, bar[1:])), bar
    if len(plans) > 1:  # SFR+ stopped its rounds early: the dropped stages counted as done
        assert bar[-1] >= 1 - 1 / first_total


def test_a_shrinking_plan_and_a_restarting_step_counter_never_move_the_bar_back():
    """The sequence the engine emitted in the run the audit saw: 10 stages planned, the rounds
    stopped after the first, then the last stage as 6 of 6 (it read 45 % -> 83 % -> 100 %)."""
    from SFRSegmenterLogicLib.progress import JobProgress

    progress, bar = JobProgress(), []
    for line in ['{"event": "stage", "stage": "stitch", "status": "start", "pipeline": true, "index": 1, "of": 10}',
                 '{"event": "stage", "stage": "finetune-r0", "status": "start", "pipeline": true, "index": 2, "of": 10}',
                 '{"event": "progress", "stage": "embed", "step": 64, "total": 64}',
                 '{"event": "progress", "stage": "finetune", "step": 1, "total": 3}',
                 '{"event": "stage", "stage": "confidence-r0", "status": "start", "pipeline": true, "index": 5, "of": 10}',
                 '{"event": "stage", "stage": "metrics", "status": "start", "pipeline": true, "index": 6, "of": 6}']:
        progress.feed(line)
        bar.append(progress.panel()[0])
        assert progress.stages_total == 10
    assert bar == sorted(bar) and bar[-1] == pytest.approx(0.9)
    assert progress.status_text() == "stage 6/6 metrics"


# --------------------------------------------------------------------------- rules moved out of the widget


def test_the_table_offers_the_users_and_applied_segmentations_never_a_runs_results(finished_project, tmp_path):
    from SFRSegmenterLogicLib import results as result_loading

    scene, project_dir, run = finished_project
    volume = load_volume(scene, SAMPLE / "images" / f"{NEXT_PATIENT}.nii.gz", "next patient")
    (tmp_path / "work").mkdir()
    applied, _ = apply_to(scene, project_dir, volume, tmp_path / "work")
    pseudo = result_loading.load_results(scene, project_dir, run_id=run.run_id)[0].segmentation
    offered = case_discovery.pickable_segmentations(scene)
    users = [e.segmentation for e in case_discovery.scene_cases(scene) if e.segmentation is not None]
    assert applied.segmentation in offered and all(seg in offered for seg in users)
    assert pseudo not in offered
    pseudo.SetAttribute(mrml_nodes.ATTR_ACCEPTED, "accepted")
    assert pseudo in case_discovery.pickable_segmentations(scene)
    # a pick is kept while its node exists; "" (none) is a pick too; else the segmentation found
    found = users[0]
    assert case_discovery.picked_segmentation_id(scene, applied.segmentation.GetID(), found) == applied.segmentation.GetID()
    assert case_discovery.picked_segmentation_id(scene, "", found) == ""
    assert case_discovery.picked_segmentation_id(scene, "vtkMRMLSegmentationNode999", found) == found.GetID()
    assert case_discovery.picked_segmentation_id(scene, None, None) == ""


def test_retrain_starts_from_the_newest_finished_run_only_when_there_is_one(finished_project, tmp_path):
    from SFRSegmenterLogicLib import panelrules

    _, project_dir, _ = finished_project
    assert panelrules.retrain_warm_start(project_dir) == "latest"
    assert panelrules.retrain_warm_start(tmp_path / "new project") is None
