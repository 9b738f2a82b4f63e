"""Stage F with and without the class offsets at the log priors, on the bundled demo sample.

    OMP_NUM_THREADS=1 python bench/sam_prior_bias.py --seeds 1337 --work /tmp/prior-bias
    python bench/sam_prior_bias.py --summarise /tmp/prior-bias   # after runs (also of other checkouts)

Each run is the product's own stage F (``finetune``) with the demo's settings (run/budget.py FAST:
LiteMedSAM, frozen encoder, 64 cached mosaics, 300 steps, warm-up 50) and ``prior_bias`` on or
off, then the product's ``pseudolabel`` of the 10 unlabeled cases, scored against their hidden
labels.  Per run: the share of iterations each class was predicted nowhere (the model's
``class_balance``), the SAM pseudo-labels' Dice per class and per case, the wall times.
A checkout from before the offsets existed runs as ``prior_bias`` off (give ``--label off``).
Results: ``bench/results/<--out>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _common import REPO, machine

import numpy as np  # noqa: E402

RESULTS = REPO / "bench" / "results"


def one_run(seed: int, prior: "bool | None", work: Path, label: str, warmup: "int | None" = None,
            head_lr: "float | None" = None) -> dict:
    import torch

    from SFRSegmenterLib.commands.demo import make_demo_project
    from SFRSegmenterLib.finetune import finetune, read_model_meta
    from SFRSegmenterLib.io import read_image, read_label
    from SFRSegmenterLib.metrics import dice
    from SFRSegmenterLib.pseudolabel import pseudolabel
    from SFRSegmenterLib.run.budget import FAST
    from SFRSegmenterLib.sam.config import FinetuneConfig

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    project = make_demo_project(work / "project")
    out = work / f"{label}-s{seed}"
    opts = dict(FAST["sam_options"], **({} if prior is None else {"prior_bias": prior}),
                **({} if warmup is None else {"warmup": int(warmup)}),
                **({} if head_lr is None else {"head_lr_scale": float(head_lr)}))
    cfg = FinetuneConfig(backbone=FAST["backbone"], iterations=FAST["iterations_sam"], seed=seed, device="cpu", **opts)
    t0 = time.monotonic()
    finetune(project, cfg, out / "sam")
    finetune_s = time.monotonic() - t0
    meta = read_model_meta(out / "sam")
    t0 = time.monotonic()
    pseudolabel(project, out / "sam", out / "pl", device="cpu", overlap=FAST["pseudo_overlap"])
    pseudo_s = time.monotonic() - t0
    cases = {}
    for c in project.by_role("unlabeled"):
        img = read_image(project.image_path(c))
        gt = read_label(project.label_path(c), img, project.num_classes).array
        pred = read_label(out / "pl" / f"{c.name}.nii.gz", img, project.num_classes).array
        cases[c.name] = [dice(pred == k, gt == k) for k in range(1, project.num_classes)]
    rec = {"label": label, "seed": seed, "warmup": opts.get("warmup"),
           "head_lr_scale": opts.get("head_lr_scale", 1.0), "finetune_s": round(finetune_s, 1), "pseudolabel_s": round(pseudo_s, 1),
           "class_prior_bias": meta.get("class_prior_bias"), "final_loss": meta["loss_curve"][-1],
           "first_loss": meta["loss_curve"][0],
           "absent_fraction": {k: v["absent_fraction"] for k, v in meta["class_balance"]["classes"].items()},
           "longest_unpredicted": {k: v["longest_unpredicted"] for k, v in meta["class_balance"]["classes"].items()},
           "cases": cases}
    (out / "result.json").write_text(json.dumps(rec, indent=1))
    return rec


def summarise(records: list, out: str, threads: int) -> None:
    rows = []
    for r in sorted(records, key=lambda r: (r["seed"], r["label"])):
        d = np.array(list(r["cases"].values()), dtype=float)
        per_class = (100 * np.nanmean(d, 0)).round(1).tolist()
        rows.append({**{k: r[k] for k in ("label", "seed", "finetune_s", "pseudolabel_s", "first_loss", "final_loss",
                                           "absent_fraction", "longest_unpredicted")}, "warmup": r.get("warmup"),
                     "head_lr_scale": r.get("head_lr_scale", 1.0),
                     "dice_per_class": per_class, "dice_mean": round(float(np.mean(per_class)), 1)})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out}.json").write_text(json.dumps({"machine": machine(threads), "rows": rows, "runs": records}, indent=1))
    lines = ["# Stage F: class offsets at the log priors vs every class at logit 0 (demo sample)", "",
             "The product's `finetune` with the demo's stage-F settings (run/budget.py FAST), then its `pseudolabel` of the "
             "10 unlabeled cases; SAM pseudo-label Dice % against the hidden labels. 'absent': share of the 300 steps a "
             "class present in the batch was predicted nowhere (issue 20 target: <= 10 %). bench/sam_prior_bias.py.", "",
             "| offsets | seed | warm-up | head lr | first loss | final loss | absent class 1 / 2 | longest stretch | SAM Dice 1 / 2 | mean | finetune s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, lg = list(r["absent_fraction"].values()), list(r["longest_unpredicted"].values())
        lines.append(f"| {r['label']} | {r['seed']} | {r.get('warmup') or 50} | {r.get('head_lr_scale') or 1:g} | {r['first_loss']:.3f} | {r['final_loss']:.3f} | "
                     f"{100 * a[0]:.1f} % / {100 * a[1]:.1f} % | {lg[0]} / {lg[1]} | {r['dice_per_class'][0]} / "
                     f"{r['dice_per_class'][1]} | {r['dice_mean']} | {r['finetune_s']} |")
    lines += ["", "Wall times are from a loaded 2-core machine (other jobs running): compare Dice and absent shares, "
              "not seconds. Per-case Dice in the JSON."]
    (RESULTS / f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[])
    ap.add_argument("--variants", nargs="*", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--label", help="label of a run from a checkout without the option (runs it as is)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sam-prior-bias"))
    ap.add_argument("--summarise", type=Path, nargs="*", default=[], help="work folders whose */result.json to tabulate")
    ap.add_argument("--warmup", type=int, help="stage F's warm-up steps instead of the demo's (FAST: 50); labels get -w<N>")
    ap.add_argument("--head-lr", type=float, help="stage F's head_lr_scale (the zero-started head layers' lr "
                    "multiple; default 1); labels get -h<N>")
    ap.add_argument("--out", default="sam_prior_bias")
    args = ap.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    records = []
    for seed in args.seeds:
        if args.label:
            records.append(one_run(seed, None, args.work, args.label))
        else:
            for v in args.variants:
                label = v + ("" if args.warmup is None else f"-w{args.warmup}") + ("" if args.head_lr is None else f"-h{args.head_lr:g}")
                records.append(one_run(seed, v == "on", args.work, label, args.warmup, args.head_lr))
    for folder in [args.work] + list(args.summarise):
        for f in sorted(folder.glob("*/result.json")):
            r = json.loads(f.read_text())
            if all((r["label"], r["seed"]) != (x["label"], x["seed"]) for x in records):
                records.append(r)
    summarise(records, args.out, threads)


if __name__ == "__main__":
    main()
