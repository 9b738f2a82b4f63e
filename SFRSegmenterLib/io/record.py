"""The record of what ``sfr`` wrote in each claimed output folder, and the check against it
(:mod:`.outputs` explains the rule).  It imports neither the writers nor the guard, which calls
:func:`check_replace` for every file the engine writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..errors import SFRError
from .digest import sha256_file
from .jsonfile import read_json

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
    data = read_json(folder / RECORD_FILE, "record of sfr's outputs", missing={}, damaged={})
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _stamp(path: Path, with_digest: bool = True) -> dict:
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
        _write_record(path.parent, {"written_by": "sfr", "files": dict(sorted(files.items()))})


def _write_record(folder: Path, data: dict) -> None:
    """The record, all or nothing (a temporary sibling renamed onto it; the record is sfr's own
    file, so the output guard has nothing to say about it)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, folder / RECORD_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
