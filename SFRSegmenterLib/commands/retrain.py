"""sfr retrain: re-train a 3D network (V-Net) semi-supervised with SAM pseudo-labels.

Also runs data-parallel: ``torchrun --nproc_per_node N -m SFRSegmenterLib retrain PROJECT ...``.
"""

from __future__ import annotations

import os

from .. import events
from ..manifest import load_project
from ._options import add_overwrite


def add_parser(sub) -> None:
    from ..retrain.config import LA_CROP, PAPER_LR_STEP
    from ..retrain.config import RetrainConfig as C
    from ..retrain.names import AUGMENT_NAMES, NETWORK_NAMES, NORM_NAMES, SSL_NAMES
    from ._options import DEVICE_HELP, add_crop, add_device, add_json, add_seed, add_threads, default, show, with_default

    p = sub.add_parser(
        "retrain",
        help="re-train a 3D network (V-Net) on labeled + unlabeled cases with SAM pseudo-labels",
        description="Semi-supervised re-training (stage R). Batch = labeled + unlabeled crops; loss = "
        "0.5(CE+Dice) on labels + sam-weight * 0.5(CE+Dice) on SAM pseudo-labels + the SSL method's term. "
        "Multi-GPU: run under 'torchrun --nproc_per_node N -m SFRSegmenterLib retrain ...' (the batch is "
        "the global batch, split over the processes).",
    )
    p.add_argument("project", help="project folder")
    p.add_argument("--ssl", choices=SSL_NAMES, default=default(C, "ssl"), help=with_default("SSL method", C, "ssl"))
    p.add_argument("--network", choices=NETWORK_NAMES, default=default(C, "network"),
                   help=with_default("3D network", C, "network"))
    p.add_argument("--no-sam", action="store_true", help="do not use SAM pseudo-labels (plain MT, lower bound, ...)")
    p.add_argument("--sam-weight", type=float, default=default(C, "sam_weight"),
                   help=with_default("weight of the pseudo-label loss", C, "sam_weight"))
    p.add_argument("--pseudo", help="pseudo-label folder (default PROJECT/pseudo)")
    p.add_argument("--unlabeled-cases", nargs="+", metavar="CASE", help="use only these unlabeled cases")
    p.add_argument("--iterations", type=int, default=default(C, "iterations"),
                   help=with_default("training iterations; the consistency ramp-up scales with it, the "
                                     "learning-rate step (--lr-step) does not", C, "iterations"))
    add_crop(p, f"crop in array order, multiples of 16 (default {show(LA_CROP)}, smaller for small volumes)")
    p.add_argument("--batch", type=int, nargs=2, metavar=("LABELED", "UNLABELED"),
                   default=(default(C, "labeled_bs"), default(C, "unlabeled_bs")),
                   help=f"training batch: labeled and unlabeled crops per iteration, global under torchrun "
                   f"(default {default(C, 'labeled_bs')} {default(C, 'unlabeled_bs')})")
    p.add_argument("--lr", type=float, default=default(C, "lr"), help=with_default("SGD learning rate", C, "lr"))
    p.add_argument("--lr-step", type=int,
                   help=f"multiply lr by {show(default(C, 'lr_gamma'))} every N iterations (default {PAPER_LR_STEP}, "
                   "the paper's, not scaled with --iterations)")
    p.add_argument("--norm", choices=NORM_NAMES, default=default(C, "norm"),
                   help=with_default("normalisation layers", C, "norm"))
    p.add_argument("--dropout", type=float, default=default(C, "dropout"),
                   help=with_default("dropout probability", C, "dropout"))
    p.add_argument("--augment", choices=AUGMENT_NAMES, default=default(C, "augment"),
                   help=with_default("spatial augmentation: rotflip (the paper's 90-degree rotations and flips), "
                                     "crop (random crops only), auto (crop when the project has several "
                                     "structures, else rotflip)", C, "augment"))
    add_seed(p, C)
    add_device(p, help=DEVICE_HELP + " (under torchrun: cuda uses LOCAL_RANK)")
    add_threads(p)
    p.add_argument("--save-every", type=int, default=default(C, "save_every"),
                   help=with_default("checkpoint every N iterations (0: only at the end)", C, "save_every"))
    p.add_argument("--out", help="output folder (default PROJECT/models/vnet)")
    add_overwrite(p)
    p.add_argument("--sam-model", metavar="DIR",
                   help="the SAM model folder the pseudo-labels must come from; they are refused as stale if "
                        "another model made them or it was saved again since (default PROJECT/models/sam "
                        "when a model is there)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    add_json(p, "the model folder and file")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..retrain import RetrainConfig, retrain
    from ._options import print_result

    if int(os.environ.get("RANK", "0")) > 0:
        events.configure("none")
    project = load_project(args.project)
    if args.out:  # a folder of the user's choosing: replaced only if sfr wrote it (or --overwrite)
        from ..io import guard_output

        guard_output(args.out, args.overwrite, related=[project.root])
    cfg = RetrainConfig(
        network=args.network,
        ssl=args.ssl,
        use_sam=not args.no_sam,
        sam_weight=args.sam_weight,
        iterations=args.iterations,
        crop=tuple(args.crop) if args.crop else None,
        labeled_bs=args.batch[0],
        unlabeled_bs=args.batch[1],
        lr=args.lr,
        lr_step=args.lr_step,
        norm=args.norm,
        dropout=args.dropout,
        augment=args.augment,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        save_every=args.save_every,
    )
    from .. import project_folders

    out = retrain(
        project, cfg, out_dir=args.out or project_folders.vnet_dir(project),
        pseudo_dir=(args.pseudo or project_folders.pseudo_dir(project)) if cfg.use_sam else None,
        sam_model_dir=args.sam_model or project_folders.existing_sam_model(project),
        resume=args.resume, unlabeled_cases=args.unlabeled_cases,
    )
    return print_result(args, {"model_dir": str(out), "model": str(out / "model.pt")}, f"wrote {out / 'model.pt'}")
