"""The engine's one JSON reader (no writer here: the guard reads manifests with it, and the
atomic writer in :mod:`.files` is guarded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import SFRError

__all__ = ["read_json"]

_RAISE = object()


def read_json(path: "str | os.PathLike", what: str = "file", missing=_RAISE, damaged=_RAISE):
    """The parsed contents of the JSON file ``path``: the engine's one JSON reader.

    A missing file returns ``missing`` when given, else raises :class:`SFRError` ("no <what>");
    a file that is not valid JSON (or not UTF-8, or nested too deeply) returns ``damaged`` when
    given, else raises "<what> is not valid JSON (...)"; an unreadable one raises, naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing is not _RAISE:
            return missing
        raise SFRError(f"no {what}", path) from None
    except UnicodeDecodeError as exc:
        if damaged is not _RAISE:
            return damaged
        raise SFRError(f"{what} is not valid JSON ({str(exc)[:120]})", path) from None
    except IsADirectoryError:
        raise SFRError(f"is a folder, expected the {what}", path) from None
    except OSError as exc:
        raise SFRError(f"cannot read the {what} ({exc.strerror or exc})", path) from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        if damaged is not _RAISE:
            return damaged
        raise SFRError(f"{what} is not valid JSON ({str(exc)[:120]})", path) from None
