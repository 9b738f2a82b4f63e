"""Quality of stage R on the LA data set: lower bound, MT, SFR_MT, SAM alone (Dice, Jaccard, 95HD, ASD).

Cases follow ``train.list``: the first N are labeled, the next 64 - N unlabeled, the last 16 of the
80 are the validation cases every row is evaluated on (the papers' test set is not available here).

Rows:
  lower   supervised only on the N labeled cases (batch 2)            = the paper's lower bound
  mt      Mean Teacher, 2 labeled + 2 unlabeled, no SAM                = the paper's MT
  sfr_mt  Mean Teacher + SAM pseudo-label loss (needs --pseudo)        = the paper's SFR_MT
  sam     SAM alone: stage F's predictions of the validation cases    (needs --sam-pred)

Protocols:
  paper     6000 iterations, crop 80x112x112, batch 2+2, SGD 0.01 (x0.1 every 2500), sliding-window
            stride (4, 18, 18) [= (18, 18, 4) in x, y, z]. One command on a GPU:
                python bench/retrain_quality.py --protocol paper --device cuda \\
                    --pseudo 1=PSEUDO_DIR_1 16=PSEUDO_DIR_16 --sam-pred 1=DIR 16=DIR
  cpu-half  the CPU budget protocol (about 2 hours on 2 cores, both N, all rows).  The same crops
            *in millimetres*: LA resampled to 1.25 mm (bench/la_half.py data) and crop 32x64x64, the
            field of view of the paper's 80x112x112 at 0.625 mm (1.05 M vs 1.00 M original voxels)
            with 1/8 of the voxels; batch 2+2, SGD 0.01 momentum 0.9, 400 iterations, no lr step
            (the paper's step comes at 2500), MT ramp-up scaled to the run; evaluation at stride
            8x16x16 on the half-resolution image, the foreground probability resampled linearly
            back to the original grid and scored there against the original labels.
            SFR_MT uses SAM pseudo-labels made at full resolution by stage F and resampled
            (bench/la_half.py pseudo).  Steps (one thread each, run two at a time):
                python bench/la_half.py data
                python bench/la_half.py pseudo --sam 1=SAM_N1 16=SAM_N16        # ~25 min
                python bench/retrain_quality.py --protocol cpu-half --rows lower mt --threads 1
                python bench/retrain_quality.py --protocol cpu-half --rows sfr_mt sam --threads 1 \\
                    --pseudo 1=/tmp/sfr_la_half/pseudo_N1 16=/tmp/sfr_la_half/pseudo_N16 \\
                    --sam-pred 1=SAM_PRED_N1 16=SAM_PRED_N16
            (SAM_N*, SAM_PRED_N*: bench/sam_quality.py's model_n* and pred_n* folders.)
  cpu       the first attempt: full resolution, 30 iterations (~19 s / ~58 s per supervised / MT
            step on one thread).  Too short to train anything (N = 16: Dice 40 at 20 iterations);
            kept for the record.

Results accumulate (one entry per row and N) in bench/results/retrain_quality.json; the Markdown
table and the plot are rebuilt from it on every run.  Trained models stay in --work, so a run that
is interrupted continues (re-training resumes from its checkpoint).

--pseudo N=DIR: stage F's pseudo-label folder for the SAM fine-tuned on N labeled cases (files
<case>.nii.gz + pseudo-labels.json).  The bench project is named after that index's "project".
--sam-pred N=DIR: that SAM's predictions of the validation cases (the "sam" row, SAM alone).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from SFRSegmenterLib import events  # noqa: E402
from SFRSegmenterLib.evaluation import evaluate_pairs  # noqa: E402
from SFRSegmenterLib.manifest import init_project  # noqa: E402
from SFRSegmenterLib.retrain import RetrainConfig, predict_folder, retrain  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "la"
HALF_DATA = Path("/tmp/sfr_la_half/data")  # bench/la_half.py data (override: --half-data)
RESULTS = REPO / "bench" / "results"
PAPER = {  # Dice % on the LA test set (20 cases), V-Net, SAM ViT-B (SFR paper, TMI 2025)
    1: {"lower": 17.99, "mt": 29.68, "sfr_mt": 74.40, "sam": 74.78},
    16: {"lower": 86.03, "mt": 88.12, "sfr_mt": 90.86, "sam": 90.39},
}
PROTOCOLS = {
    "paper": {"iterations": 6000, "eval_stride": (4, 18, 18), "crop": (80, 112, 112), "half": False},
    "cpu": {"iterations": 30, "eval_stride": (80, 112, 112), "crop": (80, 112, 112), "half": False},
    # LA resampled to 1.25 mm (bench/la_half.py): same field of view per crop, 1/8 of the voxels;
    # constant learning rate (the paper's x0.1 step at 2500/6000 would come after 167 iterations)
    "cpu-half": {"iterations": 400, "eval_stride": (8, 16, 16), "crop": (32, 64, 64), "half": True,
                 "lr_step": 10**9},
}
ROWS = ("lower", "mt", "sfr_mt", "sam")


def make_project(work: Path, n: int, name: str, protocol: str = "paper"):
    half = PROTOCOLS[protocol]["half"]
    data = HALF_DATA if half else DATA
    root = work / (f"la_half_N{n}" if half else f"la_N{n}")
    project = init_project(root, data / "images", labels=data / "labels", cases=data / "train.list",
                           labeled=n, validation=16, classes="background,left_atrium", force=True)
    if project.name != name:
        project.name = name
        project.save()
    return project


def row_config(row: str, args) -> RetrainConfig:
    ssl = "supervised" if row == "lower" else "mean_teacher"
    return RetrainConfig(
        ssl=ssl, use_sam=(row == "sfr_mt"), iterations=args.iterations, crop=PROTOCOLS[args.protocol]["crop"],
        lr_step=PROTOCOLS[args.protocol].get("lr_step"),
        labeled_bs=2, unlabeled_bs=2, seed=args.seed, device=args.device, threads=args.threads,
        save_every=max(1, min(500, args.iterations // 4)),
    )


def to_full_resolution(pred_dir: Path, cases) -> Path:
    """Half-resolution predictions back onto the original LA grid: the foreground probability
    (from the label and its max-softmax confidence) resampled linearly, thresholded at 0.5."""
    import SimpleITK as sitk

    from la_half import binary_on, resample_prob  # bench/, next to this script

    out = pred_dir.parent / (pred_dir.name + "_full")
    out.mkdir(parents=True, exist_ok=True)
    for c in cases:
        lab = sitk.ReadImage(str(pred_dir / f"{c.name}.nii.gz"))
        conf = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir / f"{c.name}_confidence.nii.gz")))
        fg = np.where(sitk.GetArrayFromImage(lab) == 1, conf, 1.0 - conf).astype(np.float32)
        img = sitk.GetImageFromArray(fg)
        img.CopyInformation(lab)
        ref = sitk.ReadImage(str(DATA / "images" / f"{c.name}.nii.gz"))
        sitk.WriteImage(binary_on(ref, resample_prob(img, ref)), str(out / f"{c.name}.nii.gz"))
    return out


def evaluate(project, pred_dir: Path, cases, full_resolution: bool = False) -> dict:
    """Metrics against the original (0.625 mm) LA labels."""
    if full_resolution:
        pred_dir = to_full_resolution(pred_dir, cases)
    pairs = [(c.name, pred_dir / f"{c.name}.nii.gz", DATA / "labels" / f"{c.name}.nii.gz") for c in cases]
    missing = [str(p) for _, p, _ in pairs if not p.exists()]
    if missing:
        return {"error": f"{len(missing)} validation cases without a prediction, e.g. {missing[0]}"}
    report = evaluate_pairs(pairs)
    return {"mean": report["mean"], "cases": report["cases"]}


def run_row(row: str, n: int, args, pseudo: dict) -> dict:
    name = "la"
    if n in pseudo:
        idx = json.loads((pseudo[n] / "pseudo-labels.json").read_text())
        name = idx.get("project", name)
    project = make_project(Path(args.work), n, name, args.protocol)
    val = project.by_role("validation")[: args.max_val]
    entry = {"row": row, "labeled": n, "protocol": args.protocol, "validation_cases": len(val),
             "threads": torch.get_num_threads(), "device": args.device, "seed": args.seed, **({"tag": args.tag} if args.tag else {})}
    if row == "sam":
        if n not in args.sam_pred:
            return {**entry, "skipped": "no --sam-pred for this N"}
        entry["sam_pred"] = str(args.sam_pred[n])
        entry["metrics"] = evaluate(project, args.sam_pred[n], val)  # full-resolution SAM predictions
        return entry
    if row == "sfr_mt" and n not in pseudo:
        return {**entry, "skipped": "no --pseudo for this N (stage F pseudo-labels needed)"}
    cfg = row_config(row, args)
    out = Path(args.work) / "models" / f"{row}_N{n}_{args.protocol}_{args.iterations}{'_' + args.tag if args.tag else ''}"
    t0 = time.monotonic()
    retrain(project, cfg, pseudo_dir=pseudo.get(n), out_dir=out, resume=True)
    train_s = time.monotonic() - t0
    pred_dir = Path(args.work) / "pred" / out.name
    t0 = time.monotonic()
    res = predict_folder(out, [project.image_path(c) for c in val], pred_dir, stride=args.eval_stride,
                         device=args.device, batch=args.batch)
    pred_s = time.monotonic() - t0
    entry.update(config=cfg.to_dict(), eval_stride=list(args.eval_stride), train_seconds=round(train_s, 1),
                 predict_seconds=round(pred_s, 1), s_per_volume=round(pred_s / max(1, len(val)), 2),
                 mean_confidence=float(np.mean([r["mean_confidence"] for r in res.values()])),
                 metrics=evaluate(project, pred_dir, val, full_resolution=PROTOCOLS[args.protocol]["half"]))
    return entry


SEED_TAG = re.compile(r"^fixed-s(\d+)$")


def seed_summary(results: list) -> list:
    """Markdown lines: each (N, row) measured at several seeds (tags ``fixed-sS``): per-seed Dice, mean, spread."""
    groups: dict = {}
    for e in results:
        m = SEED_TAG.match(e.get("tag", ""))
        mean = e.get("metrics", {}).get("mean") if m else None
        if mean:
            groups.setdefault((e["labeled"], e["row"], e["protocol"]), {})[int(m.group(1))] = 100 * mean["dice"]
    if not groups:
        return []
    lines = ["", "Across seeds (pseudo-labels and V-Net from the same seed; tags fixed-sS, stage F after the "
             "2026-12-01 fixes):", "", "| N | row | protocol | Dice per seed | mean | spread (max - min) | paper Dice |",
             "|---|---|---|---|---|---|---|"]
    for (n, row, proto), by_seed in sorted(groups.items(), key=lambda kv: (kv[0][0], ROWS.index(kv[0][1]), kv[0][2])):
        vals = [by_seed[k] for k in sorted(by_seed)]
        per = " / ".join(f"{by_seed[k]:.1f} (s{k})" for k in sorted(by_seed))
        spread = f"{max(vals) - min(vals):.1f}" if len(vals) > 1 else "- (one seed)"
        lines.append(f"| {n} | {row} | {proto} | {per} | {np.mean(vals):.1f} | {spread} | {PAPER.get(n, {}).get(row, '')} |")
    return lines


def write_outputs(results: list, protocol: str = "cpu-half") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrain_quality.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Stage R quality on LA (validation = last 16 of train.list)", "",
             "Dice/Jaccard in %, 95HD and ASD in voxels of the original 0.625 mm grid (every protocol is scored "
             "there). Paper column: SFR paper, LA *test* set, ViT-B SAM, 6000 iterations (not the same cases).", "",
             "Protocols (details in bench/retrain_quality.py): **cpu-half** = the CPU budget protocol, LA at "
             "1.25 mm with a 32x64x64 crop (the paper's field of view), 400 iterations, batch 2+2, SGD 0.01 "
             "constant, SAM = LiteMedSAM with a frozen encoder and 450 decoder iterations (bench/sam_quality.py); "
             "**cpu** = full resolution, 20-30 iterations (too short to train, kept for the record); "
             "**paper** = 6000 iterations on a GPU.", "",
             "| N | row | protocol | iterations | Dice | Jaccard | 95HD | ASD | train s | s/volume | paper Dice |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(results, key=lambda e: (e["labeled"], ROWS.index(e["row"]), e["protocol"], e.get("tag", ""))):
        paper = PAPER.get(e["labeled"], {}).get(e["row"], "")
        e = {**e, "row": e["row"] + (f" ({e['tag']})" if e.get("tag") else "")}
        if "skipped" in e:
            lines.append(f"| {e['labeled']} | {e['row']} | {e['protocol']} | | skipped: {e['skipped']} | | | | | | {paper} |")
            continue
        m = e["metrics"].get("mean")
        if m is None:
            lines.append(f"| {e['labeled']} | {e['row']} | {e['protocol']} | | {e['metrics'].get('error')} | | | | | | {paper} |")
            continue
        f = lambda v, s=1.0: "n/a" if v is None else f"{v * s:.2f}"  # noqa: E731
        it = e.get("config", {}).get("iterations", "")
        lines.append(
            f"| {e['labeled']} | {e['row']} | {e['protocol']} | {it} | {f(m['dice'], 100)} | {f(m['jaccard'], 100)} | "
            f"{f(m['hd95_vox'])} | {f(m['asd_vox'])} | {e.get('train_seconds', '')} | {e.get('s_per_volume', '')} | {paper} |"
        )
    lines += seed_summary(results)
    lines += ["", "What ran:"]
    for e in results:
        if "skipped" not in e:
            lines.append(f"- N={e['labeled']} {e['row']}{' (' + e['tag'] + ')' if e.get('tag') else ''}: protocol {e['protocol']}, "
                         f"{e.get('config', {}).get('iterations', '-')} iterations, eval stride {e.get('eval_stride', '-')}, "
                         f"{e['validation_cases']} validation cases, {e['threads']} thread(s), device {e['device']}, "
                         f"finished {e.get('finished', '?')}")
    lines += ["", "Threads/device per entry are in retrain_quality.json. Empty predictions count as Dice 0 and "
              "have no distance (n_hd95_vox in the JSON says how many cases had one).", ""]
    (RESULTS / "retrain_quality.md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
        for ax, n in zip(axes, (1, 16)):
            xs = np.arange(len(ROWS))
            ours = []
            for r in ROWS:
                hits = [e for e in results if e["labeled"] == n and e["row"] == r and e["protocol"] == protocol
                        and e.get("metrics", {}).get("mean")]
                ours.append(100 * hits[-1]["metrics"]["mean"]["dice"] if hits else np.nan)
            ax.bar(xs - 0.2, ours, 0.4, label=f"here ({protocol}, validation)")
            ax.bar(xs + 0.2, [PAPER[n][r] for r in ROWS], 0.4, label="paper (test set)", alpha=0.6)
            ax.set_xticks(xs, ROWS)
            ax.set_title(f"{n} labeled")
        axes[0].set_ylabel("Dice %")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / "retrain_quality.png", dpi=100)
    except ImportError:
        pass


def main(argv=None) -> int:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--protocol", choices=PROTOCOLS, default="cpu-half")
    ap.add_argument("--labeled", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    ap.add_argument("--pseudo", nargs="*", default=[], metavar="N=DIR")
    ap.add_argument("--sam-pred", nargs="*", default=[], metavar="N=DIR",
                    help="stage F's predictions of the validation cases (full resolution), for the 'sam' row")
    ap.add_argument("--half-data", help="bench/la_half.py's data folder (protocol cpu-half)")
    ap.add_argument("--iterations", type=int, help="override the protocol's iterations")
    ap.add_argument("--eval-stride", type=int, nargs=3, help="override the protocol's inference stride (D H W)")
    ap.add_argument("--batch", type=int, default=4, help="windows per forward at inference")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--tag", default="", help="names a variant (e.g. the SAM code or seed behind the pseudo-labels); "
                    "entries with different tags are kept side by side")
    ap.add_argument("--work", default="/tmp/sfr_retrain_quality")
    ap.add_argument("--max-val", type=int, default=16, help="evaluate only the first K validation cases (smoke runs)")
    ap.add_argument("--results", default=str(REPO / "bench" / "results"), help="folder for the JSON, Markdown and plot")
    args = ap.parse_args(argv)
    proto = PROTOCOLS[args.protocol]
    args.iterations = args.iterations or proto["iterations"]
    args.eval_stride = tuple(args.eval_stride or proto["eval_stride"])
    if args.threads:
        torch.set_num_threads(args.threads)
    pseudo = {}
    for item in args.pseudo:
        n, _, d = item.partition("=")
        pseudo[int(n)] = Path(d)
    args.sam_pred = {int(k): Path(v) for k, v in (s.split("=", 1) for s in args.sam_pred)}
    if args.half_data:
        global HALF_DATA
        HALF_DATA = Path(args.half_data)
    events.configure("bar" if sys.stderr.isatty() else "none")
    RESULTS = Path(args.results)
    path = RESULTS / "retrain_quality.json"
    results = json.loads(path.read_text()) if path.exists() else []
    for n in args.labeled:
        for row in args.rows:
            print(f"[{time.strftime('%H:%M:%S')}] N={n} {row} ({args.protocol}, {args.iterations} it.)", flush=True)
            entry = run_row(row, n, args, pseudo)
            entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            results = json.loads(path.read_text()) if path.exists() else []  # other runs may have written
            results = [e for e in results if not (e["labeled"] == n and e["row"] == row and e["protocol"] == args.protocol
                                                  and e.get("tag", "") == args.tag)]
            results.append(entry)
            write_outputs(results, args.protocol)
            m = entry.get("metrics", {}).get("mean")
            print(f"    -> {entry.get('skipped') or ('Dice %.4f' % m['dice'] if m else entry.get('metrics'))}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
