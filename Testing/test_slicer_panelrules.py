"""Which run the Results list shows, on real run folders read by the engine's runcontrol."""

from __future__ import annotations

import json
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


def test_active_run_refuses_before_any_label_file_is_touched(tmp_path):
    import subprocess
    import textwrap

    import pytest

    from SFRSegmenterLib.errors import SFRError

    label = tmp_path / "labels" / "case1.nii.gz"
    label.parent.mkdir(parents=True)
    label.write_bytes(b"the user's label")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from SFRSegmenterLib import jobs
            jobs.ProjectLock({str(tmp_path)!r}, "cli-run").acquire()
            print("held", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True, cwd=str(REPO),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
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
