"""The panel's reading of the engine's estimate: events emitted by the engine's own emitter, parsed
by the panel's own line parser (SFRSegmenterLogicLib), the text shown and the limit check."""

from __future__ import annotations

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SFRSegmenter"))

from SFRSegmenterLib import events  # noqa: E402
from SFRSegmenterLogicLib.estimate import Estimate, estimate_text, limit_question, over_limit, overall_of  # noqa: E402
from SFRSegmenterLogicLib.progress import parse_event_line  # noqa: E402


def _lines(emit) -> list:
    buf = io.StringIO()
    events.add_sink(buf)
    try:
        emit()
    finally:
        events.remove_sink(buf)
    return [parse_event_line(line) for line in buf.getvalue().splitlines()]


def test_estimate_event_from_the_engine_is_shown_and_checked_against_the_limit():
    (rec,) = _lines(lambda: events.emit("estimate", seconds=730.0, stages={"finetune-r0": 400.0}, budget="fast",
                                        device={"kind": "cpu", "cores": 2}, method="calibration"))
    est = Estimate.from_event(rec)
    assert est == Estimate(730.0, "fast", "cpu")
    assert estimate_text(est) == "about 12 min on this CPU (budget fast)"
    assert not over_limit(est, 15) and over_limit(est, 10) and not over_limit(est, None) and not over_limit(est, 0)
    assert "over your limit of 10 min" in limit_question(est, 10)
    days = Estimate(553000.0, "paper", "cpu")
    assert estimate_text(days).startswith("about 6.4 days")


def test_other_events_are_not_estimates_and_overall_progress_is_read():
    assert Estimate.from_event({"event": "log", "message": "x"}) is None
    assert Estimate.from_event({"event": "estimate", "seconds": "soon"}) is None
    assert overall_of({"event": "progress", "stage": "retrain", "overall": 0.5, "overall_eta_s": 120.0}) == (0.5, 120.0)
    assert overall_of({"event": "progress", "stage": "retrain", "step": 1}) is None


def test_panel_progress_prefers_the_engines_whole_run_fraction_from_status_json():
    from SFRSegmenterLogicLib.estimate import panel_progress

    status = {"state": "running", "estimate_s": 600.0, "budget": "fast", "overall": 0.25, "overall_eta_s": 450.0}
    fraction, text = panel_progress(status, 0.5, "stage 2/6 finetune-r0: 10/300")
    assert fraction == 0.25 and "whole run 25 %" in text and "07:30 left" in text and "about 10 min" in text
    assert panel_progress({"state": "running"}, 0.5, "stage 2/6") == (0.5, "stage 2/6")
    assert panel_progress({"estimate_s": 600.0, "budget": "fast"}, 0.1, "s")[1] == "s (estimate about 10 min, budget fast)"
