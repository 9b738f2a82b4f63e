"""Ablations on the demo's data (bundled hippocampus sample: 2 labeled, 10 unlabeled with hidden
ground truth), one stage at a time, one thread.

    python bench/demo_ablation.py sam  --name NAME [--cache M] [--iterations N] [--orientation] [--option K=V ...]
    python bench/demo_ablation.py vnet --name NAME [--iterations N] [--augment rotflip|crop] [--option K=V ...]
    python bench/demo_ablation.py table [--work DIR]

``sam``: stage F alone (frozen LiteMedSAM encoder, decoder on M cached mosaics), then SAM's
prediction of the 10 unlabeled cases.  ``vnet``: stage R alone, supervised on the 2 labeled cases
(the demo's slim V-Net, 8 base filters, unless ``--option filters=16``), then its prediction.
Both score Dice per class (1 anterior, 2 posterior), Dice of the whole hippocampus (union), and
predicted / true volume per class.  ``table`` gathers the runs into
``bench/results/demo_ablation.{json,md}``.  One seed per row unless stated: differences under
~5 points are noise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _common import REPO

import numpy as np  # noqa: E402
import torch  # noqa: E402

from SFRSegmenterLib import events  # noqa: E402
from SFRSegmenterLib.io import read_image, read_label  # noqa: E402
from SFRSegmenterLib.manifest import init_project  # noqa: E402
from SFRSegmenterLib.metrics import dice  # noqa: E402

SAMPLE = REPO / "SFRSegmenterLib" / "sample_data" / "hippocampus"


def _score(project, predict) -> tuple:
    rows = []
    for c in project.by_role("unlabeled"):
        img = read_image(project.image_path(c))
        p = predict(img)
        g = read_label(project.label_path(c)).array
        rows.append({"case": c.name, **{f"dice_{k}": float(dice(p == k, g == k)) for k in (1, 2)},
                     "dice_union": float(dice(p > 0, g > 0)),
                     **{f"volume_ratio_{k}": float((p == k).sum() / max(1, (g == k).sum())) for k in (1, 2)}})
    keys = [k for k in rows[0] if k != "case"]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}, rows


def _options(items) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = json.loads(value)
    return out


def run_sam(args, work: Path) -> dict:
    from SFRSegmenterLib.finetune import FinetuneConfig, finetune
    from SFRSegmenterLib.pseudolabel import load_sam_model, predict_probabilities

    project = init_project(work / "project", SAMPLE / "images", SAMPLE / "labels", labeled=2)
    cfg = FinetuneConfig(iterations=args.iterations, lora_rank=0, embedding_cache=args.cache, device="cpu",
                         seed=args.seed, save_every=100000, orientation_augment=args.orientation, **_options(args.option))
    t0 = time.monotonic()
    model_dir = finetune(project, cfg, out_dir=work / "model")
    seconds = time.monotonic() - t0
    model = load_sam_model(model_dir, "cpu")
    mean, rows = _score(project, lambda img: predict_probabilities(model, img, overlap=0.0).argmax(0))
    meta = json.loads((model_dir / "sam-model.json").read_text())
    return {"stage": "sam", "settings": {"cache": args.cache, "iterations": args.iterations, "orientation": args.orientation,
                                         "seed": args.seed, **_options(args.option)},
            "mean": mean, "cases": rows, "train_s": round(seconds, 1), "class_balance": meta.get("class_balance")}


def run_vnet(args, work: Path) -> dict:
    from SFRSegmenterLib.retrain import RetrainConfig, load_model, predict_volume, retrain

    project = init_project(work / "project", SAMPLE / "images", SAMPLE / "labels", labeled=2)
    opts = {"filters": 8, **_options(args.option)}
    cfg = RetrainConfig(ssl="supervised", use_sam=False, iterations=args.iterations, device="cpu", augment=args.augment,
                        seed=args.seed, **opts)
    t0 = time.monotonic()
    model_dir = retrain(project, cfg, out_dir=work / "model")
    seconds = time.monotonic() - t0
    model = load_model(model_dir, "cpu")
    mean, rows = _score(project, lambda img: predict_volume(model, img.array).argmax(0))
    meta = json.loads((model_dir / "meta.json").read_text())
    return {"stage": "vnet", "settings": {"iterations": args.iterations, "augment": args.augment, "seed": args.seed, **opts},
            "mean": mean, "cases": rows, "train_s": round(seconds, 1), "class_balance": meta.get("class_balance")}


def table(work: Path, out: Path) -> None:
    runs = [json.loads(p.read_text()) for p in sorted(work.glob("*/result.json"))]
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_ablation.json").write_text(json.dumps({"benchmark": "demo_ablation", "runs": runs}, indent=1) + "\n")
    lines = ["# Ablations on the demo's data (hippocampus sample, 2 labeled, 10 unlabeled)", "",
             "Each stage alone, one thread, one seed per row (differences under ~5 points are noise). "
             "Dice % per class (1 anterior, 2 posterior), of the whole hippocampus (union), and predicted / "
             "true volume per class. Made with `bench/demo_ablation.py`.", ""]
    for stage, title in (("sam", "Stage F alone (frozen LiteMedSAM encoder, cached mosaics, 300 decoder steps unless stated)"),
                         ("vnet", "Stage R alone (V-Net supervised on the 2 labeled cases, 400 iterations, dropout 0.5 unless stated)")):
        rows = [r for r in runs if r["stage"] == stage]
        if not rows:
            continue
        lines += [f"## {title}", "", "| run | settings | class 1 | class 2 | union | volume 1 | volume 2 | collapsed (guard) | train s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            m = r["mean"]
            balance = r.get("class_balance")
            collapsed = "not recorded" if balance is None else (", ".join(balance.get("collapsed") or []) or "-")
            settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
            lines.append(f"| {r['name']} | {settings} | {100 * m['dice_1']:.1f} | {100 * m['dice_2']:.1f} | "
                         f"{100 * m['dice_union']:.1f} | {m['volume_ratio_1']:.2f} | {m['volume_ratio_2']:.2f} | "
                         f"{collapsed} | {r['train_s']:.0f} |")
        lines.append("")
    lines.append("Train seconds were measured on a shared, often overloaded 2-core machine: compare them only loosely. "
                 "\"not recorded\": the run was made before the collapse guard's final rule (2026-12-01 exploration, "
                 "same code paths; the orientation switch was then a patch of the two augmentation functions).")
    (out / "demo_ablation.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("sam", "vnet"):
        p = sub.add_parser(name)
        p.add_argument("--name", required=True)
        p.add_argument("--seed", type=int, default=1337)
        p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--work", default="/tmp/sfr-bench-demo-ablation")
        if name == "sam":
            p.add_argument("--cache", type=int, default=8)
            p.add_argument("--iterations", type=int, default=300)
            p.add_argument("--orientation", action="store_true", help="the paper's rotations and flips")
        else:
            p.add_argument("--iterations", type=int, default=400)
            p.add_argument("--augment", choices=("rotflip", "crop"), default="crop")
    t = sub.add_parser("table")
    t.add_argument("--work", default="/tmp/sfr-bench-demo-ablation")
    t.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    if args.what == "table":
        table(Path(args.work), Path(args.out))
        return 0
    torch.set_num_threads(args.threads)
    events.configure("none")
    work = Path(args.work) / args.name
    shutil.rmtree(work, ignore_errors=True)
    result = (run_sam if args.what == "sam" else run_vnet)(args, work)
    result["name"] = args.name
    (work / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["mean"]
    print(f"{args.name}: class 1 {100 * m['dice_1']:.1f}, class 2 {100 * m['dice_2']:.1f}, union {100 * m['dice_union']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
