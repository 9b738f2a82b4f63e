"""sfr review: the confidence stage on a folder of images (label, confidence, flagged slices)."""

from __future__ import annotations

import json

from ..shard import is_main_process
from ._options import add_overwrite
from .predict import add_window_arguments, guard_outputs, window_images


def add_parser(sub) -> None:
    p = sub.add_parser(
        "review",
        help="confidence review of volumes with a re-trained 3D network (SFR+ trust, flagged slices)",
        description="Writes OUT/<case>.nii.gz (label), OUT/<case>_confidence.nii.gz (max softmax), "
        "OUT/<case>_lowconf.nii.gz (low-confidence mask) in each image's geometry and OUT/review.json "
        "(case confidence, trusted, flagged slices), as the confidence stage of 'sfr run'. Under torchrun "
        "(torchrun --nproc_per_node N -m SFRSegmenterLib review ...) the images are split over the "
        "processes, one GPU each.",
    )
    from ..confidence import RANKINGS
    from ..run.config import RunConfig as R
    from ._options import with_default

    p.add_argument("--model", required=True, help="model folder (with model.pt) or model.pt itself")
    p.add_argument("--images", required=True, nargs="+", help="folder of images, or image files")
    p.add_argument("--out", required=True, help="output folder")
    add_overwrite(p)
    p.add_argument("--tau", type=float, help=with_default("case confidence threshold for trusted cases", R, "tau"))
    p.add_argument("--flag-k", type=int, metavar="K", help=with_default("flagged slices per case", R, "flag_k"))
    p.add_argument("--voxel-threshold", type=float,
                   help=with_default("voxels near the structure below this confidence form the low-confidence mask", R,
                                     "voxel_threshold"))
    p.add_argument("--ranking", choices=RANKINGS,
                   help=with_default("flagged-slice ranking: mass (expected wrong voxels) or mean", R, "ranking"))
    p.add_argument("--min-structure-mm3", type=float, metavar="MM3",
                   help="a case is trusted only if its predicted structure has at least this volume (default 0)")
    add_window_arguments(p)
    p.add_argument("--json", action="store_true", help="print review.json")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..io import check_output
    from ..review import REVIEW_JSON, review_folder

    images = window_images(args)
    guard_outputs(images, args.out, args.model, args.overwrite)
    check_output(Path(args.out) / REVIEW_JSON)  # before the work
    given = {"tau": args.tau, "k": args.flag_k, "voxel_threshold": args.voxel_threshold,
             "ranking": args.ranking, "min_structure_mm3": args.min_structure_mm3}
    result = review_folder(args.model, images, args.out, device=args.device, window=args.window,
                           stride=args.stride, batch=args.window_batch,
                           **{k: v for k, v in given.items() if v is not None})  # else review's defaults
    if not is_main_process():  # under torchrun only rank 0 reports
        return 0
    from .. import events

    if args.json:
        print(json.dumps(result, indent=2))
    elif events.mode() != "json":  # --progress json: stdout holds JSON events only
        for e in result["cases"]:
            worst = ", ".join(str(s["index"]) for s in e["flagged_slices"]) or "none"
            print(f"{e['case']}: confidence {e['confidence']:.4f} {'trusted' if e['trusted'] else 'review'} "
                  f"(flagged slices {worst})")
        print(f"wrote {len(result['cases'])} review(s) and {args.out}/review.json")
    return 0
