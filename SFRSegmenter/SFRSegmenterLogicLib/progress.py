"""The engine's JSON-line events (``SFRSegmenterLib.events``) -> what the panel shows: stage,
overall fraction, ETA, log.

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
    #: The pipeline stage being run, 1-based, and how many the run plans (0 when unknown).
    stage_index: int = 0
    stages_total: int = 0

    @property
    def stage_fraction(self) -> float:
        return max(0.0, min(1.0, self.step / self.total)) if self.total else 0.0

    @property
    def overall(self) -> float:
        """Fraction of the whole run done: finished stages plus the current one's steps."""
        if not self.stages_total or not self.stage_index:
            return self.stage_fraction
        done = self.stage_index - 1 + self.stage_fraction
        return max(0.0, min(1.0, done / self.stages_total))

    @property
    def percent(self) -> int:
        return int(round(100.0 * self.overall))

    def status_text(self) -> str:
        if not self.stage:
            return "Starting..."
        where = f"stage {self.stage_index}/{self.stages_total} " if self.stages_total and self.stage_index else ""
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
                    self.stage_index = _int(event.get("index"), self.stage_index)
                    self.stages_total = _int(event.get("of"), self.stages_total)
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


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
