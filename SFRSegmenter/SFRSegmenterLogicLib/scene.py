"""The Slicer-side logic that needs only MRML: scene -> project, results -> scene, review.

Imports ``slicer`` (MRML classes), ``vtk``, ``numpy`` and the engine's plain-Python modules;
never Qt, CTK or ``ScriptedLoadableModule``, so it runs on ``slicer-core`` under pytest.

Conventions (see ``docs/PROJECT.md``): a case's files are ``images/<case>.nii.gz`` and
``labels/<case>.nii.gz`` written through Slicer's storage nodes, so they carry the volume's
IJK-to-RAS geometry exactly (NIfTI stores it in LPS; the storage node converts).  An engine
array ``[z, y, x]`` is Slicer's ``[k, j, i]``: a flagged slice ``index`` is IJK ``k``.

Nothing the user made is modified: results always go into new nodes, and the project's label
of a case the user labeled is never replaced by a pseudo-label.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk

from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.manifest import MANIFEST_NAME, Case, Project, load_project

#: Node attributes set on the nodes this module creates (never on the user's nodes).
ATTR_CASE = "SFR.Case"
ATTR_RUN = "SFR.Run"
ATTR_KIND = "SFR.Kind"
ATTR_PROJECT = "SFR.Project"
#: Segment tags.
TAG_KIND = "SFR.Kind"
TAG_CLASS = "SFR.Class"
TAG_RUN = "SFR.Run"
TAG_CASE = "SFR.Case"

KIND_PSEUDO = "pseudo_label"
KIND_LOWCONF = "low_confidence"
KIND_CONFIDENCE = "confidence"
KIND_IMAGE = "project_image"

LOWCONF_NAME = "low confidence"
LOWCONF_COLOR = (1.0, 0.85, 0.0)
CONFIDENCE_COLOR_NODE_ID = "vtkMRMLColorTableNodeRainbow"

#: Segment colours by class value (class 1 first); Slicer-like soft tones.
CLASS_COLORS = [
    (0.945, 0.839, 0.569),
    (0.502, 0.682, 0.502),
    (0.847, 0.396, 0.310),
    (0.435, 0.722, 0.824),
    (0.694, 0.478, 0.396),
    (0.565, 0.933, 0.565),
    (0.862, 0.608, 0.870),
    (0.400, 0.600, 0.950),
]

#: Manifest top-level key where the module records its exports and provenance (the engine
#: keeps unknown top-level keys when it rewrites the manifest).
MANIFEST_KEY = "slicer"

_LOGICS: dict = {}


# --------------------------------------------------------------------------- helpers


def class_color(value: int) -> tuple:
    return CLASS_COLORS[(int(value) - 1) % len(CLASS_COLORS)]


def safe_case_name(name: str) -> str:
    """A node name -> a case name usable as a file name (``"CT chest #2"`` -> ``"CT_chest_2"``)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._-")
    return text or "case"


def segmentation_logic(scene):
    """The Segmentations module logic: Slicer's own in the app, else one bound to ``scene``."""
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "segmentations") and scene is getattr(slicer, "mrmlScene", None):
        return modules.segmentations.logic()
    key = id(scene)
    entry = _LOGICS.get(key)
    if entry is None or entry[0] is not scene:
        logic = slicer.vtkSlicerSegmentationsModuleLogic()
        logic.SetMRMLScene(scene)
        entry = (scene, logic)
        _LOGICS[key] = entry
    return entry[1]


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _vtk_matrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def same_geometry(a, b, atol: float = 1e-4) -> bool:
    """True when two volume nodes share dimensions and IJK-to-RAS (NIfTI stores float32)."""
    ia, ib = a.GetImageData(), b.GetImageData()
    if ia is None or ib is None or tuple(ia.GetDimensions()) != tuple(ib.GetDimensions()):
        return False
    return bool(np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=atol, rtol=1e-5))


def volume_array(node) -> np.ndarray:
    """A copy of a volume node's voxels as ``[k, j, i]``."""
    return np.array(slicer.util.arrayFromVolume(node))


def _check_no_transform(node) -> None:
    if node.GetParentTransformNode() is not None:
        raise SFRError(
            f"volume {node.GetName()!r} is under a transform; harden the transform "
            "(Data module, right-click > Harden transform) before running SFR"
        )


