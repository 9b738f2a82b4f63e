"""Accepting and correcting pseudo-labels, where each label came from, and each case's state.

Accept makes a run's pseudo-label a case's label; Save correction makes an edited pseudo-label
node the label.  Both act on the run the node was loaded from (``SFR.Run``), keep that run's
original pseudo-label under ``provenance/<case>/<run>_pseudo.nii.gz``, and record the source in
the manifest (``slicer.provenance``).  A label the user supplied, or a hidden ground truth the
manifest already names, is never overwritten.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from SFRSegmenterLib import runfolder
from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.io import sha256_file
from SFRSegmenterLib.clock import utcnow
from SFRSegmenterLib.manifest import MANIFEST_NAME, load_project

from .edits import mark_saved
from .export import MANIFEST_KEY, check_writable, slicer_state
from .nodes import (ATTR_ACCEPTED, content_sha, ijk_to_ras, labelmap_like, remove_node, segmentation_to_label,
                    write_node)


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(".tmp-" + target.name)
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _check_may_label(root: Path, project, entry, provenance: dict, label_rel: str) -> None:
    case = entry.name
    if entry.role == "labeled" and case not in provenance:
        raise SFRError(f"case {case!r} already has the user's label; not replacing it", project.label_path(entry))
    if entry.label and case not in provenance and entry.label != label_rel:
        raise SFRError(f"case {case!r} has a ground-truth label in the manifest; not replacing it",
                       project.label_path(entry))
    if entry.label == label_rel and case not in provenance and (root / label_rel).exists():
        raise SFRError(f"case {case!r} already has a label file; not replacing it", root / label_rel)


def _write_correction(scene, project, segmentation_node, reference, target: Path) -> str:
    if reference is None:
        raise SFRError("saving a correction needs the case's volume node")
    label = segmentation_to_label(scene, segmentation_node, reference, list(project.classes), add_classes=False)
    tmp_node = labelmap_like(scene, reference, label)
    try:
        write_node(scene, tmp_node, target)
    finally:
        remove_node(scene, tmp_node)
    return content_sha(label, ijk_to_ras(reference))


def accept_case(scene, project_dir: "str | os.PathLike", case: str, run_id: str | None = None,
                segmentation_node=None, reference=None) -> dict:
    """Make a case labeled with its pseudo-label (accepted) or an edited segmentation (corrected).

    The label goes to ``labels/<case>.nii.gz``; the run's original pseudo-label is copied to
    ``provenance/<case>/<run>_pseudo.nii.gz`` and the manifest records where the label came
    from (``slicer.provenance``).  A label the user supplied for the case, or a hidden ground
    truth the manifest already names, is never overwritten.
    """
    root = Path(project_dir)
    project = load_project(root)
    check_writable(root)
    path = runfolder.run_dir(root, run_id)
    run_id = path.name
    entry = project.case(case)
    provenance = slicer_state(project)["provenance"]
    label_rel = f"labels/{case}.nii.gz"
    _check_may_label(root, project, entry, provenance, label_rel)
    pseudo = runfolder.case_file(path, case)
    if not pseudo.exists():
        raise SFRError(f"run {run_id} has no pseudo-label for case {case!r}", pseudo)
    kept = root / "provenance" / case / f"{run_id}_pseudo.nii.gz"
    if not kept.exists():
        _copy_atomic(pseudo, kept)
    if segmentation_node is None:
        source = "accepted"
        _copy_atomic(pseudo, root / label_rel)
        digest = sha256_file(root / label_rel)
    else:
        source = "corrected"
        digest = _write_correction(scene, project, segmentation_node, reference, root / label_rel)
    entry.label = label_rel
    entry.role = "labeled"
    record = {"source": source, "run": run_id, "pseudo_label": f"provenance/{case}/{run_id}_pseudo.nii.gz",
              "time": utcnow(), "sha256": digest}
    history = provenance.get(case, {}).get("history", [])
    if case in provenance:
        history = history + [{k: v for k, v in provenance[case].items() if k != "history"}]
    record["history"] = history
    provenance[case] = record
    project.save()
    if segmentation_node is not None:
        segmentation_node.SetAttribute(ATTR_ACCEPTED, source)
        mark_saved(segmentation_node)
    return record


def case_states(project_dir: "str | os.PathLike", run_id: str | None = None) -> dict:
    """``{case: state}`` with state one of labeled, unlabeled, validation, pseudo-labeled,
    flagged, accepted, corrected, excluded."""
    root = Path(project_dir)
    if not (root / MANIFEST_NAME).exists():
        return {}
    project = load_project(root)
    state = project.extra.get(MANIFEST_KEY, {})
    provenance = state.get("provenance", {})
    if run_id is None:
        from .panelrules import state_run

        run_id = state_run(root)
    try:
        path = runfolder.run_dir(root, run_id) if run_id else None
    except SFRError:
        path = None
    review = runfolder.read_review(path) if path else {}
    pseudo = set(runfolder.pseudo_cases(path)) if path else set()
    states = {name: "excluded" for name in state.get("excluded", {})}
    for c in project.cases:
        if c.name in provenance and c.role == "labeled":
            states[c.name] = provenance[c.name].get("source", "accepted")
        elif c.role in ("labeled", "validation"):
            states[c.name] = c.role
        elif c.name in pseudo:
            trusted = review.get(c.name, {}).get("trusted")
            states[c.name] = "flagged" if trusted is False else "pseudo-labeled"
        else:
            states[c.name] = "unlabeled"
    return states


def links_html(project_dir: "str | os.PathLike", run_id: str | None = None) -> str:
    """Links to the project folder and, for a run, its report and log (for a rich-text label)."""
    root = Path(project_dir)
    links = []
    if root.is_dir():
        links.append(f'<a href="{root.resolve().as_uri()}">project folder</a>')
    if run_id:
        run = runfolder.RunFolder(runfolder.runs_dir(root) / run_id)
        for target, label in ((run.report, "report"), (run.log, "log"), (run.path, f"run {run_id}")):
            if target.exists():
                links.append(f'<a href="{target.resolve().as_uri()}">{label}</a>')
    return " | ".join(links)
