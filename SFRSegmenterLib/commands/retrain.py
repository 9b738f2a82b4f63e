"""sfr retrain: re-train a 3D network (V-Net) semi-supervised with SAM pseudo-labels.

Also runs data-parallel: ``torchrun --nproc_per_node N -m SFRSegmenterLib retrain PROJECT ...``.
"""

from __future__ import annotations

import json
import os

from .. import events
from ..manifest import load_project


def add_parser(sub) -> None:
    from ..retrain.names import AUGMENT_NAMES, NETWORK_NAMES, NORM_NAMES, SSL_NAMES

    p = sub.add_parser(
        "retrain",
        help="re-train a 3D network (V-Net) on labeled + unlabeled cases with SAM pseudo-labels",
        description="Semi-supervised re-training (stage R). Batch = labeled + unlabeled crops; loss = "
        "0.5(CE+Dice) on labels + sam-weight * 0.5(CE+Dice) on SAM pseudo-labels + the SSL method's term. "
        "Multi-GPU: run under 'torchrun --nproc_per_node N -m SFRSegmenterLib retrain ...' (the batch is "
        "the global batch, split over the processes).",
    )
    p.add_argument("project", help="project folder")
    p.add_argument("--ssl", choices=SSL_NAMES, default="mean_teacher", help="SSL method (default mean_teacher)")
    p.add_argument("--network", choices=NETWORK_NAMES, default="vnet", help="3D network (default vnet)")
    p.add_argument("--no-sam", action="store_true", help="do not use SAM pseudo-labels (plain MT, lower bound, ...)")
    p.add_argument("--sam-weight", type=float, default=1.0, help="weight of the pseudo-label loss (default 1)")
    p.add_argument("--pseudo", help="pseudo-label folder (default PROJECT/pseudo)")
    p.add_argument("--unlabeled-cases", nargs="+", metavar="CASE", help="use only these unlabeled cases")
    p.add_argument("--iterations", type=int, default=6000, help="training iterations (default 6000; "
                   "lr step and consistency ramp-up scale with it)")
    p.add_argument("--crop", type=int, nargs=3, metavar=("D", "H", "W"),
                   help="crop in array order, multiples of 16 (default 80 112 112, smaller for small volumes)")
    p.add_argument("--batch", type=int, nargs=2, metavar=("LABELED", "UNLABELED"), default=(2, 2),
                   help="global batch: labeled and unlabeled crops (default 2 2)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    p.add_argument("--lr-step", type=int, help="multiply lr by 0.1 every N iterations (default 2500, not scaled with --iterations)")
    p.add_argument("--norm", choices=NORM_NAMES, default="batchnorm", help="normalisation layers (default batchnorm)")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout probability (default 0.5)")
    p.add_argument("--augment", choices=AUGMENT_NAMES, default="auto",
                   help="spatial augmentation: rotflip (the paper's 90-degree rotations and flips), crop "
                   "(random crops only), auto (crop when the project has several structures, else rotflip)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (under torchrun: cuda uses LOCAL_RANK)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N iterations (default 500)")
    p.add_argument("--out", help="output folder (default PROJECT/models/vnet)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..retrain import RetrainConfig, retrain

    if int(os.environ.get("RANK", "0")) > 0:
        events.configure("none")
    project = load_project(args.project)
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
    out = retrain(
        project, cfg, pseudo_dir=args.pseudo, out_dir=args.out, resume=args.resume,
        unlabeled_cases=args.unlabeled_cases,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        if args.json:
            print(json.dumps({"model_dir": str(out), "model": str(out / "model.pt")}, indent=2))
        else:
            print(f"wrote {out / 'model.pt'}")
    return 0