def _sha(array: np.ndarray, matrix: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str((array.dtype.str, array.shape)).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    h.update(np.round(matrix, 6).tobytes())
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- reading/writing nodes


def write_node(scene, node, path: "str | os.PathLike") -> Path:
    """Write a volume node to ``path`` through a storage node, atomically (temp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".nii.gz", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # the storage node would log that it replaces an "old version"
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(tmp)
        storage.SetUseCompression(1)
        if not storage.WriteData(node):
            raise SFRError(f"Slicer could not write volume {node.GetName()!r}", path)
        os.replace(tmp, path)
    finally:
        scene.RemoveNode(storage)
        Path(tmp).unlink(missing_ok=True)
    return path


def read_node(scene, path: "str | os.PathLike", class_name: str, name: str):
    """Read a volume file into a new node of ``class_name`` (through a storage node)."""
    path = Path(path)
    if not path.exists():
        raise SFRError("file not found", path)
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if class_name == "vtkMRMLLabelMapVolumeNode":
        storage.SetCenterImage(0)
    ok = storage.ReadData(node)
    scene.RemoveNode(storage)
    if not ok or node.GetImageData() is None:
        scene.RemoveNode(node)
        raise SFRError("Slicer could not read this volume", path)
    return node


def _labelmap_like(scene, reference, array: np.ndarray, name: str = "__sfr_temp__"):
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras(reference)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    return node


# --------------------------------------------------------------------------- cases in the scene


@dataclass
class CaseEntry:
    """One row of the cases table: a volume, its segmentation (if labeled) and its role."""

    volume: object
    segmentation: object = None
    role: str = ""  # "" = automatic: labeled when it has a segmentation, else unlabeled
    name: str = ""

    def __post_init__(self):
        if not self.name:
            self.name = safe_case_name(self.volume.GetName())

    @property
    def effective_role(self) -> str:
        if self.role:
            return self.role
        return "labeled" if self.segmentation is not None else "unlabeled"


def _is_ours(node) -> bool:
    return node.GetAttribute(ATTR_KIND) is not None


def _reference_volume(seg):
    return seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) if hasattr(
        seg, "GetReferenceImageGeometryReferenceRole"
    ) else seg.GetNodeReference("referenceImageGeometryRef")


def _base_name(name: str) -> str:
    """``"case01.seg"``, ``"case01 segmentation"``, ``"case01-label"`` -> ``"case01"``."""
    text = str(name)
    for suffix in (".seg.nrrd", ".seg", " segmentation", "_segmentation", "-segmentation", "-label", "_label"):
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)]
    return text


def _geometry_matches(seg, volume) -> bool:
    """A segmentation read from a file (no volume node reference) whose saved reference
    geometry is ``volume``'s voxel grid."""
    saved = seg.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    if not saved or volume.GetImageData() is None:
        return False
    grid = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(saved, grid, False)
    if tuple(grid.GetDimensions()) != tuple(volume.GetImageData().GetDimensions()):
        return False
    matrix = vtk.vtkMatrix4x4()
    grid.GetImageToWorldMatrix(matrix)
    theirs = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return bool(np.allclose(theirs, ijk_to_ras(volume), atol=1e-4, rtol=1e-5))


def find_segmentation_for(scene, volume):
    """The user's segmentation of ``volume``, or None.

    Drawn on it (its reference volume is ``volume``); else, for a segmentation read from a file
    (``.seg.nrrd``, no reference volume), the one named like the volume (``case01.seg.nrrd``
    for ``case01``) or, when no name matches, the only one saved on ``volume``'s voxel grid.
    """
    drawn, named, on_grid = None, None, []
    for seg in _nodes(scene, "vtkMRMLSegmentationNode"):
        if _is_ours(seg) or not seg.GetSegmentation().GetNumberOfSegments():
            continue  # results are not the user's labels (accepted ones live in the project)
        ref = _reference_volume(seg)
        if ref is not None:
            if ref.GetID() == volume.GetID():
                drawn = seg
            continue
        if _base_name(seg.GetName()) == volume.GetName() and _geometry_matches(seg, volume):
            named = seg
        elif _geometry_matches(seg, volume):
            on_grid.append(seg)
    return drawn or named or (on_grid[0] if len(on_grid) == 1 else None)


def _nodes(scene, class_name: str) -> list:
    col = scene.GetNodesByClass(class_name)
    out = [col.GetItemAsObject(i) for i in range(col.GetNumberOfItems())]
    return out


def _skip_reason(vol) -> str | None:
    """Why a scalar-volume node is not a case (None: it is one)."""
    if vol.IsA("vtkMRMLLabelMapVolumeNode") or _is_ours(vol) or vol.GetName().startswith("__"):
        return ""  # not the user's image: no note
    image = vol.GetImageData()
    if image is None:
        return "it has no voxel data"
    if vol.IsA("vtkMRMLVectorVolumeNode") or image.GetNumberOfScalarComponents() != 1:
        return f"it has {image.GetNumberOfScalarComponents()} components per voxel (colour or vector); SFR needs one"
    return None


def skipped_volumes(scene) -> list:
    """A note per volume in the scene that is not a case, saying why."""
    notes = []
    for vol in _nodes(scene, "vtkMRMLScalarVolumeNode"):
        reason = _skip_reason(vol)
        if reason:
            notes.append(f"volume {vol.GetName()!r} is not a case: {reason}")
    return notes


def scene_cases(scene) -> list:
    """A case per single-component scalar volume the user loaded (not label maps, not our
    results; colour/vector volumes are listed by :func:`skipped_volumes`)."""
    cases = []
    names = set()
    for vol in _nodes(scene, "vtkMRMLScalarVolumeNode"):
        if _skip_reason(vol) is not None:
            continue
        entry = CaseEntry(vol, find_segmentation_for(scene, vol))
        base, i = entry.name, 2
        while entry.name in names:
            entry.name = f"{base}_{i}"
            i += 1
        names.add(entry.name)
        cases.append(entry)
    return cases


# --------------------------------------------------------------------------- segmentation <-> label


def _segment_ids(segmentation_node) -> list:
    seg = segmentation_node.GetSegmentation()
    return [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]


def segment_mask(scene, segmentation_node, segment_id: str, reference) -> np.ndarray:
    """Boolean ``[k, j, i]`` mask of one segment on ``reference``'s voxel grid."""
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    existing = _node_ids(scene)
    tmp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__sfr_export__")
    try:
        ok = segmentation_logic(scene).ExportSegmentsToLabelmapNode(segmentation_node, ids, tmp, reference)
        if not ok:
            raise SFRError(
                f"cannot export segment {segment_id!r} of {segmentation_node.GetName()!r} "
                f"onto {reference.GetName()!r}"
            )
        mask = volume_array(tmp) > 0
    finally:
        # the export adds a display node and a "<segmentation>_ColorTable": remove them all
        _remove_new_nodes(scene, existing)
    expected = tuple(reference.GetImageData().GetDimensions()[::-1])
    if mask.shape != expected:
        raise SFRError(
            f"segment {segment_id!r} exported with shape {mask.shape}, expected {expected}"
        )
    return mask


def _node_ids(scene) -> set:
    col = scene.GetNodes()
    return {col.GetItemAsObject(i).GetID() for i in range(col.GetNumberOfItems())}


def _remove_new_nodes(scene, existing: set, keep=()) -> None:
    keep_ids = {n.GetID() for n in keep if n is not None}
    for node_id in _node_ids(scene) - existing - keep_ids:
        node = scene.GetNodeByID(node_id)
        if node is not None:
            scene.RemoveNode(node)


def _remove(scene, node) -> None:
    if node is None:
        return
    for i in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
        dn = node.GetNthDisplayNode(i)
        if dn is not None:
            scene.RemoveNode(dn)
    if hasattr(node, "GetStorageNode") and node.GetStorageNode() is not None:
        scene.RemoveNode(node.GetStorageNode())
    scene.RemoveNode(node)


def segmentation_to_label(scene, segmentation_node, reference, classes: list, add_classes: bool = True) -> np.ndarray:
    """A segmentation -> a label array ``[k, j, i]`` on ``reference``'s grid, values by class name.

    Segments are matched to ``classes`` by name (case-insensitive); a new name is appended to
    ``classes`` (in place) when ``add_classes`` is true, else it is an error.  Segments this
    module marked as low-confidence regions are skipped.  Overlaps: the later segment wins.
    """
    dims = reference.GetImageData().GetDimensions()
    label = np.zeros(dims[::-1], dtype=np.uint8)
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    seg = segmentation_node.GetSegmentation()
    for sid in _segment_ids(segmentation_node):
        segment = seg.GetSegment(sid)
        kind = _tag(segment, TAG_KIND)
        if kind == KIND_LOWCONF:
            continue
        name = segment.GetName()
        value = lookup.get(name.lower())
        if value is None or value == 0:
            if not add_classes:
                raise SFRError(
                    f"segment {name!r} of {segmentation_node.GetName()!r} is not one of the "
                    f"project's classes ({', '.join(classes[1:])}); rename it"
                )
            classes.append(name)
            value = len(classes) - 1
            lookup[name.lower()] = value
        if value > 255:
            raise SFRError("more than 255 classes are not supported")
        label[segment_mask(scene, segmentation_node, sid, reference)] = value
    return label


def _tag(segment, name: str) -> str | None:
    """A segment tag's value, or None (``vtkSegment.GetTag`` fills a reference argument)."""
    value = vtk.reference("")
    if segment.GetTag(name, value):
        return str(value)
    return None


# --------------------------------------------------------------------------- scene -> project


def _empty_project(root: Path, name: str) -> Project:
    return Project(root=root, name=name or root.name, created=_now(), classes=["background"])


def open_or_create_project(project_dir: "str | os.PathLike") -> Project:
    root = Path(project_dir)
    if (root / MANIFEST_NAME).exists():
        return load_project(root)
    return _empty_project(root, root.name)


def _slicer_state(project: Project) -> dict:
    state = project.extra.setdefault(MANIFEST_KEY, {})
    state.setdefault("exports", {})
    state.setdefault("provenance", {})
    return state


def segment_names(segmentation_node) -> list:
    """Names of a segmentation's segments that are classes (not low-confidence regions)."""
    seg = segmentation_node.GetSegmentation()
    return [seg.GetSegment(sid).GetName() for sid in _segment_ids(segmentation_node)
            if _tag(seg.GetSegment(sid), TAG_KIND) != KIND_LOWCONF]


def check_segment_names(cases: list) -> None:
    """Every labeled case names its segments alike (ignoring case), so that one name is one
    class; otherwise one message lists each case's names (nothing is written)."""
    named = {e.name: segment_names(e.segmentation) for e in cases
             if e.segmentation is not None and e.effective_role in ("labeled", "validation")}
    if len({frozenset(n.lower() for n in names) for names in named.values()}) > 1:
        listing = "; ".join(f"{case}: {', '.join(names) or '(none)'}" for case, names in named.items())
        raise SFRError("the labeled cases name their segments differently (" + listing + "). Rename the "
                       "segments so that every labeled case uses the same names: each name is one class.")


def export_project(scene, project_dir: "str | os.PathLike", cases: list, name: str = "") -> Project:
    """Write the cases' volumes and segmentations into the project and update its manifest.

    Images and labels keep the volume's geometry (written by storage nodes); a file whose
    voxels and geometry did not change is not rewritten, so the engine's reuse of finished
    stages sees only real changes.  A case the user accepted or corrected in this module keeps
    that label while it has no segmentation of its own in the table.
    """
    root = Path(project_dir)
    if not cases:
        raise SFRError("no volumes to export: load at least one volume into Slicer")
    project = open_or_create_project(root)
    if name:
        project.name = name
    state = _slicer_state(project)
    exports, provenance = state["exports"], state["provenance"]
    check_segment_names(cases)
    classes = list(project.classes) or ["background"]
    by_name = {c.name: c for c in project.cases}
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
        record = exports.setdefault(entry.name, {})
        image_rel = f"images/{entry.name}.nii.gz"
        matrix = ijk_to_ras(entry.volume)
        image_sha = _sha(volume_array(entry.volume), matrix)
        if record.get("image_sha256") != image_sha or not (root / image_rel).exists():
            write_node(scene, entry.volume, root / image_rel)
            record["image_sha256"] = image_sha
        record["volume_node"] = entry.volume.GetName()
        label_rel = None
        if entry.segmentation is not None:
            _check_no_transform(entry.segmentation)
            if entry.name in provenance:  # the user's own segmentation now labels the case
                state.setdefault("superseded", {}).setdefault(entry.name, []).append(provenance.pop(entry.name))
            label = segmentation_to_label(scene, entry.segmentation, entry.volume, classes)
            if not label.any():
                raise SFRError(f"the segmentation of case {entry.name!r} is empty")
            label_rel = f"labels/{entry.name}.nii.gz"
            label_sha = _sha(label, matrix)
            if record.get("label_sha256") != label_sha or not (root / label_rel).exists():
                tmp = _labelmap_like(scene, entry.volume, label)
                try:
                    write_node(scene, tmp, root / label_rel)
                finally:
                    _remove(scene, tmp)
                record["label_sha256"] = label_sha
            record["segmentation_node"] = entry.segmentation.GetName()
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


# --------------------------------------------------------------------------- runs and review


def latest_run(project_dir: "str | os.PathLike") -> str | None:
    """The newest run id (``runs/latest``), or None before the first run."""
    path = Path(project_dir) / "runs" / "latest"
    if not path.exists():
        return None
    run_id = path.read_text(encoding="utf-8").strip()
    return run_id or None


def run_dir(project_dir: "str | os.PathLike", run_id: str | None = None) -> Path:
    run_id = run_id or latest_run(project_dir)
    if not run_id:
        raise SFRError("the project has no finished run yet", Path(project_dir) / "runs")
    path = Path(project_dir) / "runs" / run_id
    if not path.is_dir():
        raise SFRError("run folder not found", path)
    return path


def read_review(run_path: "str | os.PathLike") -> dict:
    """``review.json`` of a run as ``{case: entry}`` (missing file -> empty)."""
    path = Path(run_path) / "review.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SFRError(f"review.json is not valid JSON ({exc})", path) from None
    out = {}
    for entry in data.get("cases", []) if isinstance(data, dict) else []:
        if isinstance(entry, dict) and "case" in entry:
            out[str(entry["case"])] = entry
    return out


def flagged_slices(review: dict) -> list:
    """Rows for the flagged-slices table: ``{"case", "index", "confidence", "trusted"}``,
    least confident first."""
    rows = []
    for case, entry in review.items():
        for s in entry.get("flagged_slices", []) or []:
            try:
                rows.append(
                    {
                        "case": case,
                        "index": int(s["index"]),
                        "confidence": float(s.get("confidence", float("nan"))),
                        "trusted": entry.get("trusted"),
                    }
                )
            except (KeyError, TypeError, ValueError):
                continue
    rows.sort(key=lambda r: (r["confidence"] if r["confidence"] == r["confidence"] else 2.0))
    return rows


def pseudo_cases(run_path: "str | os.PathLike") -> list:
    """Case names that have a pseudo-label in the run folder."""
    folder = Path(run_path) / "pseudo"
    if not folder.is_dir():
        return []
    names = []
    for p in sorted(folder.glob("*.nii.gz")):
        base = p.name[: -len(".nii.gz")]
        if base.endswith("_confidence") or base.endswith("_lowconf") or base.startswith("."):
            continue
        names.append(base)
    return names


@dataclass
class CaseResult:
    """The nodes one case's results were loaded into."""

    case: str
    reference: object
    segmentation: object
    confidence: object = None
    review: dict = field(default_factory=dict)
    low_confidence_segment: str | None = None


def _find_reference(scene, case: str, reference_nodes: dict | None):
    if reference_nodes and case in reference_nodes:
        return reference_nodes[case]
    for entry in scene_cases(scene):
        if entry.name == case:
            return entry.volume
    return None


def _existing_result(scene, case: str, run_id: str):
    for seg in _nodes(scene, "vtkMRMLSegmentationNode"):
        if seg.GetAttribute(ATTR_KIND) == KIND_PSEUDO and seg.GetAttribute(ATTR_CASE) == case and seg.GetAttribute(ATTR_RUN) == run_id:
            return seg
    return None


def _import_label(scene, seg_node, label_node) -> list:
    """Import a label map's values as segments; returns the new segment ids (by value order)."""
    before = set(_segment_ids(seg_node))
    existing = _node_ids(scene)
    try:
        if not segmentation_logic(scene).ImportLabelmapToSegmentationNode(label_node, seg_node):
            raise SFRError(f"cannot import {label_node.GetName()!r} as segments")
    finally:
        _remove_new_nodes(scene, existing)
    return [sid for sid in _segment_ids(seg_node) if sid not in before]


def load_results(scene, project_dir: "str | os.PathLike", run_id: str | None = None, reference_nodes: dict | None = None) -> list:
    """Load every pseudo-label of a run into new nodes; returns a :class:`CaseResult` per case.

    For each case: a new segmentation node ``"<case> pseudo-label"`` (one segment per class,
    named and coloured by class, tagged with the run) plus a ``low confidence`` segment; the
    confidence map as a new scalar volume ``"<case> confidence"`` with a colour table.  The
    reference volume is the user's node for that case (``reference_nodes`` or the volume whose
    name gives the case name), or the project's image loaded as a new node.  Loading the same
    run twice reuses the nodes of the first time; no existing node is changed.
    """
    project = load_project(project_dir)
    path = run_dir(project_dir, run_id)
    run_id = path.name
    review = read_review(path)
    names = pseudo_cases(path)
    for case in review:
        if case not in names and (path / "pseudo" / f"{case}.nii.gz").exists():
            names.append(case)
    results = []
    for case in names:
        existing = _existing_result(scene, case, run_id)
        reference = _find_reference(scene, case, reference_nodes)
        if existing is not None:
            reference = existing.GetNodeReference("sfrReference") or reference
            conf = existing.GetNodeReference("sfrConfidence")
            results.append(CaseResult(case, reference, existing, conf, review.get(case, {})))
            continue
        if reference is None:
            try:
                image_path = project.image_path(project.case(case))
            except SFRError:
                image_path = Path(project_dir) / "images" / f"{case}.nii.gz"
            reference = read_node(scene, image_path, "vtkMRMLScalarVolumeNode", case)
            reference.SetAttribute(ATTR_KIND, KIND_IMAGE)
            reference.SetAttribute(ATTR_CASE, case)
            reference.CreateDefaultDisplayNodes()
        results.append(_load_case(scene, project, path, case, reference, review.get(case, {})))
    hide_other_runs(scene, run_id)
    return results


def hide_other_runs(scene, run_id: str) -> int:
    """Hide the pseudo-labels loaded from runs other than ``run_id`` (they stay in the scene)."""
    hidden = 0
    for seg in _nodes(scene, "vtkMRMLSegmentationNode"):
        if seg.GetAttribute(ATTR_KIND) == KIND_PSEUDO and seg.GetAttribute(ATTR_RUN) != run_id:
            display = seg.GetDisplayNode()
            if display is not None and display.GetVisibility():
                display.SetVisibility(False)
                hidden += 1
    return hidden


def _check_on_grid(node, reference, path) -> None:
    if not same_geometry(node, reference):
        raise SFRError(
            f"does not lie on the voxel grid of {reference.GetName()!r} "
            "(size or IJK-to-RAS differs); was the volume changed after the run?",
            path,
        )


def _load_case(scene, project: Project, path: Path, case: str, reference, review: dict) -> CaseResult:
    run_id = path.name
    label_path = path / "pseudo" / f"{case}.nii.gz"
    label_node = read_node(scene, label_path, "vtkMRMLLabelMapVolumeNode", "__sfr_pseudo__")
    try:
        _check_on_grid(label_node, reference, label_path)
        values = sorted(int(v) for v in np.unique(volume_array(label_node)) if v != 0)
        seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{case} pseudo-label"))
        seg_node.CreateDefaultDisplayNodes()
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        seg_node.SetNodeReferenceID("sfrReference", reference.GetID())
        for key, value in ((ATTR_KIND, KIND_PSEUDO), (ATTR_CASE, case), (ATTR_RUN, run_id), (ATTR_PROJECT, str(project.root))):
            seg_node.SetAttribute(key, value)
        new_ids = _import_label(scene, seg_node, label_node) if values else []
        if len(new_ids) != len(values):
            raise SFRError(f"imported {len(new_ids)} segments for label values {values}", label_path)
    finally:
        _remove(scene, label_node)
    segmentation = seg_node.GetSegmentation()
    by_value = dict(zip(values, new_ids))
    for value in range(1, max([project.num_classes - 1, *values]) + 1):
        name = project.classes[value] if value < project.num_classes else f"class_{value}"
        sid = by_value.get(value)
        if sid is None:  # keep every class editable even when this case has none of it
            sid = segmentation.AddEmptySegment(f"sfr_class_{value}", name)
        segment = segmentation.GetSegment(sid)
        segment.SetName(name)
        segment.SetColor(*class_color(value))
        _set_tags(segment, {TAG_KIND: KIND_PSEUDO, TAG_CLASS: str(value), TAG_RUN: run_id, TAG_CASE: case})
        segmentation.SetSegmentIndex(sid, value - 1)  # segments in class order
    lowconf_id = None
    lowconf_path = path / "pseudo" / f"{case}_lowconf.nii.gz"
    if lowconf_path.exists():
        low = read_node(scene, lowconf_path, "vtkMRMLLabelMapVolumeNode", "__sfr_lowconf__")
        try:
            _check_on_grid(low, reference, lowconf_path)
            arr = volume_array(low)
            if arr.any():
                if arr.max() != 1:
                    slicer.util.updateVolumeFromArray(low, (arr > 0).astype(np.uint8))
                ids = _import_label(scene, seg_node, low)
                lowconf_id = ids[0] if ids else None
            else:
                lowconf_id = segmentation.AddEmptySegment("sfr_low_confidence", LOWCONF_NAME)
        finally:
            _remove(scene, low)
        segment = segmentation.GetSegment(lowconf_id)
        segment.SetName(LOWCONF_NAME)
        segment.SetColor(*LOWCONF_COLOR)
        _set_tags(segment, {TAG_KIND: KIND_LOWCONF, TAG_RUN: run_id, TAG_CASE: case})
        display = seg_node.GetDisplayNode()
        if display is not None:
            display.SetSegmentOpacity2DFill(lowconf_id, 0.25)
            display.SetSegmentVisibility3D(lowconf_id, False)
    confidence = None
    conf_path = path / "pseudo" / f"{case}_confidence.nii.gz"
    if conf_path.exists():
        confidence = read_node(scene, conf_path, "vtkMRMLScalarVolumeNode", f"{case} confidence")
        _check_on_grid(confidence, reference, conf_path)
        for key, value in ((ATTR_KIND, KIND_CONFIDENCE), (ATTR_CASE, case), (ATTR_RUN, run_id)):
            confidence.SetAttribute(key, value)
        confidence.CreateDefaultDisplayNodes()
        display = confidence.GetDisplayNode()
        display.SetAndObserveColorNodeID(CONFIDENCE_COLOR_NODE_ID)
        display.AutoWindowLevelOff()
        low_end = 1.0 / max(2, project.num_classes)
        display.SetWindowLevelMinMax(low_end, 1.0)
        seg_node.SetNodeReferenceID("sfrConfidence", confidence.GetID())
    if review.get("confidence") is not None:
        seg_node.SetAttribute("SFR.CaseConfidence", str(review.get("confidence")))
    return CaseResult(case, reference, seg_node, confidence, review, lowconf_id)


def _set_tags(segment, tags: dict) -> None:
    for k, v in tags.items():
        segment.SetTag(k, str(v))


# --------------------------------------------------------------------------- views


def show_confidence_overlay(scene, background, confidence, opacity: float = 0.4) -> int:
    """Show ``confidence`` as a coloured foreground over ``background`` in every slice view."""
    n = 0
    for comp in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        comp.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        comp.SetForegroundVolumeID(confidence.GetID() if confidence is not None else None)
        comp.SetForegroundOpacity(opacity if confidence is not None else 0.0)
        n += 1
    return n


def slice_center_ras(volume, k: int) -> tuple:
    """RAS of the centre of slice ``k`` (IJK) of ``volume``."""
    dims = volume.GetImageData().GetDimensions()
    if not 0 <= int(k) < dims[2]:
        raise SFRError(f"slice {k} is outside {volume.GetName()!r} (0..{dims[2] - 1})")
    ijk = np.array([(dims[0] - 1) / 2.0, (dims[1] - 1) / 2.0, float(k), 1.0])
    ras = ijk_to_ras(volume) @ ijk
    return tuple(float(v) for v in ras[:3])


def jump_to_slice(scene, volume, k: int) -> tuple:
    """Centre every slice view on slice ``k`` of ``volume``; returns the RAS point."""
    r, a, s = slice_center_ras(volume, k)
    for node in _nodes(scene, "vtkMRMLSliceNode"):
        node.JumpSliceByCentering(r, a, s)
    return (r, a, s)


# --------------------------------------------------------------------------- accept / correct


def accept_case(
    scene,
    project_dir: "str | os.PathLike",
    case: str,
    run_id: str | None = None,
    segmentation_node=None,
    reference=None,
) -> dict:
    """Make a case labeled with its pseudo-label (accepted) or an edited segmentation (corrected).

    The label goes to ``labels/<case>.nii.gz``; the run's original pseudo-label is copied to
    ``provenance/<case>/<run>_pseudo.nii.gz`` and the manifest records where the label came
    from (``slicer.provenance``).  A label the user supplied for the case, or a hidden ground
    truth the manifest already names, is never overwritten.
    """
    root = Path(project_dir)
    project = load_project(root)
    path = run_dir(root, run_id)
    run_id = path.name
    entry = project.case(case)
    state = _slicer_state(project)
    provenance = state["provenance"]
    label_rel = f"labels/{case}.nii.gz"
    if entry.role == "labeled" and case not in provenance:
        raise SFRError(f"case {case!r} already has the user's label; not replacing it", project.label_path(entry))
    if entry.label and case not in provenance and entry.label != label_rel:
        raise SFRError(
            f"case {case!r} has a ground-truth label in the manifest; not replacing it", project.label_path(entry)
        )
    if entry.label == label_rel and case not in provenance and (root / label_rel).exists():
        raise SFRError(f"case {case!r} already has a label file; not replacing it", root / label_rel)
    pseudo = path / "pseudo" / f"{case}.nii.gz"
    if not pseudo.exists():
        raise SFRError(f"run {run_id} has no pseudo-label for case {case!r}", pseudo)
    kept = root / "provenance" / case / f"{run_id}_pseudo.nii.gz"
    kept.parent.mkdir(parents=True, exist_ok=True)
    if not kept.exists():
        tmp = kept.with_name(".tmp-" + kept.name)
        shutil.copyfile(pseudo, tmp)
        os.replace(tmp, kept)
    if segmentation_node is None:
        source = "accepted"
        tmp = (root / label_rel).with_name(f".tmp-{case}.nii.gz")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pseudo, tmp)
        os.replace(tmp, root / label_rel)
        digest = hashlib.sha256((root / label_rel).read_bytes()).hexdigest()
    else:
        source = "corrected"
        if reference is None:
            raise SFRError("saving a correction needs the case's volume node")
        classes = list(project.classes)
        label = segmentation_to_label(scene, segmentation_node, reference, classes, add_classes=False)
        tmp_node = _labelmap_like(scene, reference, label)
        try:
            write_node(scene, tmp_node, root / label_rel)
        finally:
            _remove(scene, tmp_node)
        digest = _sha(label, ijk_to_ras(reference))
    entry.label = label_rel
    entry.role = "labeled"
    record = {
        "source": source,
        "run": run_id,
        "pseudo_label": f"provenance/{case}/{run_id}_pseudo.nii.gz",
        "time": _now(),
        "sha256": digest,
    }
    history = provenance.get(case, {}).get("history", [])
    if case in provenance:
        history = history + [{k: v for k, v in provenance[case].items() if k != "history"}]
    record["history"] = history
    provenance[case] = record
    project.save()
    if segmentation_node is not None:
        segmentation_node.SetAttribute("SFR.Accepted", source)
    return record


