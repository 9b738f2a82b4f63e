"""The project manifest ``PROJECT/sfr-project.json``: the contract between Slicer and the engine.

Format (schema version 1)::

    {
      "schema_version": 1,
      "name": "la16",
      "created": "2026-11-27T00:00:00Z",
      "classes": ["background", "left_atrium"],      # index = label value
      "cases": [
        {"name": "case01", "image": "images/case01.nii.gz", "label": "labels/case01.nii.gz",
         "role": "labeled"},
        {"name": "case02", "image": "/data/la/images/case02.nii.gz", "label": null,
         "role": "unlabeled"}
      ]
    }

* ``role`` is ``labeled`` (its label trains), ``unlabeled`` (gets pseudo-labels) or
  ``validation`` (held out).  A ``label`` on an unlabeled or validation case is hidden ground
  truth: never used for training, only for evaluation.
* Paths are relative to the project folder when they lie inside it, absolute otherwise (so a
  benchmark project can point at a read-only data set without copying it).
* The file is written atomically (temporary file + rename).  A manifest with a newer schema
  version than this engine knows is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable


import numpy as np

from .clock import utcnow
from .errors import SFRError
from .io import MANIFEST_FILE, case_name, protect, read_image, read_json, read_label, volume_entry, volume_suffix
from .io import write_json_atomic  # noqa: F401 (the engine's JSON writer, long imported from here)
from .sparse import NOT_ANNOTATED, annotated_slices, contiguous_classes, describe_values
from .manifest_schema import ROLES, SCHEMA_VERSION, case_name_problem, validate_manifest  # noqa: F401

MANIFEST_NAME = MANIFEST_FILE


@dataclass
class Case:
    name: str
    image: str
    label: str | None = None
    role: str = "unlabeled"

    def to_dict(self) -> dict:
        return {"name": self.name, "image": self.image, "label": self.label, "role": self.role}


@dataclass
class Project:
    root: Path
    cases: list = field(default_factory=list)
    classes: list = field(default_factory=lambda: ["background", "foreground"])
    name: str = ""
    created: str = ""
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ paths
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    def resolve(self, rel: str | None) -> Path | None:
        if rel is None:
            return None
        p = Path(rel)
        return p if p.is_absolute() else (self.root / p)

    def relative(self, path: "str | os.PathLike") -> str:
        p = Path(path).resolve()
        try:
            return p.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(p)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def case(self, name: str) -> Case:
        for c in self.cases:
            if c.name == name:
                return c
        raise SFRError(f"no case named {name!r}", self.manifest_path)

    def by_role(self, role: str) -> list:
        return [c for c in self.cases if c.role == role]

    def image_path(self, case: Case) -> Path:
        return self.resolve(case.image)

    def label_path(self, case: Case) -> Path | None:
        return self.resolve(case.label)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        d = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name or self.root.name,
            "created": self.created,
            "classes": list(self.classes),
            "cases": [c.to_dict() for c in self.cases],
        }
        d.update(self.extra)
        return d

    def save(self) -> Path:
        write_json_atomic(self.manifest_path, self.to_dict(), manifest=True)
        return self.manifest_path

    def summary(self) -> dict:
        counts = {r: len(self.by_role(r)) for r in ROLES}
        return {
            "project": str(self.root),
            "name": self.name or self.root.name,
            "schema_version": SCHEMA_VERSION,
            "classes": list(self.classes),
            "cases": len(self.cases),
            **counts,
            "with_ground_truth": sum(1 for c in self.cases if c.role != "labeled" and c.label),
        }


def load_project(root: "str | os.PathLike") -> Project:
    """Load and validate ``root/sfr-project.json`` (``root`` may also be the manifest file itself).

    The project's images and labels become inputs of this process: no writer replaces them.
    """
    root = Path(root)
    path = root if root.name == MANIFEST_NAME else root / MANIFEST_NAME
    if not path.exists():
        raise SFRError(f"not an SFR project (no {MANIFEST_NAME}; create one with 'sfr init')", path.parent)
    if path.is_dir():
        raise SFRError("is a folder, expected the project manifest file", path)
    data = read_json(path, "manifest")
    validate_manifest(data, path)
    cases = [Case(c["name"], c["image"], c.get("label"), c.get("role", "unlabeled")) for c in data.get("cases", [])]
    known = {"schema_version", "name", "created", "classes", "cases"}
    project = Project(
        root=path.parent,
        cases=cases,
        classes=list(data.get("classes", ["background", "foreground"])),
        name=data.get("name") or "",
        created=data.get("created") or "",
        extra={k: v for k, v in data.items() if k not in known},
    )
    for c in cases:
        protect([project.image_path(c)], f"the image of case {c.name!r}")
        if c.label:
            protect([project.label_path(c)], f"the label of case {c.name!r}")
    return project


# --------------------------------------------------------------------------- sfr init


def _scan(folder: Path, what: str) -> dict:
    if not folder.exists():
        raise SFRError(f"{what} folder not found", folder)
    if not folder.is_dir():
        raise SFRError(f"{what} path is not a folder", folder)
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not volume_entry(p):  # a folder or looping link named like a volume: one line
            continue
        name = case_name(p)
        if name in found:
            raise SFRError(
                f"duplicate case name {name!r} ({found[name].name} and {p.name})", folder
            )
        found[name] = p
    if not found:
        raise SFRError(
            f"{what} folder holds no volumes (expected files ending in "
            ".nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd or .seg.nrrd)",
            folder,
        )
    return found


def _read_case_list(path: Path) -> list:
    if not path.exists():
        raise SFRError("case list not found", path)
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(case_name(line.split("/")[-1]) if volume_suffix(line) else line)
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SFRError(f"duplicate case names in list: {', '.join(sorted(dup))}", path)
    if not names:
        raise SFRError("case list is empty", path)
    return names


def parse_classes(spec: "str | None", labels: Iterable[int] = ()) -> list:
    """``"3"`` -> 3 generic names; ``"bg,liver"`` -> names; None -> inferred from labels."""
    if spec is None:
        top = max([1, *labels])
        return ["background"] + [f"class_{i}" for i in range(1, top + 1)]
    spec = spec.strip()
    if spec.isdigit():
        n = int(spec)
        if n < 2:
            raise SFRError(f"--classes needs at least 2 classes (background included), got {n}")
        return ["background"] + [f"class_{i}" for i in range(1, n)]
    names = [s.strip() for s in spec.split(",")]
    if any(not n for n in names):
        raise SFRError(f"--classes {spec!r} has an empty name: give names separated by single commas, background first")
    if len(names) < 2:
        raise SFRError("--classes needs at least 2 names, background first")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SFRError(f"--classes names must be unique; given more than once: {', '.join(twice)}")
    return names


def check_label_values(case: Case, array, path) -> list:
    """The values of ``case``'s label; a labeled case must be annotated somewhere and show the
    structure; 255 ("not annotated") belongs to labeled cases only."""
    values = [int(v) for v in np.unique(array)]
    if case.role != "labeled":
        if NOT_ANNOTATED in values:
            raise SFRError(
                f"label value {NOT_ANNOTATED} (not annotated) in the label of {case.role} case {case.name!r}: "
                "only a labeled case may be annotated on some slices", path)
        return values
    if annotated_slices(array) == 0:
        raise SFRError(f"the label of case {case.name!r} has no annotated slice (every voxel is "
                       f"{NOT_ANNOTATED}, not annotated): annotate a slice, or leave the case unlabeled", path)
    if not any(0 < v < NOT_ANNOTATED for v in values):
        raise SFRError(
            f"the label of case {case.name!r} is empty (all background): a labeled case must "
            "show the structure; draw it, or leave the case unlabeled",
            path,
        )
    return values


def _infer_classes(found: dict) -> list:
    """Classes 0..K-1 from the labels' values (a value after a gap, e.g. a stray 200, is refused)."""
    k, stray = contiguous_classes(v for values in found.values() for v in values)
    for path, values in found.items():
        bad = [v for v in values if v in stray]
        if bad:
            raise SFRError(
                f"label values {describe_values(bad)} are not classes: classes are 0..{k - 1} without a gap, "
                f"and {NOT_ANNOTATED} marks voxels not annotated; relabel, or declare --classes", path)
    return parse_classes(None, [k - 1])


