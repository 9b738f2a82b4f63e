"""How much SAM's pseudo-labels depend on where its sliding windows fall (LA, stage F, CPU).

    OMP_NUM_THREADS=1 python bench/sam_windows.py compare --old DIR --new DIR [--gt DIR]
    OMP_NUM_THREADS=1 python bench/sam_windows.py overlap --model DIR --cases N [--overlaps 0 0.25 0.5]

* ``compare``: two pseudo-label folders of the same SAM model made with two window-position rules
  (``bench/la_half.py`` before and after the 2026-12-01 sliding-window change): Dice of each against
  the ground truth of the half-resolution LA data, and their agreement (Dice between the two).
* ``overlap``: one model's Dice against the full-resolution ground truth on the first N unlabeled
  cases of train.list (N = 1 split) at several window overlaps, with the seconds per case.

Results: ``bench/results/sam_windows.{json,md}`` (each mode fills its part; the other is kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

RESULTS = REPO / "bench" / "results"


def _mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) == 1


def compare(old: Path, new: Path, gt: Path) -> dict:
    from SFRSegmenterLib.metrics import dice

    names = sorted(json.loads((new / "pseudo-labels.json").read_text())["cases"])
    rows = []
    for n in names:
        a, b, g = _mask(old / f"{n}.nii.gz"), _mask(new / f"{n}.nii.gz"), _mask(gt / f"{n}.nii.gz")
        rows.append({"case": n, "dice_old": float(dice(a, g)), "dice_new": float(dice(b, g)), "agreement": float(dice(a, b))})
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    return {"old": str(old), "new": str(new), "cases": rows, "mean_dice_old": mean("dice_old"),
            "mean_dice_new": mean("dice_new"), "mean_agreement": mean("agreement"),
            "agreement_range": [min(r["agreement"] for r in rows), max(r["agreement"] for r in rows)]}


def overlap(model_dir: Path, n_cases: int, overlaps: list) -> dict:
    import torch

    import la_half
    from SFRSegmenterLib.io import read_image
    from SFRSegmenterLib.metrics import dice
    from SFRSegmenterLib.pseudolabel import load_sam_model, predict_probabilities

    torch.set_num_threads(1)
    names = (la_half.LA / "train.list").read_text().split()[1:1 + n_cases]
    model = load_sam_model(model_dir, "cpu")
    rows = []
    for n in names:
        image = read_image(la_half.LA / "images" / f"{n}.nii.gz")
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(la_half.LA / "labels" / f"{n}.nii.gz"))) > 0
        for ov in overlaps:
            t0 = time.monotonic()
            prob = predict_probabilities(model, image, overlap=ov)
            rows.append({"case": n, "overlap": ov, "dice": float(dice(prob[1] > 0.5, gt)),
                         "seconds": round(time.monotonic() - t0, 1)})
            print(rows[-1], flush=True)
    by = {ov: [r for r in rows if r["overlap"] == ov] for ov in overlaps}
    return {"model": str(model_dir), "cases": rows,
            "mean": {str(ov): {"dice": float(np.mean([r["dice"] for r in rs])),
                               "seconds": float(np.mean([r["seconds"] for r in rs]))} for ov, rs in by.items()}}


def write(result: dict) -> None:
    lines = ["# SAM's pseudo-labels and where its windows fall (LA, LiteMedSAM, frozen encoder, CPU)", ""]
    c = result.get("compare")
    if c:
        lines += ["## Two window-position rules, same model (N = 1, seed 1337)", "",
                  f"{len(c['cases'])} unlabeled cases, half-resolution LA grid (`bench/la_half.py`), windows without "
                  "overlap. Old rule: positions spread evenly (before 2026-12-01); new rule: the one sliding-window "
                  "rule of `sliding.py` (stride steps, last window flush with the end).", "",
                  "| | Dice % vs ground truth |", "|---|---|",
                  f"| old rule | {100 * c['mean_dice_old']:.2f} |", f"| new rule | {100 * c['mean_dice_new']:.2f} |",
                  f"| agreement of the two (Dice %) | {100 * c['mean_agreement']:.1f} (range "
                  f"{100 * c['agreement_range'][0]:.1f}-{100 * c['agreement_range'][1]:.1f}) |", ""]
    o = result.get("overlap")
    if o:
        k = len({r["case"] for r in o["cases"]})
        lines += ["## Window overlap, one model (N = 1, seed 1337)", "",
                  f"First {k} unlabeled cases of train.list, full resolution, one thread on a loaded machine "
                  "(times are only relative).", "", "| overlap | mean Dice % | per case | s per case |", "|---|---|---|---|"]
        for ov, m in o["mean"].items():
            per = " / ".join(f"{100 * r['dice']:.1f}" for r in o["cases"] if str(r["overlap"]) == ov)
            lines.append(f"| {ov} | {100 * m['dice']:.2f} | {per} | {m['seconds']:.0f} |")
        lines += ["", "One model and a handful of cases: a lead, not a measurement to set a default by."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sam_windows.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "sam_windows.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--old", required=True)
    c.add_argument("--new", required=True)
    c.add_argument("--gt", default="/tmp/sfr_la_half/data/labels", help="half-resolution labels (bench/la_half.py data)")
    o = sub.add_parser("overlap")
    o.add_argument("--model", required=True)
    o.add_argument("--cases", type=int, default=4)
    o.add_argument("--overlaps", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    o.add_argument("--from-json", help="take the rows of an earlier run of this mode instead of predicting")
    args = ap.parse_args(argv)
    path = RESULTS / "sam_windows.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    if args.mode == "compare":
        result["compare"] = compare(Path(args.old), Path(args.new), Path(args.gt))
    elif args.from_json:
        result["overlap"] = json.loads(Path(args.from_json).read_text())
    else:
        result["overlap"] = overlap(Path(args.model), args.cases, args.overlaps)
    write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
