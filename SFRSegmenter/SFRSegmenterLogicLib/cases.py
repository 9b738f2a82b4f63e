"""Case discovery: which volumes in the scene are cases, which segmentation labels each, and the
role the user gave it.

A case is a single-component scalar volume the user loaded (not a label map, not one of this
module's results).  Its segmentation is the one drawn on it, or, for a segmentation read from a
file (``.seg.nrrd``, no node reference), the one named like the volume or the only one saved on
its voxel grid.  Roles: automatic (labeled when it has a segmentation), labeled, unlabeled,
validation, or excluded (left out of the project).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import slicer
import vtk

from SFRSegmenterLib.errors import SFRError

from .nodes import ijk_to_ras, is_ours, nodes_of_class, segment_names

#: Roles a case can have in the panel; the first three are the engine's, "excluded" is the module's.
ROLES = ("labeled", "unlabeled", "validation", "excluded")
EXCLUDED = "excluded"


def safe_case_name(name: str) -> str:
    """A node name -> a case name usable as a file name (``"CT chest #2"`` -> ``"CT_chest_2"``)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._-")
    return text or "case"


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

    @property
    def excluded(self) -> bool:
        return self.role == EXCLUDED


def reference_volume(seg):
    """The volume a segmentation was drawn on (None for one read from a file)."""
    return seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())


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
    for seg in nodes_of_class(scene, "vtkMRMLSegmentationNode"):
        if is_ours(seg) or not seg.GetSegmentation().GetNumberOfSegments():
            continue  # results are not the user's labels (accepted ones live in the project)
        ref = reference_volume(seg)
        if ref is not None:
            if ref.GetID() == volume.GetID():
                drawn = seg
            continue
        if _base_name(seg.GetName()) == volume.GetName() and _geometry_matches(seg, volume):
            named = seg
        elif _geometry_matches(seg, volume):
            on_grid.append(seg)
    return drawn or named or (on_grid[0] if len(on_grid) == 1 else None)


def _skip_reason(vol) -> str | None:
    """Why a scalar-volume node is not a case (None: it is one; "": not the user's image)."""
    if vol.IsA("vtkMRMLLabelMapVolumeNode") or is_ours(vol) or vol.GetName().startswith("__"):
        return ""
    image = vol.GetImageData()
    if image is None:
        return "it has no voxel data"
    if vol.IsA("vtkMRMLVectorVolumeNode") or image.GetNumberOfScalarComponents() != 1:
        return f"it has {image.GetNumberOfScalarComponents()} components per voxel (colour or vector); SFR needs one"
    return None


def skipped_volumes(scene) -> list:
    """A note per volume in the scene that is not a case, saying why."""
    notes = []
    for vol in nodes_of_class(scene, "vtkMRMLScalarVolumeNode"):
        reason = _skip_reason(vol)
        if reason:
            notes.append(f"volume {vol.GetName()!r} is not a case: {reason}")
    return notes


def scene_cases(scene) -> list:
    """A case per single-component scalar volume the user loaded (not label maps, not our
    results; colour/vector volumes are listed by :func:`skipped_volumes`)."""
    cases = []
    names = set()
    for vol in nodes_of_class(scene, "vtkMRMLScalarVolumeNode"):
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


def check_segment_names(cases: list) -> None:
    """Every labeled case names its segments alike (ignoring case), so that one name is one
    class; otherwise one message lists each case's names and what each case lacks, and says
    that an empty segment of the missing name labels a structure absent from a case (nothing is
    written)."""
    named = {e.name: segment_names(e.segmentation) for e in cases
             if e.segmentation is not None and e.effective_role in ("labeled", "validation")}
    if len({frozenset(n.lower() for n in names) for names in named.values()}) <= 1:
        return
    spelling = {}  # lower-case name -> its first spelling, in case order
    for names in named.values():
        for n in names:
            spelling.setdefault(n.lower(), n)
    listing = "; ".join(f"{case}: {', '.join(names) or '(none)'}" for case, names in named.items())
    lacking = []
    for case, names in named.items():
        own = {n.lower() for n in names}
        missing = [shown for key, shown in spelling.items() if key not in own]
        if missing:
            lacking.append(f"{case} has no {', '.join(repr(m) for m in missing)}")
    raise SFRError(
        "the labeled cases name their segments differently (" + listing + "); each name is one class: "
        + "; ".join(lacking) + ". Where a structure is absent from a case, add an empty segment of that "
        "name to its segmentation (Segment Editor: Add, then rename it), which labels it absent there; "
        "where it is drawn under another name, rename that segment.")


