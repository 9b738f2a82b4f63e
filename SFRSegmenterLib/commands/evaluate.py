"""sfr evaluate: Dice, Jaccard, 95HD and ASD of predictions against ground truth."""

from __future__ import annotations

import json

from ._options import add_overwrite

def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predicted label maps against ground truth (files matched by name)",
        description="Dice and Jaccard (%% in the table), 95%% Hausdorff distance and average "
        "surface distance in mm and voxels, equal to medpy.metric.binary. Distances of an "
        "empty mask are reported as null with a reason.",
    )
    p.add_argument("--pred", required=True, help="folder of predicted label maps")
    p.add_argument("--gt", required=True, help="folder of ground-truth label maps")
    p.add_argument("--out", metavar="FILE", help="write the report as JSON to FILE (the table is printed too)")
    # --json prints, as in every command; '--json FILE' (its old meaning here) still writes FILE
    p.add_argument("--json", nargs="?", const=True, default=False, metavar="FILE",
                   help="print the report as JSON on stdout instead of the table ('--json FILE', the old "
                   "form, writes FILE like --out)")
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation import evaluate_folders, format_table  # scipy: only when evaluating
    from ..io import check_output, guard_output, protect_folder
    from ..manifest import write_json_atomic

    out = args.out or (args.json if isinstance(args.json, str) else None)
    if args.out and isinstance(args.json, str):
        from ..errors import SFRError

        raise SFRError("--json FILE is the old spelling of --out FILE; give one of them")
    protect_folder(args.pred, "a prediction this command reads")
    protect_folder(args.gt, "a ground-truth label this command reads")
    if out:
        guard_output(out, args.overwrite, file=True, related=[args.pred, args.gt])
        check_output(out)  # before the work: an input named as output is refused at once
    report = evaluate_folders(args.pred, args.gt)
    if args.json is True:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    if out:
        write_json_atomic(out, report)
    return 0
