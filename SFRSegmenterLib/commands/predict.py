"""sfr predict: segment image volumes with a re-trained network (sliding window)."""

from __future__ import annotations

import argparse
import json

from ._options import add_device, add_overwrite, add_threads, add_window_batch


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
    add_overwrite(p)
    add_window_arguments(p)
    p.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                   help="keep each class's largest connected component (default: as the run that published "
                   "the model did, from MODEL/postprocess.json; off for other models)")
    p.add_argument("--json", action="store_true", help="print the per-case results as JSON")
    p.set_defaults(func=run)


def add_window_arguments(p) -> None:
    """The sliding-window options of every command that runs a re-trained network over volumes."""
    from ..sliding import DEFAULT_OVERLAP, MAX_OVERLAP, PAPER_STRIDE, PAPER_WINDOW

    step = p.add_mutually_exclusive_group()
    step.add_argument("--overlap", type=_overlap, metavar="F",
                      help=f"windows overlap by this fraction of the window, 0..{MAX_OVERLAP} "
                      f"(default {DEFAULT_OVERLAP:g}: see bench/results/inference_cost.md)")
    # dest "stride_spec": three ints or a preset name, checked by _StrideAction (validate.RULES
    # knows "stride" as integers only); window_images() puts the result in args.stride
    step.add_argument("--stride", nargs="+", action=_StrideAction, metavar="STRIDE", dest="stride_spec",
                      help="window stride D H W in array order, or paper: the paper's LA stride "
                      f"{' '.join(map(str, PAPER_STRIDE))} for its {'x'.join(map(str, PAPER_WINDOW))} window, "
                      "scaled to other windows (slow for small windows)")
    p.add_argument("--window", type=int, nargs=3, metavar=("D", "H", "W"), help="window (default: the training crop)")
    add_window_batch(p, 4)
    add_device(p)
    add_threads(p)


def _overlap(text: str) -> float:
    from ..errors import SFRError
    from ..sliding import check_overlap

    try:
        return check_overlap(text, "value")
    except SFRError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _StrideAction(argparse.Action):
    """``--stride D H W`` (positive integers) or ``--stride paper``."""

    def __call__(self, parser, namespace, values, option_string=None):
        from ..sliding import STRIDE_PRESETS

        if len(values) == 1 and values[0] in STRIDE_PRESETS:
            setattr(namespace, self.dest, values[0])
            return
        try:
            stride = tuple(int(v) for v in values)
        except ValueError:
            stride = ()
        if len(stride) != 3 or min(stride) < 1:
            parser.error(f"argument --stride: three positive integers (D H W) or "
                         f"{' or '.join(STRIDE_PRESETS)}, got {' '.join(values)!r}")
        setattr(namespace, self.dest, stride)


def window_images(args):
    """Apply ``--threads``, check ``--window``, put ``--stride`` or ``--overlap`` into ``args.stride``
    (three ints, ``"paper"`` or an :class:`~..sliding.Overlap`); the image folder or files to run on."""
    import torch

    from ..errors import SFRError
    from ..sliding import Overlap

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.window and any(w < 16 or w % 16 for w in args.window):
        raise SFRError(f"--window {args.window} must be multiples of 16")
    args.stride = Overlap(args.overlap) if args.overlap is not None else args.stride_spec
    return args.images[0] if len(args.images) == 1 else args.images


def run(args) -> int:
    from ..retrain import predict_folder
    from ..shard import is_main_process

    images = window_images(args)
    _check_outputs(images, args.out, args.model, args.overwrite)
    res = predict_folder(args.model, images, args.out, stride=args.stride, device=args.device,
                         window=args.window, batch=args.window_batch, largest_component=args.largest_component)
    if not is_main_process():  # under torchrun only rank 0 reports (every rank has all results)
        return 0
    from .. import events

    if args.json:
        print(json.dumps(res, indent=2))
    elif events.mode() != "json":  # --progress json: stdout holds JSON events only
        for name, r in res.items():
            print(f"{name}: {r['label']} (mean confidence {r['mean_confidence']:.3f}, {r['seconds']:.1f} s)")
    return 0


def guard_outputs(images, out, model, overwrite: bool) -> None:
    """The output rule of ``predict`` and ``review`` (:mod:`..io.outputs`): ``--out`` claimed, the
    projects of the model, the images and the output protected, the images read protected."""
    from ..errors import SFRError
    from ..io import guard_output, protect_folder
    from ..retrain.inference import case_paths

    for image in case_paths(images).values():  # before --out is claimed (made): nothing left behind
        if not image.exists():
            raise SFRError("file not found", image)
    guard_output(out, overwrite, related=[model, *(images if isinstance(images, list) else [images])])
    for item in images if isinstance(images, list) else [images]:
        protect_folder(item, "an input image of this command")
    check_name_lengths(images)


#: The longest suffix an output of ``predict`` or ``review`` adds to a case name.
LONGEST_SUFFIX = "_confidence.nii.gz"


def check_name_lengths(images) -> None:
    """Refuse, naming the image, a case whose output names would not fit a file name (255 bytes),
    before any work (they failed after inference, leaving a label and a temporary file)."""
    import os

    from ..errors import SFRError
    from ..io.guard import NAME_MAX
    from ..retrain.inference import case_paths

    for name, image in case_paths(images).items():
        size = len(os.fsencode(name + LONGEST_SUFFIX))
        if size > NAME_MAX:
            raise SFRError(f"the case name of this image is {len(os.fsencode(name))} bytes; its output "
                           f"{name[:12]}...{LONGEST_SUFFIX} would be {size} bytes, more than the {NAME_MAX} "
                           "a file name holds: rename the image", image)


def _check_outputs(images, out, model, overwrite: bool) -> None:
    """Inputs are sacred: the images read and any project image or label are never an output; in
    ``--out`` only files sfr wrote are replaced (unless ``--overwrite``)."""
    from pathlib import Path

    from ..io import check_outputs, protect
    from ..retrain.inference import case_paths

    guard_outputs(images, out, model, overwrite)
    protect([Path(out) / "model.pt"], "the model this command reads")
    names = case_paths(images)
    check_outputs(Path(out) / f"{name}{suffix}" for name in names for suffix in (".nii.gz", "_confidence.nii.gz"))
