"""Which run the Results list shows, on real run folders read by the engine's runcontrol."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SFRSegmenter"))

from SFRSegmenterLib import jobs, runcontrol  # noqa: E402
from SFRSegmenterLogicLib import panelrules  # noqa: E402


RUN1, RUN2 = "20260101-100000-0a01", "20260101-110000-0a02"  # the engine's run-id pattern


def _finished_run(project, run_id, finished):
    path = jobs.runs_dir(project) / run_id
    path.mkdir(parents=True)
    (path / jobs.STATUS_NAME).write_text(json.dumps({"run_id": run_id, "state": "done", "finished": finished}))


def test_run_that_just_finished_is_shown_not_the_old_selection(tmp_path):
    _finished_run(tmp_path, RUN1, "2026-01-01T10:00:00")
    chosen = RUN1  # the user had loaded run 1's results
    _finished_run(tmp_path, RUN2, "2026-01-01T11:00:00")  # Retrain finished run 2
    ids = [st["run_id"] for st in runcontrol.finished_runs(tmp_path)]
    assert ids == [RUN2, RUN1]
    # the old rule kept the selection (run 1); the panel must show the run just finished
    assert panelrules.run_to_show(ids, chosen=chosen, just_finished=RUN2) == RUN2


def test_choice_kept_otherwise_and_newest_by_default(tmp_path):
    _finished_run(tmp_path, RUN1, "2026-01-01T10:00:00")
    _finished_run(tmp_path, RUN2, "2026-01-01T11:00:00")
    ids = [st["run_id"] for st in runcontrol.finished_runs(tmp_path)]
    assert panelrules.run_to_show(ids, chosen=RUN1) == RUN1
    assert panelrules.run_to_show(ids, chosen="deleted") == RUN2
    assert panelrules.run_to_show(ids, chosen=RUN1, just_finished="failed-run") == RUN1
    assert panelrules.run_to_show([], chosen=RUN1) is None


def test_the_results_list_names_each_finished_run_and_selects_by_the_rule(tmp_path):
    _finished_run(tmp_path, RUN1, "2026-01-01T10:00:00")
    _finished_run(tmp_path, RUN2, None)
    (jobs.runs_dir(tmp_path) / "20260101-120000-0a03").mkdir()  # a run without a status: not finished
    items, shown, lines = panelrules.results_menu(tmp_path, chosen=RUN1)
    assert items == [(f"{RUN1} (2026-01-01T10:00:00)", RUN1), (f"{RUN2} (finished)", RUN2)] and lines == []
    assert shown == RUN1 and panelrules.results_menu(tmp_path, RUN1, just_finished=RUN2)[1] == RUN2
    assert panelrules.results_menu(tmp_path)[1] == RUN1  # the newest by the time it finished
    items, shown, lines = panelrules.results_menu(tmp_path / ("x" * 300), chosen=RUN1)  # a name the system refuses
    assert (items, shown) == ([], None) and len(lines) == 1 and lines[0].startswith("error: ")


def test_active_run_refuses_before_any_label_file_is_touched(tmp_path):
    import pytest

    from conftest import hold_project_lock

    from SFRSegmenterLib.errors import SFRError

    label = tmp_path / "labels" / "case1.nii.gz"
    label.parent.mkdir(parents=True)
    label.write_bytes(b"the user's label")
    holder = hold_project_lock(tmp_path)
    try:
        with pytest.raises(SFRError) as info:
            panelrules.check_project_free(tmp_path)
        assert "busy" in str(info.value)
        assert label.read_bytes() == b"the user's label"
    finally:
        holder.kill()
        holder.wait()
    panelrules.check_project_free(tmp_path)  # the holder gone: its stale lock is cleared


def test_state_column_describes_the_last_finished_run_not_a_stopped_latest(tmp_path):
    _finished_run(tmp_path, RUN1, "2026-01-01T10:00:00")
    stopped = jobs.runs_dir(tmp_path) / RUN2
    stopped.mkdir()
    (stopped / jobs.STATUS_NAME).write_text(json.dumps({"run_id": RUN2, "state": "cancelled"}))
    jobs.set_latest(tmp_path, RUN2)
    assert jobs.latest_run_id(tmp_path) == RUN2
    assert panelrules.state_run(tmp_path) == RUN1
    assert panelrules.state_run(tmp_path / "empty") is None


# --------------------------------------------------------------------------- buttons


def test_buttons_follow_the_run_state_and_are_the_panels_own():
    import xml.etree.ElementTree as ET

    from SFRSegmenterLogicLib.jobs import ACTIVE_STATES, FINAL_STATES

    ui = REPO / "SFRSegmenter" / "Resources" / "UI" / "SFRSegmenter.ui"
    widgets = {w.get("name"): w.get("class") for w in ET.parse(ui).getroot().iter("widget")}
    assert all(widgets.get(name) == "QPushButton" for name in panelrules.BUTTONS)
    idle = panelrules.enabled_buttons(None, None, finished_runs=2, results_loaded=True, flagged_slices=3)
    assert set(idle) == set(panelrules.BUTTONS)
    assert [b for b, on in idle.items() if not on] == ["stopButton"]  # no run to stop
    for state in ACTIVE_STATES:
        busy = panelrules.enabled_buttons(None, state, finished_runs=2, results_loaded=True, flagged_slices=3)
        # nothing that writes the project or replaces the shown results while the engine works on it
        assert not any(busy[b] for b in ("runButton", "retrainButton", "acceptButton", "saveCorrectionButton",
                                         "loadResultsButton"))
        assert busy["stopButton"] == (state != "stopping")  # a stop already asked is not asked again
        assert busy["nextFlaggedButton"] and busy["previousFlaggedButton"]  # looking is harmless
        assert busy["applyModelButton"]  # reads a finished run's network only
    for state in FINAL_STATES:
        ended = panelrules.enabled_buttons(None, state, finished_runs=1, results_loaded=False, flagged_slices=0)
        assert ended["runButton"] and ended["retrainButton"] and ended["loadResultsButton"]
        assert not any(ended[b] for b in ("stopButton", "acceptButton", "saveCorrectionButton",
                                          "nextFlaggedButton", "previousFlaggedButton"))
    old = panelrules.enabled_buttons("Slicer 5.8 is too old", None, finished_runs=1)
    assert not old["runButton"] and not old["retrainButton"] and old["loadResultsButton"]
    assert not old["applyModelButton"]  # the engine's predict does not run there either
    assert not panelrules.enabled_buttons(None, None, finished_runs=0)["loadResultsButton"]
    assert not panelrules.enabled_buttons(None, None, finished_runs=0)["applyModelButton"]
    assert not panelrules.enabled_buttons(None, None, finished_runs=1, applying=True)["applyModelButton"]
    installing = panelrules.enabled_buttons(None, None, finished_runs=1, results_loaded=True, busy=True)
    assert not any(installing[b] for b in ("runButton", "retrainButton", "applyModelButton"))  # they need it
    assert installing["loadResultsButton"] and installing["acceptButton"]  # reviewing needs no new package


def test_the_widget_sets_every_button_from_the_rules():
    text = (REPO / "SFRSegmenter" / "SFRSegmenter.py").read_text(encoding="utf-8")
    body = text[text.index("    def _updateButtons(self):"):]
    body = body[: body.index("\n    def ", 10)]
    assert "panelrules.enabled_buttons(" in body and "getattr(self.ui, name).enabled" in body
    assert not re.findall(r"self\.ui\.\w+Button\.enabled\s*=", text)  # no rule left in the widget


# --------------------------------------------------------------------------- flagged slices


def test_flagged_cursor_steps_across_cases_worst_first_and_wraps():
    from SFRSegmenterLogicLib import review

    rows = review.flagged_slices({
        "case_a": {"trusted": True, "flagged_slices": [{"index": 4, "confidence": 0.6}, {"index": 9, "confidence": 0.2}]},
        "case_b": {"trusted": False, "flagged_slices": [{"index": 1, "confidence": 0.4}]},
    })
    cursor = panelrules.FlaggedCursor(rows)
    assert cursor.current is None and len(cursor) == 3
    shown = [cursor.step(+1) for _ in range(4)]
    assert [(r["case"], r["index"]) for r in shown] == [("case_a", 9), ("case_b", 1), ("case_a", 4), ("case_a", 9)]
    assert cursor.step(-1)["index"] == 4  # back from the first wraps to the last
    assert cursor.select(1)["case"] == "case_b" and cursor.position == 1
    assert cursor.select(7) is None and cursor.position == 1  # a click outside the rows changes nothing
    assert panelrules.FlaggedCursor([]).step(+1) is None
    fresh = panelrules.FlaggedCursor(rows)
    assert fresh.step(-1)["index"] == 4  # previous from nothing: the last row
    assert review.flagged_cells(rows[0]) == ["case_a", "9", "0.200", "yes"]
    assert review.flagged_cells(rows[1])[3] == "no" and review.flagged_cells({**rows[1], "trusted": None})[3] == ""


# --------------------------------------------------------------------------- a finished run


def test_a_finished_run_shows_the_results_of_its_own_project(tmp_path):
    from SFRSegmenterLogicLib import provenance

    project_a, project_b = tmp_path / "a", tmp_path / "b"
    _finished_run(project_a, RUN1, "2026-01-01T10:00:00")
    (jobs.runs_dir(project_a) / RUN1 / "report.html").write_text("<html></html>")
    project_b.mkdir()
    # the user chose folder b while the run of folder a was followed
    view = panelrules.finished_view(project_a, project_b, RUN1, "done")
    assert view["load"] is False and view["project"] == project_a
    assert len(view["lines"]) == 1 and RUN1 in view["lines"][0] and str(project_a) in view["lines"][0]
    assert view["links"] == provenance.links_html(project_a, RUN1)
    assert "report" in view["links"] and (project_a / "runs" / RUN1 / "report.html").resolve().as_uri() in view["links"]
    # the folder shown is the run's (spelled another way): its results are loaded
    same = panelrules.finished_view(project_a, str(project_a) + "/", RUN1, "done")
    assert same["load"] is True and same["lines"] == []
    stopped = panelrules.finished_view(project_a, project_a, RUN1, "cancelled")
    assert stopped["load"] is False and stopped["lines"] == [] and "report" in stopped["links"]
