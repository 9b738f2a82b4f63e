"""sfr info: summarise a project."""

from __future__ import annotations

import json

from ..io import read_label
from ..manifest import load_project
from ..sparse import annotated_slices
from ._options import add_json


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="summarise a project")
    p.add_argument("project", help="project folder")
    add_json(p, "the summary and every case")
    p.set_defaults(func=run)


def annotated(project) -> dict:
    """``{labeled case: (annotated axial slices, all slices)}`` (255 = not annotated, :mod:`..sparse`)."""
    out = {}
    for c in project.by_role("labeled"):
        path = project.label_path(c)
        if path is not None and path.exists():
            array = read_label(path).array
            out[c.name] = (annotated_slices(array), int(array.shape[0]))
    return out


def run(args) -> int:
    project = load_project(args.project)
    summary = project.summary()
    slices = annotated(project)
    if args.json:
        summary["case_list"] = [
            {**c.to_dict(), **({"annotated_slices": slices[c.name][0], "slices": slices[c.name][1]}
                               if c.name in slices else {})}
            for c in project.cases
        ]
        print(json.dumps(summary, indent=2))
        return 0
    print(f"project   {summary['project']}")
    print(f"classes   {', '.join(project.classes)}")
    print(
        f"cases     {summary['cases']}: {summary['labeled']} labeled, "
        f"{summary['unlabeled']} unlabeled, {summary['validation']} validation "
        f"({summary['with_ground_truth']} unlabeled/validation with ground truth)"
    )
    width = max(len(c.name) for c in project.cases) if project.cases else 4
    for c in project.cases:
        done = f"  annotated_slices {slices[c.name][0]}/{slices[c.name][1]}" if c.name in slices else ""
        print(f"  {c.name:<{width}}  {c.role:<10}  {c.image}" + (f"  [{c.label}]" if c.label else "") + done)
    return 0
