"""The output rule of every command that writes outside a run folder (``--out``).

1. A command never replaces an existing file that an earlier ``sfr`` command did not write,
   unless the user says ``--overwrite``.  Each output folder a command claims (:func:`claim`)
   keeps a small record, ``.sfr-written.json``, of the files ``sfr`` wrote there (name, size,
   modification time, sha256), updated atomically after each file.  A file that is not in the
   record, or that changed since (a label corrected by hand), is refused before any work.
2. Whatever ``--overwrite`` says, no image or label of a project the command can identify is
   ever written: the projects above the model, the images, the output, and the project given
   (:func:`protect_projects`; a manifest may keep its images outside its folder, so its own
   image and label paths are protected, wherever they lie), and the command's own inputs.

The checks run in :func:`~.guard.check_output` (every writer calls it) and the record is
updated by the one atomic writer, so a claimed folder is guarded whichever writer writes.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SFRError

#: The record of what ``sfr`` wrote in an output folder.
RECORD_FILE = ".sfr-written.json"
#: {real path of a claimed folder: overwrite allowed}
_CLAIMED: dict = {}


def _folder_key(folder: "str | os.PathLike") -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(os.fspath(folder))))


def claim(path: "str | os.PathLike", overwrite: bool = False, file: bool = False) -> None:
    """Put the output folder ``path`` (``file``: the folder of the output file ``path``) under the
    rule: an existing file there is replaced only if ``sfr`` wrote it, or with ``overwrite``."""
    folder = Path(path).parent if file else Path(path)
    _CLAIMED[_folder_key(folder)] = bool(overwrite)


def release_all() -> None:
    """Forget every claim (tests calling commands in one process)."""
    _CLAIMED.clear()


def _claimed(path: Path):
    """(folder key, overwrite) of the claimed folder holding ``path``, else (None, False)."""
    key = _folder_key(path.parent)
    return (key, _CLAIMED[key]) if key in _CLAIMED else (None, False)


def _read_record(folder: Path) -> dict:
    from .files import read_json

    data = read_json(folder / RECORD_FILE, "record of sfr's outputs", missing={}, damaged={})
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _stamp(path: Path, with_digest: bool = True) -> dict:
    from .files import sha256_file

    st = path.stat()
    entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_digest:
        entry["sha256"] = sha256_file(path)
    return entry


def _written_by_sfr(path: Path) -> bool:
    entry = _read_record(path.parent).get(path.name)
    if not isinstance(entry, dict):
        return False
    now = _stamp(path, with_digest=False)
    if now["size"] == entry.get("size") and now["mtime_ns"] == entry.get("mtime_ns"):
        return True
    versions = [entry.get("sha256"), *(entry.get("earlier") or [])]
    return _stamp(path)["sha256"] in versions


def check_replace(path: "str | os.PathLike") -> None:
    """Refuse ``path`` when it lies in a claimed folder, exists, and ``sfr`` did not write it
    (or it changed since), unless the claim allows overwriting."""
    path = Path(path)
    if path.name == RECORD_FILE:
        return
    key, overwrite = _claimed(path)
    if key is None or overwrite or not os.path.lexists(path):
        return
    if path.is_file() and not path.is_symlink() and _written_by_sfr(path):
        return
    raise SFRError("exists and was not written by sfr (or was changed since); give --overwrite to replace it, "
                   "or choose another --out", path)


#: Earlier versions of a file kept in the record (a kill between recording a new version and the
#: rename that puts it in place leaves the previous version, still sfr's).
EARLIER_VERSIONS = 4


def note_written(path: "str | os.PathLike", content: "str | os.PathLike | None" = None) -> None:
    """Add ``path`` to the record of its claimed folder, atomically: its contents are ``content``
    (the atomic writer's temporary file, recorded before the rename puts it in place; a rename
    keeps the modification time) or ``path`` itself."""
    from .files import write_json_atomic

    path = Path(path)
    source = Path(content) if content is not None else path
    if path.name == RECORD_FILE or _claimed(path)[0] is None or not source.is_file():
        return
    with _folder_lock(path.parent):
        files = _read_record(path.parent)
        old = files.get(path.name) if isinstance(files.get(path.name), dict) else {}
        entry = _stamp(source)
        earlier = [old.get("sha256"), *(old.get("earlier") or [])]
        entry["earlier"] = [d for d in dict.fromkeys(earlier) if d and d != entry["sha256"]][:EARLIER_VERSIONS]
        files[path.name] = entry
        write_json_atomic(path.parent / RECORD_FILE, {"written_by": "sfr", "files": dict(sorted(files.items()))})


def move_own(src: "str | os.PathLike", dst: "str | os.PathLike") -> None:
    """Rename one of sfr's files inside its folder (a save keeping its previous files aside),
    through the output guard: ``src`` and ``dst`` are both checked (neither may be a file sfr did
    not write, nor an input), and ``dst`` is recorded before the rename (a kill in between leaves
    it sfr's)."""
    from .guard import check_output

    check_output(src)
    check_output(dst)
    note_written(dst, src)
    os.replace(src, dst)


def remove_own(path: "str | os.PathLike") -> None:
    """Delete ``path`` (no file: nothing to do) only where the output guard lets sfr replace it."""
    from .guard import check_output

    if os.path.lexists(path):
        check_output(path)
        os.unlink(path)


class _folder_lock:
    """An exclusive lock on a folder while its record is updated (processes of one torchrun job
    write their cases into one folder); a no-op where ``fcntl`` is missing (Windows)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            self.fd = None
            return self
        self.fd = os.open(self.folder, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
        return False


def _manifests_at_or_above(path: "str | os.PathLike"):
    from .guard import MANIFEST_FILE

    start = Path(os.path.abspath(os.fspath(path)))
    for top in (start, Path(os.path.realpath(start))):
        for folder in (top, *top.parents):
            candidate = folder / MANIFEST_FILE
            if candidate.is_file():
                yield candidate


def protect_projects(paths, why_prefix: str = "") -> None:
    """Protect the images and labels of every project at or above each of ``paths`` (the model,
    the images, the output, the project given), wherever its manifest says they lie."""
    from .guard import _PROTECTED, _project_inputs

    for p in paths:
        if p is None:
            continue
        for manifest in _manifests_at_or_above(p):
            for key, why in _project_inputs(manifest).items():
                _PROTECTED.setdefault(key, why_prefix + why)


def guard_output(out: "str | os.PathLike", overwrite: bool = False, file: bool = False, related=()) -> None:
    """The output rule for one command, before any work: claim ``out`` (a folder, or with
    ``file`` the one output file) and protect every project identified from ``out`` and the
    ``related`` paths (the model, the images, the project given)."""
    claim(out, overwrite, file=file)
    protect_projects([out, *related])
