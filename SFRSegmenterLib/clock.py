"""The engine's one timestamp format and one duration format.

Every time the engine writes (status, events, model metadata, the manifest's ``created``) is UTC
in :data:`TIME_FORMAT` (``2026-11-27T16:58:38Z``; model metadata and manifests written before
used the ISO form with ``+00:00``).
"""

from __future__ import annotations

import datetime as _dt

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utcnow() -> str:
    """Now, in :data:`TIME_FORMAT`."""
    return _dt.datetime.now(_dt.timezone.utc).strftime(TIME_FORMAT)


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
