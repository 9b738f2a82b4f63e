"""sfr finetune: LoRA fine-tuning of a SAM-family model on the project's labeled cases."""

from __future__ import annotations

from ..errors import SFRError
from ..manifest import load_project
from ..sam import BACKBONE_NAMES, BACKBONES
from ..sam.config import FinetuneConfig as C
from ..sam.preprocess import METHODS as PREPROCESS_METHODS
from ._options import add_device, add_json, add_overwrite, add_seed, add_threads, default, print_result, with_default


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune SAM (LoRA) on the stitched labeled volumes",
        description="Stage F: stitch each labeled volume into mosaics and fine-tune a SAM-family "
        "model (LoRA on q/v of the image encoder, prompt encoder and mask decoder trained). "
        "Saves the trained parts and metadata into PROJECT/models/sam/ (or --out).",
    )
    p.add_argument("project", help="project folder (with sfr-project.json)")
    p.add_argument("--backbone", choices=list(BACKBONE_NAMES), default=None, help=backbone_help())
    p.add_argument("--tiny-test", action="store_true", help="same as --backbone tiny_test (tests only)")
    p.add_argument("--checkpoint", help="base checkpoint file of the backbone (.pth)")
    p.add_argument("--download", action="store_true",
                   help="download the official SAM ViT-B checkpoint once (needs internet; sha256 checked)")
    p.add_argument("--iterations", type=int, default=default(C, "iterations"),
                   help=with_default("training iterations", C, "iterations"))
    p.add_argument("--batch-size", type=int, default=default(C, "batch_size"),
                   help=with_default("training batch: volume crops per iteration (each stitched into mosaics)",
                                     C, "batch_size"))
    p.add_argument("--lora-rank", type=int, default=default(C, "lora_rank"),
                   help=with_default("LoRA rank (0: frozen encoder)", C, "lora_rank"))
    p.add_argument("--lr", type=float, default=default(C, "lr"), help=with_default("AdamW learning rate", C, "lr"))
    add_seed(p, C)
    p.add_argument("--save-every", type=int, default=default(C, "save_every"),
                   help=with_default("save every N iterations", C, "save_every"))
    p.add_argument("--crop", type=int, nargs=3, metavar=("D", "H", "W"),
                   help="training crop = inference window in voxels (default per backbone)")
    p.add_argument("--grid", type=int, nargs=2, metavar=("ROWS", "COLS"),
                   help="mosaic grid on the canvas (default per backbone)")
    p.add_argument("--native-grid", action="store_true",
                   help="keep slices at native resolution and choose the grid automatically")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast (auto: on CUDA only)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute encoder activations in the backward pass (less GPU memory)")
    p.add_argument("--orientation-augment", action="store_true",
                   help="the paper's 90-degree rotations and flips of volume and mosaic (default off: the "
                   "project's volumes share one orientation, and these make anterior/posterior or left/right "
                   "structures look alike)")
    p.add_argument("--preprocess", choices=PREPROCESS_METHODS, default=None,
                   help="intensity normalisation (default: the backbone's; rank = histogram equalisation)")
    add_threads(p)
    add_device(p)
    p.add_argument("--out", help="model folder (default PROJECT/models/sam)")
    add_overwrite(p)
    p.add_argument("--resume", action="store_true", help="continue from the last save in the model folder")
    add_json(p, "the model metadata summary")
    p.set_defaults(func=run)


def backbone_help() -> str:
    """The backbones and where each one's weights come from, from the registry."""
    default_name = default(C, "backbone")

    def where(spec) -> str:
        if spec.test_only:
            return "tests only"
        if spec.bundled:
            return f"bundled weights, pip extra [{spec.install}]"
        return "needs --checkpoint or a cached official file" + ("; --download fetches it" if spec.downloadable else "")

    return "; ".join(f"{name}{' (default)' if name == default_name else ''}: {spec.description} ({where(spec)})"
                     for name, spec in BACKBONES.items())


def run(args) -> int:
    from ..finetune import FinetuneConfig, finetune, read_model_meta  # torch: imported only when used

    if args.tiny_test and args.backbone not in (None, "tiny_test"):
        raise SFRError("--tiny-test conflicts with --backbone " + args.backbone)
    if args.grid and args.native_grid:
        raise SFRError("--grid conflicts with --native-grid")
    backbone = "tiny_test" if args.tiny_test else (args.backbone or default(C, "backbone"))
    cfg = FinetuneConfig(
        backbone=backbone,
        checkpoint=args.checkpoint,
        download=args.download,
        iterations=args.iterations,
        batch_size=args.batch_size,
        lora_rank=args.lora_rank,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        save_every=args.save_every,
        crop=tuple(args.crop) if args.crop else None,
        grid="native" if args.native_grid else (tuple(args.grid) if args.grid else None),
        bf16={"auto": None, "on": True, "off": False}[args.bf16],
        grad_checkpointing=args.grad_checkpointing,
        orientation_augment=args.orientation_augment,
        preprocess=args.preprocess,
        threads=args.threads,
    )
    project = load_project(args.project)
    if args.out:  # a folder of the user's choosing: replaced only if sfr wrote it (or --overwrite)
        from ..io import guard_output

        guard_output(args.out, args.overwrite, related=[project.root])
    from .. import project_folders

    out = finetune(project, cfg, out_dir=args.out or project_folders.sam_model_dir(project), resume=args.resume)
    meta = read_model_meta(out)
    summary = {
        "model_dir": str(out),
        "model_id": meta["model_id"],
        "backbone": meta["backbone"],
        "iterations": meta["iterations_done"],
        "final_loss": meta["loss_curve"][-1] if meta["loss_curve"] else None,
        "layout": meta["layout"],
    }
    return print_result(args, summary, f"fine-tuned {meta['backbone']} for {meta['iterations_done']} iterations "
                        f"(final loss {summary['final_loss']}); model {meta['model_id']} in {out}")