def run_of(node) -> str | None:
    """The run a result node was loaded from (None for a node this module did not make)."""
    return node.GetAttribute(ATTR_RUN) if node is not None else None


def links_html(project_dir: "str | os.PathLike", run_id: str | None = None) -> str:
    """Links to the project folder and, for a run, its report and log (for a rich-text label)."""
    root = Path(project_dir)
    links = []
    if root.is_dir():
        links.append(f'<a href="{root.resolve().as_uri()}">project folder</a>')
    if run_id:
        run = root / "runs" / run_id
        for name, label in (("report.html", "report"), ("log.txt", "log"), ("", f"run {run_id}")):
            target = run / name if name else run
            if target.exists():
                links.append(f'<a href="{target.resolve().as_uri()}">{label}</a>')
    return " | ".join(links)


def case_states(project_dir: "str | os.PathLike", run_id: str | None = None) -> dict:
    """``{case: state}`` with state one of labeled, unlabeled, validation, pseudo-labeled,
    flagged, accepted, corrected."""
    root = Path(project_dir)
    if not (root / MANIFEST_NAME).exists():
        return {}
    project = load_project(root)
    provenance = project.extra.get(MANIFEST_KEY, {}).get("provenance", {})
    try:
        path = run_dir(root, run_id)
    except SFRError:
        path = None
    review = read_review(path) if path else {}
    pseudo = set(pseudo_cases(path)) if path else set()
    states = {}
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
