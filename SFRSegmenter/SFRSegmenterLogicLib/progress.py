"""The engine's JSON-line events (``SFRSegmenterLib.events``) -> what the panel shows: stage,
overall fraction, ETA, log.

The fraction the panel shows (:meth:`JobProgress.panel`) never goes back and its total is fixed
by the first pipeline stage: when the run's plan shrinks (SFR+ stops its rounds early, the
pipeline events then count fewer stages), the stages left out count as done, so the bar moves
forward instead of the total changing under it (it read 45 % -> 83 % -> 100 %); a stage whose
step counter starts again (an embedding cache, then training) does not move it back either.

Nothing here imports Qt, so it runs under plain Python and pytest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from SFRSegmenterLib.clock import format_duration


def parse_event_line(line: "str | bytes") -> dict | None:
    """One engine output line -> its event dict, or None when it is not an event.

    Non-JSON lines (warnings a library prints, a traceback) are not events; the caller shows
    them as plain log text.  Unknown keys and unknown event kinds are kept as they are.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        return None
    return record


@dataclass
class JobProgress:
    """What the panel shows, updated line by line from the engine's output."""

    stage: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    stages_done: list = field(default_factory=list)
    log: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    result: dict | None = None
    run_id: str | None = None
    #: The pipeline stage being run, 1-based, in the run's current plan; ``stages_total`` is the
    #: number of stages the *first* pipeline event planned (0 when unknown), kept for the whole run.
    stage_index: int = 0
    stages_total: int = 0
    #: Stages the plan dropped since the first pipeline event (counted as done), and the number
    #: of stages the latest pipeline event plans.
    skipped: int = 0
    planned: int = 0
    #: The highest fraction :meth:`panel` has shown.
    shown: float = 0.0

    @property
    def stage_fraction(self) -> float:
        return max(0.0, min(1.0, self.step / self.total)) if self.total else 0.0

    @property
    def overall(self) -> float:
        """Fraction of the whole run done: finished stages plus the current one's steps."""
        if not self.stages_total or not self.stage_index:
            return self.stage_fraction
        done = self.stage_index + self.skipped - 1 + self.stage_fraction
        return max(0.0, min(1.0, done / self.stages_total))

    @property
    def percent(self) -> int:
        return int(round(100.0 * self.overall))

    def panel(self, status: "dict | None" = None) -> "tuple[float, str]":
        """(fraction, text) for the progress bar and status line: the engine's whole-run fraction
        from ``status.json`` when the run has an estimate, else :attr:`overall`; never below a
        fraction shown before."""
        from .estimate import panel_progress

        fraction, text = panel_progress(status or {}, self.overall, self.status_text())
        self.shown = max(self.shown, fraction)
        return self.shown, text

    def status_text(self) -> str:
        if not self.stage:
            return "Starting..."
        where = f"stage {self.stage_index}/{self.planned} " if self.planned and self.stage_index else ""
        if self.total:
            return f"{where}{self.stage}: {self.step}/{self.total}, ETA {format_duration(self.eta_s)}"
        return f"{where}{self.stage}"

    def feed(self, line: str) -> dict | None:
        """Take one output line; returns the event it held (or None for plain text)."""
        event = parse_event_line(line)
        if event is None:
            text = line.rstrip("\n")
            if text.strip():
                self.log.append(text)
            return None
        kind = event["event"]
        if kind == "progress":
            self.stage = str(event.get("stage", self.stage))
            self.step = _int(event.get("step"), self.step)
            self.total = _int(event.get("total"), self.total)
            self.eta_s = event.get("eta_s")
        elif kind == "stage":
            name = str(event.get("stage", ""))
            status = event.get("status", "")
            if status == "start":
                self.stage, self.step, self.total, self.eta_s = name, 0, 0, None
                if event.get("pipeline"):
                    self._plan(_int(event.get("index"), self.stage_index), _int(event.get("of"), 0))
            elif status in ("done", "skipped") and name not in self.stages_done:
                self.stages_done.append(name)
            self.log.append(f"[{name}] {status}")
        elif kind == "log":
            level = event.get("level", "info")
            message = str(event.get("message", ""))
            self.log.append(message if level == "info" else f"{level}: {message}")
            if level == "error":
                self.errors.append(message)
        elif kind == "result":
            self.result = event
        for key in ("run_id", "run"):
            if isinstance(event.get(key), str):
                self.run_id = event[key]
                break
        return event


    def _plan(self, index: int, of: int) -> None:
        """A pipeline stage starts: stage ``index`` of ``of`` in the run's plan now."""
        self.stage_index = index
        if of <= 0:
            return
        if not self.stages_total:
            self.stages_total = self.planned = of
        elif of < self.planned:  # stages dropped from the plan: they count as done
            self.skipped += self.planned - of
        elif of > self.planned:  # more stages than planned (not expected): the total grows once
            self.stages_total += of - self.planned
        self.planned = of


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
