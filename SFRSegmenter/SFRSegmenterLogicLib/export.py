"""Scene -> project: write the cases' volumes and segmentations into the project folder and its
manifest, for the engine to read.

``images/<case>.nii.gz`` and ``labels/<case>.nii.gz`` are written through Slicer's storage
nodes (the volume's exact geometry), only when their voxels or geometry changed.  The module
keeps its own records in the manifest's ``slicer`` key (the engine keeps unknown top-level keys
when it rewrites the manifest): what it exported, and where accepted labels came from.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.clock import utcnow
from SFRSegmenterLib.manifest import MANIFEST_NAME, Case, Project, load_project

from .cases import EXCLUDED, check_segment_names
from .nodes import (content_sha, ijk_to_ras, is_low_confidence_segment, labelmap_like, remove_node, segment_ids,
                    segmentation_to_label, tag, volume_array, write_node)

#: Manifest top-level key where the module records its exports, provenance and excluded cases.
MANIFEST_KEY = "slicer"


def open_or_create_project(project_dir: "str | os.PathLike") -> Project:
    root = Path(project_dir)
    if (root / MANIFEST_NAME).exists():
        return load_project(root)
    return Project(root=root, name=root.name, created=utcnow(), classes=["background"])


def slicer_state(project: Project) -> dict:
    """The module's records in the manifest: ``exports``, ``provenance``, ``excluded`` and
    ``class_styles`` (the colour and terminology the user gave each class)."""
    state = project.extra.setdefault(MANIFEST_KEY, {})
    for key in ("exports", "provenance", "excluded", "class_styles"):
        state.setdefault(key, {})
    return state


def check_writable(root: Path) -> None:
    """The project folder exists (or can be made) and takes a new file; else one line naming it."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".sfr-write-test-"):
            pass
    except OSError as exc:
        raise SFRError(f"the project folder cannot be written ({exc.strerror or exc}); choose another folder",
                       root) from None


def _check_no_transform(node) -> None:
    if node.GetParentTransformNode() is not None:
        raise SFRError(
            f"volume {node.GetName()!r} is under a transform; harden the transform "
            "(Data module, right-click > Harden transform) before running SFR"
        )


def _exclude(project: Project, state: dict, name: str) -> None:
    """Take an excluded case out of the manifest; its record is kept to bring it back as it was."""
    for case in list(project.cases):
        if case.name == name:
            project.cases.remove(case)
            state["excluded"][name] = {"image": case.image, "label": case.label, "role": case.role}


def _include_again(project: Project, state: dict, name: str) -> None:
    record = state["excluded"].pop(name, None)
    if record is not None and all(c.name != name for c in project.cases):
        project.cases.append(Case(name, record["image"], record.get("label"), record.get("role") or "unlabeled"))


def _write_image(scene, root: Path, entry, record: dict) -> str:
    image_rel = f"images/{entry.name}.nii.gz"
    image_sha = content_sha(volume_array(entry.volume), ijk_to_ras(entry.volume))
    if record.get("image_sha256") != image_sha or not (root / image_rel).exists():
        write_node(scene, entry.volume, root / image_rel)
        record["image_sha256"] = image_sha
    record["volume_node"] = entry.volume.GetName()
    return image_rel


def _write_label(scene, root: Path, entry, record: dict, classes: list) -> str:
    _check_no_transform(entry.segmentation)
    from .partial import is_partial, partial_label  # drawn slices only, 255 elsewhere

    if is_partial(entry.segmentation):
        label = partial_label(scene, entry.segmentation, entry.volume, classes)
    else:
        label = segmentation_to_label(scene, entry.segmentation, entry.volume, classes)
    if not ((label > 0) & (label != 255)).any():
        raise SFRError(f"the segmentation of case {entry.name!r} is empty")
    label_rel = f"labels/{entry.name}.nii.gz"
    label_sha = content_sha(label, ijk_to_ras(entry.volume))
    if record.get("label_sha256") != label_sha or not (root / label_rel).exists():
        tmp = labelmap_like(scene, entry.volume, label)
        try:
            write_node(scene, tmp, root / label_rel)
        finally:
            remove_node(scene, tmp)
        record["label_sha256"] = label_sha
    record["segmentation_node"] = entry.segmentation.GetName()
    return label_rel


def _record_styles(segmentation_node, styles: dict) -> None:
    """Keep the colour and terminology of each class segment, by class name (lower case), so
    that pseudo-labels show the classes as the user drew them."""
    segmentation = segmentation_node.GetSegmentation()
    for sid in segment_ids(segmentation_node):
        segment = segmentation.GetSegment(sid)
        if is_low_confidence_segment(segment):
            continue
        style = {"color": [round(float(c), 4) for c in segment.GetColor()]}
        terminology = tag(segment, segment.GetTerminologyEntryTagName())
        if terminology:
            style["terminology"] = terminology
        styles[segment.GetName().lower()] = style


