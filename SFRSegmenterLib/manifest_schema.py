"""The manifest's schema: roles, schema version, file-safe case names, and the whole-manifest
check every load runs (one line naming the manifest and the first bad field)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import SFRError

SCHEMA_VERSION = 1
ROLES = ("labeled", "unlabeled", "validation")


#: Longest case name accepted, in bytes of UTF-8 (file systems limit a file name to 255 bytes,
#: and output names add suffixes such as ``_confidence.nii.gz``).
MAX_CASE_NAME = 200


def case_name_problem(name) -> str | None:
    """Why ``name`` cannot be a case name (it becomes a file name), or None when it is file-safe."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if name in (".", ".."):
        return f"{name!r} is not a file name"
    if "/" in name or "\\" in name:
        return f"{name!r} contains a path separator"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return f"{name!r} contains a control character"
    if name != name.strip():
        return f"{name!r} starts or ends with a space"
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_CASE_NAME:
        return f"is {size} bytes long in UTF-8, more than {MAX_CASE_NAME} (a file name holds 255 bytes with its suffixes)"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_manifest(data, path: Path) -> None:
    """Check a parsed manifest as a whole; SFRError naming the manifest and the first bad field."""

    def bad(field_name: str, problem: str):
        raise SFRError(f"{field_name}: {problem}", path)

    if not isinstance(data, dict):
        bad("manifest", f"expected a JSON object, got {type(data).__name__}")
    if "schema_version" not in data:
        bad("schema_version", "missing")
    version = data["schema_version"]
    if not _is_int(version):
        bad("schema_version", f"must be an integer, got {json.dumps(version)}")
    if version > SCHEMA_VERSION:
        bad("schema_version", f"version {version} is newer than this engine supports ({SCHEMA_VERSION}); "
            "upgrade SFR Segmenter")
    if version < 1:
        bad("schema_version", f"must be >= 1, got {version}")
    for key in ("name", "created"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            bad(key, f"must be a string, got {json.dumps(data[key])[:60]}")
    classes = data.get("classes", ["background", "foreground"])
    if not isinstance(classes, list) or len(classes) < 2:
        bad("classes", "must be a list of at least 2 class names, background first")
    for i, c in enumerate(classes):
        if not isinstance(c, str) or not c.strip():
            bad(f"classes[{i}]", f"must be a non-empty string, got {json.dumps(c)[:60]}")
    if len(set(classes)) != len(classes):
        bad("classes", "class names must be unique")
    cases = data.get("cases", [])
    if not isinstance(cases, list):
        bad("cases", f"must be a list, got {type(cases).__name__}")
    seen = set()
    for i, c in enumerate(cases):
        where = f"cases[{i}]"
        if not isinstance(c, dict):
            bad(where, f"must be an object, got {json.dumps(c)[:60]}")
        problem = case_name_problem(c.get("name"))
        if problem:
            bad(f"{where}.name", problem)
        where = f"cases[{i}] ({c['name']!r})"
        for key in ("image", "label"):
            value = c.get(key)
            if key == "label" and value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                bad(f"{where}.{key}", f"must be a file path, got {json.dumps(value)[:60]}")
            if "\x00" in value:
                bad(f"{where}.{key}", "contains a NUL character")
        role = c.get("role", "unlabeled")
        if role not in ROLES:
            bad(f"{where}.role", f"unknown role {json.dumps(role)[:60]} (one of {', '.join(ROLES)})")
        if role == "labeled" and c.get("label") is None:
            bad(f"{where}.label", "a labeled case needs a label file (or make its role unlabeled)")
        if c["name"] in seen:
            bad(f"{where}.name", "duplicate case name")
        seen.add(c["name"])
