"""The project manifest ``PROJECT/sfr-project.json``: the contract between Slicer and the engine.

Format (schema version 1)::

    {
      "schema_version": 1,
      "name": "la16",
      "created": "2026-11-27T00:00:00+00:00",
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

import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable


from .errors import SFRError
from .io import case_name, default_file_mode, is_volume_file, read_image, read_label, volume_suffix

MANIFEST_NAME = "sfr-project.json"
SCHEMA_VERSION = 1
ROLES = ("labeled", "unlabeled", "validation")


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
        write_json_atomic(self.manifest_path, self.to_dict())
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


def write_json_atomic(path: "str | os.PathLike", data) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    os.chmod(tmp, default_file_mode())
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_project(root: "str | os.PathLike") -> Project:
    """Load ``root/sfr-project.json`` (``root`` may also be the manifest file itself)."""
    root = Path(root)
    path = root if root.name == MANIFEST_NAME else root / MANIFEST_NAME
    if not path.exists():
        raise SFRError(f"not an SFR project (no {MANIFEST_NAME}; create one with 'sfr init')", path.parent)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SFRError(f"manifest is not valid JSON ({exc})", path) from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise SFRError("manifest has no schema_version", path)
    version = data["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise SFRError(
            f"manifest schema version {version} is newer than this engine supports "
            f"({SCHEMA_VERSION}); upgrade SFR Segmenter",
            path,
        )
    cases = []
    seen = set()
    for i, c in enumerate(data.get("cases", [])):
        try:
            case = Case(c["name"], c["image"], c.get("label"), c.get("role", "unlabeled"))
        except (KeyError, TypeError):
            raise SFRError(f"case #{i + 1} lacks a name or image", path) from None
        if case.role not in ROLES:
            raise SFRError(f"case {case.name!r} has unknown role {case.role!r}", path)
        if case.name in seen:
            raise SFRError(f"duplicate case name {case.name!r}", path)
        seen.add(case.name)
        cases.append(case)
    known = {"schema_version", "name", "created", "classes", "cases"}
    return Project(
        root=path.parent,
        cases=cases,
        classes=list(data.get("classes", ["background", "foreground"])),
        name=data.get("name", ""),
        created=data.get("created", ""),
        extra={k: v for k, v in data.items() if k not in known},
    )


# --------------------------------------------------------------------------- sfr init


def _scan(folder: Path, what: str) -> dict:
    if not folder.exists():
        raise SFRError(f"{what} folder not found", folder)
    if not folder.is_dir():
        raise SFRError(f"{what} path is not a folder", folder)
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not is_volume_file(p):
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
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if len(names) < 2:
        raise SFRError("--classes needs at least 2 names, background first")
    return names


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
    n = len(order)
    if validation < 0 or validation >= n:
        raise SFRError(f"--validation {validation} must leave at least one training case of {n}")
    if labeled is not None and labeled < 0:
        raise SFRError(f"--labeled must be >= 0, got {labeled}")

    project = Project(root=root, name=root.name, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
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

    max_label = 1
    declared = parse_classes(classes) if classes is not None else None
    for i, case in enumerate(project.cases):
        img_path = project.image_path(case)
        lab_path = project.label_path(case)
        image = read_image(img_path)
        if lab_path is not None:
            lab = read_label(lab_path, image, len(declared) if declared else None)
            max_label = max(max_label, int(lab.array.max()))
        if progress:
            progress(i + 1, len(project.cases), case.name)
    project.classes = declared or parse_classes(None, [max_label])
    root.mkdir(parents=True, exist_ok=True)
    project.save()
    return project

