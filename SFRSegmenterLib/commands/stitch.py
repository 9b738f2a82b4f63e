"""sfr stitch: show how a volume is stitched into mosaics (PNG + plan as JSON)."""

from __future__ import annotations

from ..errors import SFRError
from ..sam import BACKBONES
from ..io import check_output, guard_output, protect, read_image, read_label
from ..stitching import IGNORE_INDEX, make_plan, stitch
from ..visual import overlay_rgb, save_png, side_by_side, to_uint8
from ._options import add_json, add_overwrite, print_result


def add_parser(sub) -> None:
    p = sub.add_parser(
        "stitch",
        help="stitch a volume into a mosaic PNG and print the stitching plan",
        description="Lay the axial slices of VOLUME out on the backbone's canvas, row by row. "
        "Several canvases (slabs) are written side by side.",
    )
    p.add_argument("volume", help="image volume")
    p.add_argument("--label", help="label volume: outlined in colour on the mosaic")
    canvases = ", ".join(f"{name} {spec.canvas}" for name, spec in BACKBONES.items() if not spec.test_only)
    p.add_argument("--canvas", type=int, default=BACKBONES["vit_b"].canvas,
                   help=f"canvas side in pixels (default {BACKBONES['vit_b'].canvas}; per backbone: {canvases})")
    p.add_argument("--grid", type=int, nargs=2, metavar=("ROWS", "COLS"), help="fix the grid (slices are scaled to fit)")
    p.add_argument("--scale", type=float, help="in-plane scale of the slices (e.g. 0.5)")
    p.add_argument("--pad", type=int, help="padding per side of each slice in its cell")
    p.add_argument("--out", help="PNG file to write")
    add_overwrite(p)
    add_json(p, "the stitching plan")
    p.set_defaults(func=run)


def run(args) -> int:
    protect([args.volume, args.label], "an input volume of this command")
    if args.out:
        guard_output(args.out, args.overwrite, file=True, related=[args.volume, args.label])
        check_output(args.out)  # before the work: an input named as output is refused at once
    image = read_image(args.volume)
    label = read_label(args.label, image) if args.label else None
    try:
        plan = make_plan(image.shape, args.canvas, grid=args.grid, scale=args.scale, pad=args.pad)
    except ValueError as exc:
        raise SFRError(f"cannot stitch: {exc}", args.volume) from None
    if args.out:
        gray = to_uint8(image.array)
        mosaic = stitch(gray, plan, fill=0)
        labs = stitch(label.array, plan, fill=IGNORE_INDEX, mode="nearest") if label is not None else None
        tiles = [
            overlay_rgb(mosaic[s], None if labs is None else labs[s], ignore=IGNORE_INDEX)
            for s in range(plan.slabs)
        ]
        save_png(side_by_side(tiles), args.out)
    return print_result(args, plan.to_dict(), lambda: (
        f"{image.shape[0]} slices of {image.shape[1]}x{image.shape[2]} -> {plan.slabs} canvas(es) "
        f"of {plan.canvas}px, grid {plan.rows}x{plan.cols}, cell {plan.cell[0]}x{plan.cell[1]}, "
        f"pad {plan.pad[0]},{plan.pad[1]}" + (f"; wrote {args.out}" if args.out else "")))
