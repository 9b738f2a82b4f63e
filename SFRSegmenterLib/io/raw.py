"""File primitives below the output rule: the default file mode, content checksums, and the
atomic write of ``sfr``'s own bookkeeping file (the record of what it wrote, :mod:`.outputs`),
which the output rule itself uses and so cannot go through it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def default_file_mode() -> int:
    """The mode a plain ``open(path, 'w')`` would give a new file (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_record_json(path: "str | os.PathLike", data) -> None:
    """Write ``data`` as JSON to ``path`` all or nothing (no output-rule check: the record itself)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_SHA_CACHE: dict = {}


def sha256_file(path: "str | os.PathLike") -> str:
    """sha256 of a file's contents (remembered per path, size and modification time)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        import hashlib

        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]
