"""One progress fraction and ETA across a run's stages, weighted by the estimate.

:class:`Overall` is an events sink (it reads the pipeline's stage events, emits nothing) and the
hook :func:`..events.set_overall` calls for every progress event: it adds ``overall`` (0..1, the
estimated seconds of the finished stages plus the current stage's share, over the estimated
total) and ``overall_eta_s`` (the estimated seconds left, scaled by how the run so far compared
with its estimate).  A stage reused from an earlier run leaves the total.  Stage F's embedding
cache (progress stage ``embed``) is the first ``embed_share`` of a fine-tuning stage.
"""

from __future__ import annotations

import time


class Overall:
    #: below this share of the whole run done, the ETA is the estimate itself (a pace measured over
    #: a few seconds is noise)
    MIN_PACE_SHARE = 0.02

    def __init__(self, stage_seconds: dict, embed_share: float = 0.0):
        self.est = {k: float(v) for k, v in stage_seconds.items()}
        self.embed_share = max(0.0, min(1.0, float(embed_share)))
        self.done: set = set()
        self.current = None
        self.t0 = time.monotonic()

    def __call__(self, rec: dict) -> None:
        if rec.get("event") != "stage" or not rec.get("pipeline"):
            return
        name, status = rec.get("stage"), rec.get("status")
        if status == "start":
            self.current = name
        elif status == "skipped":
            self.est[name] = 0.0  # no work: out of the total
            self.done.add(name)
            self.current = None
        elif status == "done":
            self.done.add(name)
            self.current = None

    def progressed(self, stage: "str | None" = None, step: int = 0, total: int = 0) -> float:
        """Estimated seconds of work done: finished stages + the current stage's share."""
        s = sum(self.est.get(n, 0.0) for n in self.done)
        if not (self.current and stage and total):
            return s
        kind, f = self.current.rsplit("-r", 1)[0], min(1.0, step / total)
        if kind == "finetune" and stage == "embed":
            f = self.embed_share * f
        elif kind == "finetune" and stage == "finetune":
            f = self.embed_share + (1.0 - self.embed_share) * f
        elif kind != stage:
            return s
        return s + self.est.get(self.current, 0.0) * f

    def fields(self, stage: str, step: int, total: int) -> dict:
        whole = sum(self.est.values())
        if whole <= 0:
            return {}
        done = self.progressed(stage, step, total)
        elapsed = time.monotonic() - self.t0
        pace = elapsed / done if done >= self.MIN_PACE_SHARE * whole else 1.0
        return {"overall": round(min(1.0, done / whole), 4), "overall_eta_s": round(max(0.0, whole - done) * pace, 1)}


def start(estimate: dict) -> Overall:
    """Track the whole run against ``estimate`` (the estimate event's fields) until :func:`stop`."""
    from .. import events

    stop()
    tracker = Overall(estimate["stages"], estimate.get("embed_share", 0.0))
    events.add_sink(tracker)
    events.set_overall(tracker.fields)
    start.tracker = tracker
    return tracker


def stop() -> None:
    from .. import events

    tracker = getattr(start, "tracker", None)
    if tracker is not None:
        events.remove_sink(tracker)
        start.tracker = None
    events.set_overall(None)
