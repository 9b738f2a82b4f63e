"""The engine's ``estimate`` event -> what the panel says before the long work, and the limit check.

``sfr run`` emits ``{"event": "estimate", "seconds": S, "stages": {...}, "budget": "fast"|"paper",
"device": {"kind": "cpu"|"cuda"|"mps", ...}}`` before stage F (SFRSegmenterLib/run/estimate.py);
progress events then carry ``overall`` (0..1) and ``overall_eta_s`` across the whole run.
:func:`estimate_text` is the sentence ("about 12 min on this CPU (budget fast)"),
:func:`over_limit` whether it exceeds the user's limit, and :func:`limit_question` what the panel
asks then (stop the run, or let it go on).  No Qt here.
"""

from __future__ import annotations

from dataclasses import dataclass

from SFRSegmenterLib.run.estimate import about

DEVICE_WORDS = {"cpu": "this CPU", "cuda": "this GPU", "mps": "this Apple GPU"}


@dataclass
class Estimate:
    seconds: float
    budget: str
    device: str  # cpu | cuda | mps | ""

    @classmethod
    def from_event(cls, record: dict) -> "Estimate | None":
        """The estimate of an event dict, None for any other event or a malformed one."""
        if not isinstance(record, dict) or record.get("event") != "estimate":
            return None
        try:
            seconds = float(record["seconds"])
        except (KeyError, TypeError, ValueError):
            return None
        device = record.get("device") or {}
        return cls(seconds, str(record.get("budget") or "?"), str(device.get("kind", "")) if isinstance(device, dict) else "")


def estimate_text(est: Estimate) -> str:
    where = DEVICE_WORDS.get(est.device, "this machine")
    return f"{about(est.seconds)} on {where} (budget {est.budget})"


def over_limit(est: Estimate, limit_minutes: "float | None") -> bool:
    """True when a limit is set (> 0) and the estimate exceeds it."""
    return bool(limit_minutes) and float(limit_minutes) > 0 and est.seconds > 60.0 * float(limit_minutes)


def limit_question(est: Estimate, limit_minutes: float) -> str:
    return (f"The run is estimated at {estimate_text(est)}, over your limit of {float(limit_minutes):g} min. "
            "Stop it now (everything finished is kept), or let it go on?")


def overall_of(record: dict) -> "tuple[float, float | None] | None":
    """(fraction of the whole run, seconds left) of a progress event that carries them."""
    if not isinstance(record, dict) or record.get("event") != "progress" or "overall" not in record:
        return None
    eta = record.get("overall_eta_s")
    return float(record["overall"]), (None if eta is None else float(eta))


def from_status(status: dict) -> "Estimate | None":
    """The estimate a run's ``status.json`` keeps (``estimate_s``, ``budget``), if any."""
    if not isinstance(status, dict) or status.get("estimate_s") is None:
        return None
    try:
        return Estimate(float(status["estimate_s"]), str(status.get("budget") or "?"), "")
    except (TypeError, ValueError):
        return None


def panel_progress(status: dict, fallback_fraction: float, stage_text: str) -> "tuple[float, str]":
    """(fraction, text) the panel shows: the engine's whole-run fraction and ETA when the run has
    an estimate (``status.json``: ``overall``, ``overall_eta_s``, ``estimate_s``), else the
    panel's own stage-count fraction and ``stage_text``."""
    from SFRSegmenterLib.clock import format_duration

    est = from_status(status)
    if est is None or status.get("overall") is None:
        return fallback_fraction, stage_text + (f" (estimate {about(est.seconds)}, budget {est.budget})" if est else "")
    left = status.get("overall_eta_s")
    return (max(0.0, min(1.0, float(status["overall"]))),
            f"{stage_text}; whole run {100 * float(status['overall']):.0f} %, about {format_duration(left)} left "
            f"(estimated {about(est.seconds)}, budget {est.budget})")
