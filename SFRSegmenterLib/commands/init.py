"""sfr init: create a project manifest from image and label folders."""

from __future__ import annotations

import argparse

from .. import events
from ..manifest import init_project
from ._options import add_json, print_result


def add_parser(sub) -> None:
    p = sub.add_parser(
        "init",
        help="create PROJECT/sfr-project.json from an images folder (and labels)",
        description="Create a project: cases matched by file name (the name before the "
        "extension), each with its image, its label if any, and its role.",
    )
    p.add_argument("project", help="project folder (created if missing)")
    p.add_argument("--images", required=True, help="folder of image volumes")
    p.add_argument("--labels", help="folder of label volumes named like the images")
    p.add_argument("--case-list", metavar="FILE", help="text file, one case name per line: order and selection")
    # '--cases CASE ...' names cases in other commands; here it was the file (kept, hidden)
    p.add_argument("--cases", dest="case_list", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--labeled", type=int, help="keep only the first N labeled; the rest unlabeled")
    p.add_argument("--validation", type=int, default=0, help="the last N cases are validation cases")
    p.add_argument(
        "--classes",
        help="number of classes with background (e.g. 2) or names, background first "
        "(e.g. background,left_atrium); default: from the labels",
    )
    p.add_argument("--force", action="store_true", help="replace an existing manifest")
    add_json(p, "the summary")
    p.set_defaults(func=run)


def run(args) -> int:
    bar = None

    def progress(i, n, name):
        nonlocal bar
        if bar is None:
            bar = events.Progress("check", n)
        bar.update(i, case=name)

    project = init_project(
        args.project,
        args.images,
        labels=args.labels,
        cases=args.case_list,
        labeled=args.labeled,
        validation=args.validation,
        classes=args.classes,
        force=args.force,
        progress=progress,
    )
    summary = project.summary()
    return print_result(args, summary, f"created {project.manifest_path}: {summary['cases']} cases "
                        f"({summary['labeled']} labeled, {summary['unlabeled']} unlabeled, "
                        f"{summary['validation']} validation), classes {', '.join(project.classes)}")
