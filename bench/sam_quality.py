"""Stage F quality on real data: Dice of the fine-tuned SAM alone (SFR_FT) on LA or hippocampus.

    python bench/sam_quality.py [--dataset la|hippocampus] [--labeled 1 16] [--seeds 1337 1]
                                [--option KEY=VALUE ...] [--tag NAME] [--resume | --score-only] [--threads 1] [--smoke]

Hippocampus (Medical Segmentation Decathlon Task04, 2 structures): the first N cases of the
shared data's sorted list are labeled, 20 cases after the first 40 are validation.
Each (N, seed) is one row; per-case Dice and predicted / true structure volume are kept.

For N = 1 and N = 16 labeled cases (train.list order), fine-tune LiteMedSAM and predict the
validation cases (the last 16 of the 80) with ``SFRSegmenterLib.pseudolabel``; score with
``SFRSegmenterLib.evaluation``.  Paper (ViT-B, 6000 iterations, GPU): 90.39 (16), 74.78 (1).

CPU budget (about 45 minutes for both N on one thread of a shared 2-core machine):
* a LiteMedSAM encoder pass costs about 3.5-4.5 s there, a LoRA training step (batch 2) about
  30 s (bench/results/sam_speed.md), so LoRA fine-tuning would get some 40 steps per N in the
  budget.  We train instead with the encoder frozen (LoRA rank 0) on cached embeddings of
  augmented mosaics (``embedding_cache``: 32 for N = 1, 64 for N = 16), which makes a decoder
  step about 1.3 s (450 iterations per N) and lets both N share the validation embeddings;
* layout: whole slices (crop 16 x 160 x 256, 4 x 4 grid, in-plane scale 0.25) so a validation
  volume takes 6 encoder passes (no window overlap).
Results go to bench/results/sam_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import REPO, machine, peak_rss_mb, prepare_la

import numpy as np  # noqa: E402
import torch  # noqa: E402

from SFRSegmenterLib import events  # noqa: E402
from SFRSegmenterLib.evaluation import evaluate_pairs  # noqa: E402
from SFRSegmenterLib.finetune import FinetuneConfig, finetune  # noqa: E402
from SFRSegmenterLib.io import read_image, read_label, write_volume  # noqa: E402
from SFRSegmenterLib.manifest import init_project  # noqa: E402
from SFRSegmenterLib.pseudolabel import load_sam_model, predict_probabilities  # noqa: E402

PAPER = {1: 74.78, 16: 90.39}


def run_one(project, n, args, cache, work, seed=1337):
    cfg = FinetuneConfig(
        backbone=args.backbone, iterations=args.iterations[str(n)], batch_size=2, lora_rank=0,
        embedding_cache=args.cache[str(n)], crop=tuple(args.crop) if args.crop else None,
        grid=tuple(args.grid), device="cpu", save_every=100, threads=args.threads, seed=seed,
        **args.options,
    )
    t0 = time.monotonic()
    model_dir = work / f"model_n{n}_s{seed}"
    if args.score_only:  # a model trained earlier (maybe by older code), scored with this code
        if not (model_dir / "sam-model.json").exists():
            raise SystemExit(f"{model_dir}: no trained model to score (--score-only)")
    else:
        model_dir = finetune(project, cfg, out_dir=model_dir, resume=args.resume)
    train_s = time.monotonic() - t0
    meta = json.loads((model_dir / "sam-model.json").read_text())
    model = load_sam_model(model_dir, "cpu")
    pred_dir = work / f"pred_n{n}_s{seed}"
    pairs = []
    t1 = time.monotonic()
    for case in project.by_role("validation"):
        image = read_image(project.image_path(case))
        probs = predict_probabilities(model, image, overlap=0.0, encoder_cache=cache, cache_key=case.name)
        write_volume(image.with_array(probs.argmax(0).astype(np.uint8)), pred_dir / f"{case.name}.nii.gz")
        pairs.append((case.name, pred_dir / f"{case.name}.nii.gz", project.label_path(case)))
    predict_s = time.monotonic() - t1
    report = evaluate_pairs(pairs)
    mean = report["mean"]
    volumes = {}
    for name, pred_path, gt_path in pairs:
        pred, gt = read_label(pred_path).array, read_label(gt_path).array
        volumes[name] = {int(k): [int((pred == k).sum()), int((gt == k).sum())] for k in range(1, project.num_classes)}
    per_class = {str(k): v.get("dice") for k, v in (report.get("mean_per_class") or {}).items()}
    return {
        "labeled": n,
        "seed": seed,
        "options": args.options,
        "dice_per_class": per_class,
        "dice": mean["dice"],
        "jaccard": mean["jaccard"],
        "hd95_vox": mean.get("hd95_vox"),
        "asd_vox": mean.get("asd_vox"),
        "hd95_mm": mean.get("hd95_mm"),
        "asd_mm": mean.get("asd_mm"),
        "paper_sfr_ft_dice": PAPER.get(n),
        "iterations": cfg.iterations,
        "embedding_cache": cfg.embedding_cache,
        "train_s": round(train_s, 1),
        "predict_s": round(predict_s, 1),
        "loss_first_last": [meta["loss_curve"][0], meta["loss_curve"][-1]],
        "model_id": meta["model_id"],
        "layout": meta["layout"],
        "per_case": [{"case": r["case"], "class": r.get("class"), "dice": r["dice"],
                      "pred_voxels": volumes[r["case"]].get(int(r.get("class") or 1), [None])[0],
                      "true_voxels": volumes[r["case"]].get(int(r.get("class") or 1), [None, None])[1]}
                     for r in report["cases"]],
        "class_balance": meta.get("class_balance"),
    }


def write_results(results, args, out: Path, t_start):
    data = ("LA, train.list order, validation = last 16 of 80" if args.dataset == "la" else
            "hippocampus (MSD Task04), first N of the sorted list labeled, validation = 20 cases after the first 40")
    payload = {
        "benchmark": "sam_quality",
        "dataset": args.dataset,
        "data": data,
        "options": args.options,
        "backbone": args.backbone,
        "protocol": "frozen LiteMedSAM encoder (LoRA rank 0), decoder + prompt encoder fine-tuned on "
        "cached embeddings of augmented mosaics; AdamW 1e-3, wd 0.1, poly 0.9, batch 2; "
        "whole-volume prediction, windows without overlap",
        "crop": args.crop,
        "grid": args.grid,
        "machine": machine(args.threads),
        "total_s": round(time.monotonic() - t_start, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = "sam_quality" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")

    def f(v, pct=False):
        return "-" if v is None else (f"{100 * v:.2f}" if pct else f"{v:.2f}")

    lines = [
        f"# Stage F quality: SAM alone (SFR_FT), {data}",
        "",
        f"Backbone {args.backbone}, CPU, {args.threads} thread(s); {payload['protocol']}. Options "
        f"{json.dumps(args.options)}.",
        f"Crop (D H W) {args.crop or 'backbone default'}, grid {args.grid}. Total {payload['total_s']:.0f} s, "
        f"peak RSS {payload['peak_rss_mb']:.0f} MB.",
        "",
        "| labeled | seed | Dice % | per class | Jaccard % | 95HD vox | ASD vox | pred / true volume | paper SFR_FT Dice (LA, ViT-B, GPU) | iterations | cached mosaics | train s | predict s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = [c["pred_voxels"] / c["true_voxels"] for c in r["per_case"] if c.get("true_voxels")]
        classes = " / ".join(f(v, True) for v in r["dice_per_class"].values()) if len(r["dice_per_class"]) > 1 else "-"
        lines.append(
            f"| {r['labeled']} | {r['seed']} | {f(r['dice'], True)} | {classes} | {f(r['jaccard'], True)} | "
            f"{f(r['hd95_vox'])} | {f(r['asd_vox'])} | {f(float(np.median(ratio))) if ratio else '-'} | "
            f"{r['paper_sfr_ft_dice'] if args.dataset == 'la' else '-'} | {r['iterations']} | "
            f"{r['embedding_cache']} | {r['train_s']:.0f} | {r['predict_s']:.0f} |"
        )
    by_n: dict = {}
    for r in results:
        by_n.setdefault(r["labeled"], []).append(r["dice"])
    lines += ["", "| labeled | seeds | mean Dice % | spread (max - min) |", "|---|---|---|---|"]
    for n, v in by_n.items():
        lines.append(f"| {n} | {len(v)} | {100 * float(np.mean(v)):.2f} | {100 * (max(v) - min(v)):.2f} |")
    lines += ["", "Pred / true volume: median over validation cases (and classes) of predicted / true "
              "structure voxels. Per-case numbers are in the JSON."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labeled", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--iterations", type=json.loads, default={"1": 450, "16": 450},
                    help='JSON: iterations per N, e.g. \'{"1": 450, "16": 450}\'')
    ap.add_argument("--cache", type=json.loads, default={"1": 32, "16": 64},
                    help="JSON: cached augmented mosaics per N")
    ap.add_argument("--dataset", choices=("la", "hippocampus"), default="la")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337])
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra FinetuneConfig field (JSON value), e.g. orientation_augment=true")
    ap.add_argument("--tag", default="", help="results go to sam_quality_TAG.{json,md}")
    ap.add_argument("--score-only", action="store_true",
                    help="do not train: score the models already in --work (model_nN_sS) with this code")
    ap.add_argument("--resume", action="store_true",
                    help="continue a model in --work; a finished one (same settings) is kept and only scored again "
                         "with this code")
    ap.add_argument("--crop", type=int, nargs=3, default=None,
                    help="default: 16 160 256 on LA (whole slices), the backbone's default on hippocampus")
    ap.add_argument("--grid", type=int, nargs=2, default=[4, 4])
    ap.add_argument("--backbone", default="lite_medsam")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="/tmp/sfr-bench-sam-quality")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--smoke", action="store_true", help="tiny test model on 4 bundled hippocampus cases")
    args = ap.parse_args(argv)
    args.options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        args.options[key] = json.loads(value)
    if args.crop is None and args.dataset == "la":
        args.crop = [16, 160, 256]
    torch.set_num_threads(args.threads)
    events.configure("none")
    work = Path(args.work)
    t_start = time.monotonic()
    cache: dict = {}
    results = []
    if args.smoke:
        sample = REPO / "SFRSegmenterLib" / "sample_data" / "hippocampus"
        args.backbone, args.labeled, args.crop, args.grid = "tiny_test", [1], [16, 64, 64], [4, 4]
        args.iterations, args.cache = {"1": 5}, {"1": 4}
        project = init_project(work / "smoke", sample / "images", sample / "labels", labeled=1,
                               validation=2, classes="3", force=True)
        results.append(run_one(project, 1, args, cache, work))
        write_results(results, args, work / "results", t_start)
        print(json.dumps(results[0], indent=2)[:800])
        return 0
    for n in args.labeled:
        project = prepare_la(work / f"la{n}", n) if args.dataset == "la" else prepare_hippocampus(work / f"hip{n}", n)
        for seed in args.seeds:
            results.append(run_one(project, n, args, cache, work, seed))
            write_results(results, args, Path(args.out), t_start)
            print(f"N={n} seed {seed}: Dice {100 * results[-1]['dice']:.2f} {results[-1]['dice_per_class']}", flush=True)
    return 0


def prepare_hippocampus(root: Path, labeled: int, validation: int = 20, skip: int = 40):
    """A hippocampus project: the first ``labeled`` cases of the sorted shared data labeled,
    ``validation`` cases after the first ``skip`` held out (the same for every N)."""
    import shutil

    from _common import HIPPOCAMPUS

    names = sorted(p.name[: -len(".nii.gz")] for p in (HIPPOCAMPUS / "images").glob("*.nii.gz"))
    chosen = names[:labeled] + names[skip: skip + validation]
    if root.exists():
        shutil.rmtree(root)
    images, labels = root / "data" / "images", root / "data" / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for name in chosen:
        for sub, dest in (("images", images), ("labels", labels)):
            (dest / f"{name}.nii.gz").symlink_to(HIPPOCAMPUS / sub / f"{name}.nii.gz")
    order = root / "cases.txt"
    order.write_text("\n".join(chosen) + "\n")
    return init_project(root / "project", images, labels, labeled=labeled, validation=validation, cases=order,
                        classes="3")


if __name__ == "__main__":
    raise SystemExit(main())