def _check_entries(cases: list, provenance: dict) -> None:
    seen = set()
    for entry in cases:
        if entry.name in seen:
            raise SFRError(f"two volumes give the same case name {entry.name!r}; rename one")
        seen.add(entry.name)
        _check_no_transform(entry.volume)
        if entry.effective_role not in ("labeled", "unlabeled", "validation"):
            raise SFRError(f"case {entry.name!r} has unknown role {entry.role!r}")
        if entry.effective_role == "labeled" and entry.segmentation is None and entry.name not in provenance:
            raise SFRError(f"case {entry.name!r} is marked labeled but has no segmentation")
        if entry.effective_role == "validation" and entry.segmentation is None and entry.name not in provenance:
            raise SFRError(f"case {entry.name!r} is marked validation but has no segmentation: a validation case "
                           "measures the result against its segmentation; pick it in the Segmentation column, or "
                           "make the case unlabeled")


def planned_roles(project_dir: "str | os.PathLike", cases: list) -> dict:
    """``{case: role}`` :func:`export_project` gives the included cases, known before anything is
    written: the table's role; automatic is labeled with a segmentation, else unlabeled, except
    for a case accepted or corrected in this module, which keeps its label (labeled)."""
    root = Path(project_dir)
    provenance, labels = {}, {}
    if (root / MANIFEST_NAME).exists():
        project = load_project(root)
        provenance = slicer_state(project)["provenance"]
        labels = {c.name: c.label for c in project.cases}
    roles = {}
    for entry in cases:
        if entry.role == EXCLUDED:
            continue
        role = entry.effective_role
        if entry.segmentation is None and not entry.role and entry.name in provenance and labels.get(entry.name):
            role = "labeled"
        roles[entry.name] = role
    return roles


def export_project(scene, project_dir: "str | os.PathLike", cases: list, name: str = "") -> Project:
    """Write the cases' volumes and segmentations into the project and update its manifest.

    Images and labels keep the volume's geometry (written by storage nodes); a file whose
    voxels and geometry did not change is not rewritten, so the engine's reuse of finished
    stages sees only real changes.  A case the user accepted or corrected in this module keeps
    that label while it has no segmentation of its own in the table.  An excluded case leaves
    the manifest (its files stay) and comes back as it was when it is included again.
    """
    root = Path(project_dir)
    included = [e for e in cases if e.role != EXCLUDED]
    if not included:
        raise SFRError("no volumes to export: load at least one volume into Slicer (and do not exclude them all)")
    project = open_or_create_project(root)
    if name:
        project.name = name
    state = slicer_state(project)
    exports, provenance = state["exports"], state["provenance"]
    check_segment_names(included)
    _check_entries(included, provenance)
    check_writable(root)
    for entry in cases:
        if entry.role == EXCLUDED:
            _exclude(project, state, entry.name)
        else:
            _include_again(project, state, entry.name)
    classes = list(project.classes) or ["background"]
    by_name = {c.name: c for c in project.cases}
    for entry in included:
        record = exports.setdefault(entry.name, {})
        image_rel = _write_image(scene, root, entry, record)
        label_rel = None
        if entry.segmentation is not None:
            if entry.name in provenance:  # the user's own segmentation now labels the case
                state.setdefault("superseded", {}).setdefault(entry.name, []).append(provenance.pop(entry.name))
            label_rel = _write_label(scene, root, entry, record, classes)
            _record_styles(entry.segmentation, state["class_styles"])
        elif entry.name in provenance and entry.name in by_name:
            label_rel = by_name[entry.name].label  # accepted/corrected in this module
        role = entry.effective_role
        if label_rel is not None and entry.name in provenance and not entry.role:
            role = "labeled"
        case = by_name.get(entry.name)
        if case is None:
            case = Case(entry.name, image_rel, label_rel, role)
            project.cases.append(case)
            by_name[entry.name] = case
        else:
            case.image, case.label, case.role = image_rel, label_rel, role
    project.classes = classes if len(classes) > 1 else classes + ["foreground"]
    root.mkdir(parents=True, exist_ok=True)
    project.save()
    return project


def check_ready_to_run(project: Project) -> None:
    """A run needs at least one labeled and one unlabeled case."""
    if not project.by_role("labeled"):
        raise SFRError("no labeled case: draw a segmentation on at least one volume", project.manifest_path)
    if not project.by_role("unlabeled"):
        raise SFRError("no unlabeled case: load at least one volume without a segmentation", project.manifest_path)