def init_project(
    root: "str | os.PathLike",
    images: "str | os.PathLike",
    labels: "str | os.PathLike | None" = None,
    cases: "str | os.PathLike | None" = None,
    labeled: int | None = None,
    validation: int = 0,
    classes: str | None = None,
    force: bool = False,
    progress=None,
) -> Project:
    """Create ``root/sfr-project.json`` from an images folder and an optional labels folder.

    Cases are matched by name; ``cases`` (a file, one name per line) gives their order and
    selects them; ``labeled`` keeps only the first N labeled; ``validation`` makes the last N
    cases validation cases.  Every image and label is read and validated (geometry, finite
    intensities, integer labels within the classes) before anything is written.
    """
    root = Path(root)
    manifest = root / MANIFEST_NAME
    if manifest.exists() and not force:
        raise SFRError("project already exists; use --force to replace its manifest", manifest)
    if root.exists() and not root.is_dir():
        raise SFRError("project path exists and is not a folder", root)
    image_files = _scan(Path(images), "images")
    label_files = _scan(Path(labels), "labels") if labels is not None else {}
    orphans = sorted(set(label_files) - set(image_files))
    if orphans:
        raise SFRError(
            f"labels without a matching image: {', '.join(orphans[:5])}"
            + (" ..." if len(orphans) > 5 else ""),
            labels,
        )
    if cases is not None:
        order = _read_case_list(Path(cases))
        missing = [n for n in order if n not in image_files]
        if missing:
            raise SFRError(
                f"cases not found in {images}: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else ""),
                cases,
            )
    else:
        order = list(image_files)
    for name in order:
        problem = case_name_problem(name)
        if problem:
            raise SFRError(f"case name {problem}; rename the file", image_files.get(name, images))
    n = len(order)
    if validation < 0 or validation >= n:
        raise SFRError(f"--validation {validation} must leave at least one training case of {n}")
    if labeled is not None and labeled < 0:
        raise SFRError(f"--labeled must be >= 0, got {labeled}")

    project = Project(root=root, name=root.name, created=utcnow())
    train = order[: n - validation]
    have_labels = [c for c in train if c in label_files]
    keep = set(have_labels if labeled is None else have_labels[:labeled])
    if labeled is not None and labeled > len(have_labels):
        raise SFRError(
            f"--labeled {labeled} asks for more labeled cases than the {len(have_labels)} "
            "training cases that have a label",
            labels,
        )
    for name in order:
        img = image_files[name]
        lab = label_files.get(name)
        if name in train:
            role = "labeled" if name in keep else "unlabeled"
        else:
            role = "validation"
        project.cases.append(
            Case(name, project.relative(img), project.relative(lab) if lab else None, role)
        )

    declared = parse_classes(classes) if classes is not None else None
    found: dict = {}  # label path -> its values
    for i, case in enumerate(project.cases):
        img_path = project.image_path(case)
        lab_path = project.label_path(case)
        image = read_image(img_path)
        if lab_path is not None:
            lab = read_label(lab_path, image, len(declared) if declared else None, sparse=case.role == "labeled")
            found[lab_path] = check_label_values(case, lab.array, lab_path)
        if progress:
            progress(i + 1, len(project.cases), case.name)
    project.classes = declared or _infer_classes(found)
    root.mkdir(parents=True, exist_ok=True)
    project.save()
    return project

