"""sfr pseudolabel: whole-volume pseudo-labels and confidence maps from the fine-tuned SAM."""

from __future__ import annotations

from ..manifest import load_project
from ._options import add_device, add_json, add_overwrite, add_threads, add_window_batch, print_result


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pseudolabel",
        help="pseudo-label the unlabeled cases with the fine-tuned SAM",
        description="Run the fine-tuned SAM over every unlabeled case (whole volume, "
        "overlapping windows averaged) and write DIR/<case>.nii.gz (label), "
        "DIR/<case>_confidence.nii.gz (max softmax probability) and DIR/pseudo-labels.json. "
        "Under torchrun (torchrun --nproc_per_node N -m SFRSegmenterLib pseudolabel ...) the cases are "
        "split over the processes, one GPU each.",
    )
    p.add_argument("project", help="project folder (with sfr-project.json)")
    p.add_argument("--out", help="output folder (default PROJECT/pseudo)")
    add_overwrite(p)
    p.add_argument("--model", help="fine-tuned model folder (default PROJECT/models/sam)")
    p.add_argument("--cases", nargs="+", metavar="CASE", help="only these cases (default: every unlabeled case)")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction in [0, 1) (default 0.25)")
    add_window_batch(p, 4)
    add_threads(p)
    add_device(p)
    add_json(p, "the per-case records")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pseudolabel import pseudolabel  # torch: imported only when used

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from .. import project_folders

    project = load_project(args.project)
    if args.out:  # a folder of the user's choosing: replaced only if sfr wrote it (or --overwrite)
        from ..io import guard_output

        guard_output(args.out, args.overwrite, related=[project.root, args.model])
    results = pseudolabel(
        project,
        model_dir=args.model or project_folders.sam_model_dir(project),
        out_dir=args.out or project_folders.pseudo_dir(project),
        cases=args.cases,
        device=args.device,
        overlap=args.overlap,
        batch_size=args.window_batch,
    )
    return print_result(args, results, lambda: "\n".join(
        [f"{name}: mean confidence {rec['mean_confidence']:.4f} -> {rec['label']}, {rec['confidence']}"
         for name, rec in results.items()] + [f"wrote {len(results)} pseudo-label(s)"]))