# --------------------------------------------------------------------------- the table's picks


def pickable_segmentations(scene) -> list:
    """The segmentations the table's Segmentation column offers: the user's own, pseudo-labels
    accepted in this module, and the results of Apply model (so the next patient's applied
    segmentation, checked or corrected, can become its label); never a run's other results."""
    from .nodes import ATTR_ACCEPTED, ATTR_KIND, KIND_PREDICTION

    return [seg for seg in nodes_of_class(scene, "vtkMRMLSegmentationNode")
            if seg.GetAttribute(ATTR_KIND) in (None, KIND_PREDICTION) or seg.GetAttribute(ATTR_ACCEPTED)]


def picked_segmentation_id(scene, picked: "str | None", found) -> str:
    """The node ID the Segmentation column selects for a case: the user's pick (``""`` = none)
    while that node still exists, else the segmentation found for the volume, else none."""
    if picked is not None and (picked == "" or scene.GetNodeByID(picked) is not None):
        return picked
    return found.GetID() if found is not None else ""


@dataclass
class TableRow:
    """What one row of the cases table shows."""

    name: str  # the case
    volume_name: str  # the tooltip
    choices: list  # [(label, segmentation node ID)] of the Segmentation column, "(none)" first
    picked: str  # the node ID selected there ("" = none)
    role: str  # the Role column's value ("" = automatic)
    state: str  # the State column


def table_rows(scene, entries: list, picks: dict, roles: dict, states: dict) -> list:
    """The cases table for ``entries`` (:func:`scene_cases`): the user's picks and roles (case
    name -> node ID / role, kept across refreshes) over what was found; the state from the
    project (``provenance.case_states``), ``new`` for a case not in it yet."""
    choices = [("(none)", "")] + [(seg.GetName(), seg.GetID()) for seg in pickable_segmentations(scene)]
    return [TableRow(entry.name, entry.volume.GetName(), choices,
                     picked_segmentation_id(scene, picks.get(entry.name), entry.segmentation),
                     roles.get(entry.name, ""), states.get(entry.name, "new")) for entry in entries]


def entries_from_table(scene, entries: list, picks: dict, roles: dict) -> list:
    """The :class:`CaseEntry` s the table describes: each case with the segmentation and role
    it shows (the same rule as :func:`table_rows`)."""
    out = []
    for entry in entries:
        picked = picked_segmentation_id(scene, picks.get(entry.name), entry.segmentation)
        out.append(CaseEntry(entry.volume, scene.GetNodeByID(picked) if picked else None,
                             roles.get(entry.name, ""), entry.name))
    return out


class CasesTable:
    """The cases table across refreshes: the scene's cases, the user's picks and roles (case name
    -> segmentation node ID / role, kept until the scene closes) and the notes about volumes that
    are not cases, each given once.  The widget only draws :meth:`refresh`'s rows and records a
    choice in :attr:`picks` / :attr:`roles`."""

    def __init__(self):
        self.cases, self.picks, self.roles = [], {}, {}
        self._noted = set()

    def refresh(self, scene, project_root) -> tuple:
        """``([TableRow], [log lines])`` for the scene now: the states from the project (one
        ``error:`` line when it cannot be read, and every state ``new``), and each note about a
        volume that is not a case the first time only."""
        from .provenance import case_states

        self.cases = scene_cases(scene)
        lines = []
        for note in skipped_volumes(scene):
            if note not in self._noted:
                self._noted.add(note)
                lines.append(note)
        try:
            states = case_states(project_root)
        except SFRError as exc:
            states = {}
            lines.append(f"error: {exc}")
        return table_rows(scene, self.cases, self.picks, self.roles, states), lines

    def entries(self, scene) -> list:
        """The :class:`CaseEntry` s the table shows (:func:`entries_from_table`)."""
        return entries_from_table(scene, self.cases, self.picks, self.roles)

    def reference_nodes(self) -> dict:
        """Case name -> its volume node, where a run's results are loaded."""
        return {entry.name: entry.volume for entry in self.cases}

    def forget_choices(self) -> None:
        """The scene closed: its picks and roles go (the notes given stay given)."""
        self.picks, self.roles = {}, {}
