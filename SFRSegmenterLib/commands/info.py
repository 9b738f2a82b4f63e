"""sfr info: summarise a project."""

from __future__ import annotations

import json

from ..manifest import load_project
from ._options import add_json


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="summarise a project")
    p.add_argument("project", help="project folder")
    add_json(p, "the summary and every case")
    p.set_defaults(func=run)


def run(args) -> int:
    project = load_project(args.project)
    summary = project.summary()
    if args.json:
        summary["case_list"] = [c.to_dict() for c in project.cases]
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
        print(f"  {c.name:<{width}}  {c.role:<10}  {c.image}" + (f"  [{c.label}]" if c.label else ""))
    return 0
