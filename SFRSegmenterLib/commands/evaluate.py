"""sfr evaluate: Dice, Jaccard, 95HD and ASD of predictions against ground truth."""

from __future__ import annotations




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
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation import evaluate_folders, format_table  # scipy: only when evaluating
    from ..manifest import write_json_atomic

    from ..io import check_output, protect_folder

    protect_folder(args.pred, "a prediction this command reads")
    protect_folder(args.gt, "a ground-truth label this command reads")
    if args.json:
        check_output(args.json)  # before the work: an input named as output is refused at once
    report = evaluate_folders(args.pred, args.gt)
    print(format_table(report))
    if args.json:
        write_json_atomic(args.json, report)
    return 0
