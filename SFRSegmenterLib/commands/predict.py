"""sfr predict: segment image volumes with a re-trained network (sliding window)."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment volumes with a re-trained 3D network (sliding-window, softmax averaging)",
        description="Writes OUT/<case>.nii.gz (label) and OUT/<case>_confidence.nii.gz (max softmax) "
        "in each image's geometry. Under torchrun (torchrun --nproc_per_node N -m SFRSegmenterLib "
        "predict ...) the images are split over the processes, one GPU each.",
    )
    p.add_argument("--model", required=True, help="model folder (with model.pt) or model.pt itself")
    p.add_argument("--images", required=True, nargs="+", help="folder of images, or image files")
    p.add_argument("--out", required=True, help="output folder")
    add_window_arguments(p)
    p.add_argument("--json", action="store_true", help="print the per-case results as JSON")
    p.set_defaults(func=run)


def add_window_arguments(p) -> None:
    """The sliding-window options of every command that runs a re-trained network over volumes."""
    p.add_argument("--stride", type=int, nargs=3, metavar=("D", "H", "W"),
                   help="window stride in array order (default: the paper's 4 18 18 scaled to the window)")
    p.add_argument("--window", type=int, nargs=3, metavar=("D", "H", "W"), help="window (default: the training crop)")
    p.add_argument("--batch", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--threads", type=int, help="CPU threads for torch")


def window_images(args):
    """Apply ``--threads``, check ``--window``; the image folder or files to run on."""
    import torch

    from ..errors import SFRError

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.window and any(w < 16 or w % 16 for w in args.window):
        raise SFRError(f"--window {args.window} must be multiples of 16")
    return args.images[0] if len(args.images) == 1 else args.images


def run(args) -> int:
    from ..retrain import predict_folder
    from ..shard import is_main_process

    images = window_images(args)
    _check_outputs(images, args.out)
    res = predict_folder(args.model, images, args.out, stride=args.stride, device=args.device,
                         window=args.window, batch=args.batch)
    if not is_main_process():  # under torchrun only rank 0 reports (every rank has all results)
        return 0
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for name, r in res.items():
            print(f"{name}: {r['label']} (mean confidence {r['mean_confidence']:.3f}, {r['seconds']:.1f} s)")
    return 0


def _check_outputs(images, out) -> None:
    """Inputs are sacred: the images read and any project image or label are never an output."""
    from pathlib import Path

    from ..io import check_outputs, protect, protect_folder
    from ..retrain.inference import case_paths

    for item in images if isinstance(images, list) else [images]:
        protect_folder(item, "an input image of this command")
    protect([Path(out) / "model.pt"], "the model this command reads")
    names = case_paths(images)
    check_outputs(Path(out) / f"{name}{suffix}" for name in names for suffix in (".nii.gz", "_confidence.nii.gz"))
