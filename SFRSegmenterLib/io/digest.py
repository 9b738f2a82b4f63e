"""Content checksums of files (remembered per path, size and modification time)."""

from __future__ import annotations

import os
from pathlib import Path

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
