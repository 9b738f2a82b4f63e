"""Files written all or nothing (one atomic writer for every file the engine writes) and content
checksums.  The one JSON reader is :mod:`.jsonfile`'s (re-exported here)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..errors import SFRError
from .guard import check_output
from .digest import sha256_file  # noqa: F401 - importable from here as before
from .jsonfile import read_json  # noqa: F401 - the one JSON reader, importable from here as before
from .record import note_written
from .volume import volume_suffix

__all__ = ["atomic_path", "default_file_mode", "read_json", "sha256_file", "write_json_atomic", "write_text_atomic"]

class _atomic_path:
    """Context manager yielding a temporary sibling path, renamed onto ``path`` on success."""

    def __init__(self, path: Path, manifest: bool = False):
        self.path = Path(path)
        self.manifest = manifest

    def __enter__(self) -> Path:
        check_output(self.path, manifest=self.manifest)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = volume_suffix(self.path) or self.path.suffix
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=self.path.parent)
        os.close(fd)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; keep the usual permissions
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                note_written(self.path, self.tmp)  # recorded first: a kill in between leaves sfr's files
                os.replace(self.tmp, self.path)
            except BaseException:
                self.tmp.unlink(missing_ok=True)  # a failed rename (name too long, disk) leaves no stray file
                raise
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def default_file_mode() -> int:
    """The mode a plain ``open(path, 'w')`` would give a new file (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_path(path: "str | os.PathLike", manifest: bool = False) -> _atomic_path:
    """``with atomic_path(p) as tmp: write(tmp)`` writes ``p`` all or nothing: the engine's one
    atomic writer (``torch.save``, SimpleITK, slicerio, text and JSON all go through it).

    Refused (:func:`~SFRSegmenterLib.io.guard.check_output`) when ``p`` is an input: a project's
    image or label, a file the command reads, or a manifest (``manifest=True``: its own writer)."""
    return _atomic_path(Path(path), manifest)


def write_text_atomic(path: "str | os.PathLike", text: str, manifest: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` all or nothing, flushed to disk before the rename."""
    with atomic_path(path, manifest) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_json_atomic(path: "str | os.PathLike", data, manifest: bool = False) -> None:
    """Write ``data`` as indented JSON (and a final newline) to ``path`` all or nothing."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n", manifest)
