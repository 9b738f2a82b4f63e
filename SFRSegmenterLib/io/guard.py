"""The output guard: no writer of the engine replaces an input.

Inputs are sacred: no writer replaces a project's image or label, the project manifest, or a
file the running command reads.  Every writer of the engine (``atomic_path``, ``write_volume``,
``write_json_atomic``) calls :func:`check_output` before it creates anything; commands add the
files they read with :func:`protect`, and a project's images and labels are protected wherever
the output lies (the manifest of the folder, or of any folder above it, is consulted).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import SFRError
from .jsonfile import read_json
from .record import check_replace
from .volume import volume_suffix

#: The manifest's file name (defined here so the guard needs no import of ``manifest``).
MANIFEST_FILE = "sfr-project.json"
_PROTECTED: dict = {}
_MANIFEST_CACHE: dict = {}
#: The file the engine's writers were last asked to write (a full disk's error names it).
LAST_OUTPUT: "str | None" = None
#: Bytes a file name holds on the usual file systems (ext4, XFS, APFS, NTFS in UTF-16 units).
NAME_MAX = 255


def _guard_keys(path: "str | os.PathLike") -> set:
    """The path with its folder resolved, and fully resolved (a symlink and its target)."""
    raw = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(raw)
    return {os.path.normcase(os.path.join(os.path.realpath(parent), name)),
            os.path.normcase(os.path.realpath(raw))}


def protect(paths: "Iterable[str | os.PathLike | None]", why: str) -> None:
    """Mark ``paths`` as inputs of this process: :func:`check_output` refuses to write them."""
    for p in paths:
        if p is not None:
            for key in _guard_keys(p):
                _PROTECTED.setdefault(key, why)


class protecting:
    """``with protecting(paths, why):`` protects ``paths`` only while the block runs (a step of a
    longer process that reads files the process itself writes later, e.g. the report of a run)."""

    def __init__(self, paths, why: str):
        self.keys = {key: why for p in paths if p is not None for key in _guard_keys(p)}

    def __enter__(self):
        self.added = [k for k in self.keys if k not in _PROTECTED]
        for k in self.added:
            _PROTECTED[k] = self.keys[k]
        return self

    def __exit__(self, *exc):
        for k in self.added:
            _PROTECTED.pop(k, None)
        return False


def protect_folder(folder: "str | os.PathLike", why: str) -> None:
    """Protect every volume file directly inside ``folder`` (a command's input folder)."""
    folder = Path(folder)
    if folder.is_dir():
        protect((p for p in folder.iterdir() if volume_suffix(p)), why)
    else:
        protect([folder], why)


def _project_inputs(manifest: Path) -> dict:
    """{guard key: why} for the images and labels a manifest names (cached by mtime)."""
    try:
        st = manifest.stat()
    except OSError:
        return {}
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _MANIFEST_CACHE.get(str(manifest))
    if cached and cached[0] == stamp:
        return cached[1]
    found: dict = {}
    try:
        data = read_json(manifest, "manifest", missing={}, damaged={})  # a bad manifest guards nothing here
        for case in data.get("cases", []):
            for field_name in ("image", "label"):
                rel = case.get(field_name)
                if isinstance(rel, str) and rel:
                    p = Path(rel) if os.path.isabs(rel) else manifest.parent / rel
                    what = "image" if field_name == "image" else "label"
                    for key in _guard_keys(p):
                        found.setdefault(key, f"the {what} of case {case.get('name')!r} of project {manifest.parent}")
    except (SFRError, AttributeError, TypeError):
        found = {}
    for key in _guard_keys(manifest.parent / "runs" / "latest"):
        found[key] = f"the latest-run pointer of project {manifest.parent}"
    _MANIFEST_CACHE[str(manifest)] = (stamp, found)
    return found


def _enclosing_manifests(path: Path):
    seen = set()
    for start in (Path(os.path.abspath(path)).parent, Path(os.path.realpath(path)).parent):
        for folder in (start, *start.parents):
            candidate = folder / MANIFEST_FILE
            if str(candidate) not in seen:
                seen.add(str(candidate))
                if candidate.is_file():
                    yield candidate


def check_output(path: "str | os.PathLike", manifest: bool = False) -> None:
    """Raise :class:`SFRError` naming ``path`` when writing it would replace an input.

    Inputs: files given to :func:`protect`, a project manifest (unless ``manifest``: the
    manifest's own writer), and the images and labels of any project whose folder holds
    ``path``.  In a folder a command claimed (:mod:`.outputs`), an existing file ``sfr`` did not
    write is refused too.
    """
    global LAST_OUTPUT
    LAST_OUTPUT = os.fspath(path)
    size = len(os.fsencode(os.path.basename(LAST_OUTPUT)))
    if size > NAME_MAX:  # refused before the write, not as an OSError after the work
        raise SFRError(f"the output file name is {size} bytes, more than the {NAME_MAX} a file name holds; "
                       "give the input a shorter name", path)
    keys = _guard_keys(path)
    for key in keys:
        if key in _PROTECTED:
            raise SFRError(f"refusing to overwrite {_PROTECTED[key]}; choose another output", path)
    if os.path.basename(os.fspath(path)) == MANIFEST_FILE and not manifest:
        raise SFRError("refusing to overwrite a project manifest; choose another output", path)
    for m in _enclosing_manifests(Path(path)):
        inputs = _project_inputs(m)
        for key in keys:
            if key in inputs:
                raise SFRError(f"refusing to overwrite {inputs[key]}; choose another output", path)
    check_replace(path)  # a claimed output folder: only what sfr wrote is replaced


def check_outputs(paths: "Iterable[str | os.PathLike]") -> None:
    """:func:`check_output` for every planned output, before any work starts."""
    for p in paths:
        check_output(p)


def inside(folder: "str | os.PathLike", name: str) -> Path:
    """``folder / name``, refused unless it lies inside ``folder`` (no ``..``, no absolute name)."""
    folder = Path(folder)
    target = folder / name
    base = os.path.normpath(os.path.abspath(folder))
    full = os.path.normpath(os.path.abspath(target))
    if os.path.dirname(full) != base and not full.startswith(base + os.sep):
        raise SFRError(f"output name {name!r} would lie outside its folder {folder}", target)
    if full == base:
        raise SFRError(f"output name {name!r} is not a file name", target)
    return target
