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
updated by the one atomic writer, so a claimed folder is guarded whichever writer writes.  The
claims and the record live in :mod:`.record`, which imports neither the writers nor the guard
(no import circle); this module adds the commands' side.
"""

from __future__ import annotations

import os
from pathlib import Path

from .record import (  # noqa: F401 - the claims, the record and its check (io/record.py), re-exported
    EARLIER_VERSIONS,
    RECORD_FILE,
    check_replace,
    claim,
    note_written,
    release_all,
)


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
    ``related`` paths (the model, the images, the project given).  ``--out`` naming a file where
    a folder is written (or a folder where a file is) is refused here, before any work."""
    from ..errors import SFRError

    target = Path(out)
    if not file and (target.is_file() or (target.exists() and not target.is_dir())):
        raise SFRError("--out must be a folder (the outputs are written into it), and this is a file", target)
    if file and target.is_dir():
        raise SFRError("--out must be a file name, and this is a folder", target)
    claim(out, overwrite, file=file)
    protect_projects([out, *related])
