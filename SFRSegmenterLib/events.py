"""Structured progress events: one JSON object per line, plus a human progress bar.

Every long-running stage reports through a :class:`Progress`.  An event looks like::

    {"event": "progress", "stage": "finetune", "step": 120, "total": 6000,
     "loss": 0.412, "elapsed_s": 95.1, "eta_s": 4660.0, "time": "2026-11-27T00:01:02Z"}

Other kinds: ``{"event": "stage", "stage": ..., "status": "start"|"done"|"skipped"}``,
``{"event": "log", "level": "info"|"warning"|"error", "message": ...}`` and
``{"event": "result", ...}``.  Consumers (the Slicer module, ``sfr status``) must ignore keys
and event kinds they do not know.

Where events go is decided once per process by :func:`configure`: ``json`` writes them to
stdout (what the Slicer module reads), ``bar`` draws a progress bar on stderr, ``none`` is
silent, ``auto`` is ``bar`` on a terminal and ``none`` otherwise.  ``add_sink`` adds a file
(for example ``runs/<id>/events.jsonl``) that receives every event in any mode.

A reader that stops reading never stops the work: the run's files (the sinks) get each event
first, and in ``json`` mode stdout is written by one writer thread from a bounded queue
(:mod:`.stdout_queue`); when the reader lags, queued progress events of a stage are coalesced
into the newest and, once the queue is full, the oldest progress events are dropped.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import IO, Callable

from .clock import format_duration, utcnow

_MODE = "auto"
_SINKS: list = []
_OVERALL = None  # fields(stage, step, total) -> {"overall", "overall_eta_s"} of a whole run
_LOCK = threading.Lock()
MODES = ("auto", "bar", "json", "none")


def configure(mode: str = "auto") -> None:
    global _MODE
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {MODES}")
    _MODE = mode
    if mode == "json":
        from .stdout_queue import install

        install()  # stdout on a real pipe: written by a thread, never blocking the work


def mode() -> str:
    if _MODE == "auto":
        return "bar" if sys.stderr.isatty() else "none"
    return _MODE


def add_sink(sink: "IO[str] | Callable[[dict], None]") -> None:
    """Send every event also to ``sink``: a text file (JSON lines) or a callable."""
    _SINKS.append(sink)


def remove_sink(sink) -> None:
    if sink in _SINKS:
        _SINKS.remove(sink)


def set_overall(fields_fn) -> None:
    """Add a whole run's progress (``fields_fn(stage, step, total)`` -> dict) to progress events; None: off."""
    global _OVERALL
    _OVERALL = fields_fn


def emit(event: str, **fields) -> dict:
    """Emit one event to every configured destination and return it."""
    record = {"event": event, **fields, "time": utcnow()}
    line = json.dumps(record, default=_jsonable)
    with _LOCK:
        for sink in list(_SINKS):  # the run's files first
            if callable(sink):
                sink(record)
            else:
                sink.write(line + "\n")
                sink.flush()
        if mode() == "json":
            from .stdout_queue import write_event

            write_event(line + "\n", event, fields.get("stage"))
    return record


def _jsonable(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def log(message: str, level: str = "info") -> None:
    """A human message: an event, and a line on stderr unless in json/none mode."""
    emit("log", level=level, message=message)
    if mode() == "bar" or (mode() == "none" and level in ("warning", "error")):
        sys.stderr.write(("" if level == "info" else f"{level}: ") + message + "\n")
        sys.stderr.flush()


def forward(record: dict) -> None:
    """Emit an event another process emitted (a stage's torchrun processes, :mod:`.run.distributed`)
    as this process's own: a log line as :func:`log`, a progress event with the run's overall
    fields added, anything else as it is (with this process's time)."""
    fields = {k: v for k, v in record.items() if k not in ("event", "time")}
    kind = str(record.get("event"))
    if kind == "log":
        log(str(fields.get("message")), str(fields.get("level") or "info"))
        return
    step, total = int(fields.get("step") or 0), int(fields.get("total") or 0)
    if kind == "progress" and _OVERALL is not None:
        fields.update(_OVERALL(fields.get("stage"), step, total))
    emit(kind, **fields)
    if kind == "progress" and mode() == "bar":  # the bar the other process would have drawn
        bar = _FORWARDED_BARS.setdefault(str(fields.get("stage")), Progress(str(fields.get("stage")), total))
        bar.total = total
        metrics = {k: v for k, v in fields.items() if k not in _PROGRESS_KEYS}
        bar._draw(step, float(fields.get("elapsed_s") or 0.0), fields.get("eta_s"), metrics)


_FORWARDED_BARS: dict = {}
_PROGRESS_KEYS = ("stage", "step", "total", "elapsed_s", "eta_s", "overall", "overall_eta_s")


def stage(name: str, status: str, **fields) -> None:
    emit("stage", stage=name, status=status, **fields)


class Progress:
    """Progress of one stage with a known number of steps.

    ``update(step, **metrics)`` emits an event at most every ``min_interval`` seconds (and always
    for the last step) with elapsed time and an ETA from the average step time since ``start``.
    """

    def __init__(self, stage: str, total: int, start: int = 0, min_interval: float = 0.5, **fields):
        self.stage = stage
        self.total = int(total)
        self.start_step = int(start)
        self.fields = fields
        self.t0 = time.monotonic()
        self.min_interval = min_interval
        self._last = -1e9
        self._bar_width = 0

    def update(self, step: int, **metrics) -> dict | None:
        now = time.monotonic()
        last = step >= self.total
        if not last and now - self._last < self.min_interval:
            return None
        self._last = now
        elapsed = now - self.t0
        done = max(0, step - self.start_step)
        eta = (elapsed / done) * (self.total - step) if done else None
        overall = _OVERALL(self.stage, step, self.total) if _OVERALL is not None else {}
        rec = emit(
            "progress",
            stage=self.stage,
            step=int(step),
            total=self.total,
            elapsed_s=round(elapsed, 2),
            eta_s=None if eta is None else round(eta, 1),
            **self.fields,
            **overall,
            **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()},
        )
        if mode() == "bar":
            self._draw(step, elapsed, eta, metrics)
        return rec

    def _draw(self, step, elapsed, eta, metrics) -> None:
        frac = min(1.0, step / self.total) if self.total else 1.0
        width = 28
        filled = int(frac * width)
        extra = " ".join(f"{k}={_short(v)}" for k, v in metrics.items())
        eta_s = format_duration(eta)
        text = (
            f"\r{self.stage:>11} [{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} "
            f"{format_duration(elapsed)} eta {eta_s} {extra}"
        )
        pad = max(0, self._bar_width - len(text))
        self._bar_width = len(text)
        sys.stderr.write(text + " " * pad + ("\n" if step >= self.total else ""))
        sys.stderr.flush()


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "/".join(_short(float(v)) for v in value)
    return str(value)


def open_sink(path: "str | os.PathLike") -> IO[str]:
    """Open ``path`` for appending JSON-lines events and register it as a sink."""
    fh = open(path, "a", encoding="utf-8", buffering=1)
    add_sink(fh)
    return fh
