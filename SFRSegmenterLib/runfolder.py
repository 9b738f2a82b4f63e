"""A finished run's folder as a reader sees it: its review entries, its pseudo-labelled cases and
the files of each case.

The writers are the run's confidence stage and ``sfr review`` (:mod:`.review`); this is the one
reader, used by the Slicer module.  Standard library only at import time, so the module can
import it before the engine's dependencies are installed.

    RUN/review.json                       {"cases": [{"case", "confidence", "trusted", "flagged_slices", ...}]}
    RUN/pseudo/<case>.nii.gz              the pseudo-label
    RUN/pseudo/<case>_confidence.nii.gz   voxel confidence (max softmax)
    RUN/pseudo/<case>_lowconf.nii.gz      low-confidence mask
"""

from __future__ import annotations

import os
from pathlib import Path

from .io import read_json
from .jobs import latest_run_id, run_dir  # noqa: F401 - the run-folder helpers a reader needs

REVIEW_JSON = "review.json"
PSEUDO_FOLDER = "pseudo"
#: The files of one case in ``RUN/pseudo``, after the case name (the order of :mod:`.review`).
CASE_FILES = {"label": ".nii.gz", "confidence": "_confidence.nii.gz", "lowconf": "_lowconf.nii.gz"}


def case_file(run_path: "str | os.PathLike", case: str, kind: str = "label") -> Path:
    """``RUN/pseudo/<case><suffix>`` for ``kind`` in :data:`CASE_FILES` (the file may not exist)."""
    return Path(run_path) / PSEUDO_FOLDER / f"{case}{CASE_FILES[kind]}"


def read_review(run_path: "str | os.PathLike") -> dict:
    """``review.json`` of a run as ``{case: entry}`` (no file: empty)."""
    path = Path(run_path) / REVIEW_JSON
    data = read_json(path, "review.json", missing={})
    out = {}
    for entry in data.get("cases", []) if isinstance(data, dict) else []:
        if isinstance(entry, dict) and "case" in entry:
            out[str(entry["case"])] = entry
    return out


def pseudo_cases(run_path: "str | os.PathLike") -> list:
    """Names of the cases with a pseudo-label in the run, sorted."""
    folder = Path(run_path) / PSEUDO_FOLDER
    if not folder.is_dir():
        return []
    extra = tuple(suffix for kind, suffix in CASE_FILES.items() if kind != "label")
    names = []
    for path in sorted(folder.glob("*" + CASE_FILES["label"])):
        if path.name.startswith(".") or path.name.endswith(extra):
            continue
        names.append(path.name[: -len(CASE_FILES["label"])])
    return names


def result_cases(run_path: "str | os.PathLike", review: dict | None = None) -> list:
    """The cases to show from a run: those with a pseudo-label, then reviewed ones whose
    label file exists but was not listed (kept in review order)."""
    names = pseudo_cases(run_path)
    for case in review if review is not None else read_review(run_path):
        if case not in names and case_file(run_path, case).exists():
            names.append(case)
    return names
