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
from .io import (
    case_name,
    check_output,
    default_file_mode,
    protect,
    read_image,
    read_label,
    volume_entry,
    volume_suffix,
)

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


def write_json_atomic(path: "str | os.PathLike", data, manifest: bool = False) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (all or nothing).

    Refused (:func:`~SFRSegmenterLib.io.check_output`) when ``path`` is an input: a project's
    image or label, a file the command reads, or a manifest (``manifest=True``: its own writer).
    """
    path = Path(path)
    check_output(path, manifest=manifest)
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


#: Longest case name accepted (output names add suffixes such as ``_confidence.nii.gz``).
MAX_CASE_NAME = 200


def case_name_problem(name) -> str | None:
    """Why ``name`` cannot be a case name (it becomes a file name), or None when it is file-safe."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if name in (".", ".."):
        return f"{name!r} is not a file name"
    if "/" in name or "\\" in name:
        return f"{name!r} contains a path separator"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return f"{name!r} contains a control character"
    if name != name.strip():
        return f"{name!r} starts or ends with a space"
    if len(name) > MAX_CASE_NAME:
        return f"is longer than {MAX_CASE_NAME} characters"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_manifest(data, path: Path) -> None:
    """Check a parsed manifest as a whole; SFRError naming the manifest and the first bad field."""

    def bad(field_name: str, problem: str):
        raise SFRError(f"{field_name}: {problem}", path)

    if not isinstance(data, dict):
        bad("manifest", f"expected a JSON object, got {type(data).__name__}")
    if "schema_version" not in data:
        bad("schema_version", "missing")
    version = data["schema_version"]
    if not _is_int(version):
        bad("schema_version", f"must be an integer, got {json.dumps(version)}")
    if version > SCHEMA_VERSION:
        bad("schema_version", f"version {version} is newer than this engine supports ({SCHEMA_VERSION}); "
            "upgrade SFR Segmenter")
    if version < 1:
        bad("schema_version", f"must be >= 1, got {version}")
    for key in ("name", "created"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            bad(key, f"must be a string, got {json.dumps(data[key])[:60]}")
    classes = data.get("classes", ["background", "foreground"])
    if not isinstance(classes, list) or len(classes) < 2:
        bad("classes", "must be a list of at least 2 class names, background first")
    for i, c in enumerate(classes):
        if not isinstance(c, str) or not c.strip():
            bad(f"classes[{i}]", f"must be a non-empty string, got {json.dumps(c)[:60]}")
    if len(set(classes)) != len(classes):
        bad("classes", "class names must be unique")
    cases = data.get("cases", [])
    if not isinstance(cases, list):
        bad("cases", f"must be a list, got {type(cases).__name__}")
    seen = set()
    for i, c in enumerate(cases):
        where = f"cases[{i}]"
        if not isinstance(c, dict):
            bad(where, f"must be an object, got {json.dumps(c)[:60]}")
        problem = case_name_problem(c.get("name"))
        if problem:
            bad(f"{where}.name", problem)
        where = f"cases[{i}] ({c['name']!r})"
        for key in ("image", "label"):
            value = c.get(key)
            if key == "label" and value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                bad(f"{where}.{key}", f"must be a file path, got {json.dumps(value)[:60]}")
            if "\x00" in value:
                bad(f"{where}.{key}", "contains a NUL character")
        role = c.get("role", "unlabeled")
        if role not in ROLES:
            bad(f"{where}.role", f"unknown role {json.dumps(role)[:60]} (one of {', '.join(ROLES)})")
        if role == "labeled" and c.get("label") is None:
            bad(f"{where}.label", "a labeled case needs a label file (or make its role unlabeled)")
        if c["name"] in seen:
            bad(f"{where}.name", "duplicate case name")
        seen.add(c["name"])


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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SFRError(f"manifest is not valid JSON ({str(exc)[:120]})", path) from None
    except OSError as exc:
        raise SFRError(f"cannot read the manifest ({exc.strerror or exc})", path) from None
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
    for name in order:
        problem = case_name_problem(name)
        if problem:
            raise SFRError(f"case name {problem}; rename the file", image_files.get(name, images))
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
            if case.role == "labeled" and not lab.array.any():
                raise SFRError(
                    f"the label of case {case.name!r} is empty (all background): a labeled case must "
                    "show the structure; draw it, or leave the case unlabeled",
                    lab_path,
                )
        if progress:
            progress(i + 1, len(project.cases), case.name)
    project.classes = declared or parse_classes(None, [max_label])
    root.mkdir(parents=True, exist_ok=True)
    project.save()
    return project

