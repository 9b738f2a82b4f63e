"""The engine's one timestamp format and one duration format.

Every time the engine writes (status, events, model metadata, the manifest's ``created``) is UTC
in :data:`TIME_FORMAT` (``2026-11-27T16:58:38Z``); :func:`parse_utc` also reads the ISO form
with an offset that model metadata and manifests written before used.
"""

from __future__ import annotations

import datetime as _dt

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utcnow() -> str:
    """Now, in :data:`TIME_FORMAT`."""
    return _dt.datetime.now(_dt.timezone.utc).strftime(TIME_FORMAT)


def parse_utc(stamp) -> "_dt.datetime | None":
    """A timestamp the engine wrote (either form) as an aware datetime; None when unreadable."""
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return _dt.datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        pass
    try:
        t = _dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def age_seconds(stamp) -> "float | None":
    """Seconds since ``stamp``; None when it cannot be read."""
    t = parse_utc(stamp)
    return None if t is None else (_dt.datetime.now(_dt.timezone.utc) - t).total_seconds()


def format_duration(seconds) -> str:
    """``mm:ss`` or ``h:mm:ss``; ``--`` for a missing, unreadable or negative duration."""
    try:
        seconds = int(float(seconds))
    except (TypeError, ValueError):
        return "--"
    if seconds < 0:
        return "--"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
