"""SFR vs SFR+ on LA at 1 labeled case, under the CPU budget protocol ``cpu-half``.

    OMP_NUM_THREADS=1 python bench/sfr_plus_half.py [--tau 0.985] [--threads 1]

Round 0 is plain SFR, taken from ``bench/retrain_quality.py --protocol cpu-half`` (its SFR_MT model
for N = 1 and the stage-F pseudo-labels of ``bench/la_half.py``).  One SFR+ round then does what
``sfr run --sfr-plus`` does (SFRSegmenterLib/run/pipeline.py), with the same library calls:

1. confidence-r0: the round-0 V-Net predicts every unlabeled case (63); case confidence C (Eq. 8);
   trusted = C >= tau.  Dice of every case against its (hidden) ground truth is recorded, so the
   table shows whether the confidence picks the good cases.
2. finetune-r1: SAM (same stage-F settings as round 0: frozen LiteMedSAM encoder, 450 decoder
   iterations) on the labeled case plus the trusted cases with their V-Net labels (resampled to the
   original grid).
3. pseudolabel-r1: the new SAM pseudo-labels the untrusted cases.
4. retrain-r1: SFR_MT again from scratch, on the labeled case and the untrusted cases only.
5. confidence-r1 on every unlabeled case, and the validation metrics (at full resolution).

Every step writes its outputs under --work and is skipped when they exist, so the script resumes.
Results: bench/results/<--out>.{json,md} (sfr_plus_la: the paper's rule; sfr_plus_la_guard:
``--min-structure 0.1``, which trusts the same 4 cases as the default 0.25 at tau 0.985).

Cheaper modes, each from the round-0 maps of a --work folder:

* ``--trust-table``: which cases each (tau, min structure) pair trusts and their Dice
  (sfr_plus_trust_la.md).
* ``--sam-only K [--oracle-labels | --control] [--sam-cache N] [--sam-iterations N]``: only SAM's
  round-1 fine-tuning and its pseudo-labels of the first K untrusted cases, with the trusted cases'
  V-Net labels, their ground truth, or no trusted case; ``--out sfr_plus_la_sam_<name>``, then
  ``--sam-table`` gathers them (sfr_plus_la_sam.md).
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
import torch  # noqa: E402

import la_half  # noqa: E402
import retrain_quality as rq  # noqa: E402
from SFRSegmenterLib import confidence as C  # noqa: E402
from SFRSegmenterLib import events  # noqa: E402
from SFRSegmenterLib.io import read_image, read_label, write_volume  # noqa: E402
from SFRSegmenterLib.manifest import Case, Project, write_json_atomic  # noqa: E402
from SFRSegmenterLib.metrics import dice  # noqa: E402

RESULTS = REPO / "bench" / "results"
PAPER = {"SFR_MT": 74.40, "SFR+_MT": 81.03}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def confidence_stage(model_dir: Path, project, out: Path, sam_dir: "Path | None", tau: float, names: list) -> dict:
    """V-Net labels + case confidence of every unlabeled case (half resolution), with Dice vs GT."""
    from SFRSegmenterLib.retrain.inference import load_model, predict_volume

    out.mkdir(parents=True, exist_ok=True)
    path = out / "cases.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    model = None
    stride = rq.PROTOCOLS["cpu-half"]["eval_stride"]
    for case in [project.case(n) for n in names]:
        if case.name in done:
            continue
        model = model or load_model(model_dir, "cpu")
        img = read_image(project.image_path(case))
        prob = predict_volume(model, img.array, stride=stride)
        review = C.review_case(case.name, prob, tau=tau)
        write_volume(img.with_array(review.label.astype(np.uint8)), out / f"{case.name}.nii.gz")
        write_volume(img.with_array(review.conf.astype(np.float32)), out / f"{case.name}_confidence.nii.gz")
        gt = read_label(project.label_path(case)).array
        entry = {**review.to_json(), "dice": float(dice(review.label == 1, gt == 1))}
        if sam_dir is not None and (sam_dir / f"{case.name}.nii.gz").exists():
            entry["sam_dice"] = float(dice(read_label(sam_dir / f"{case.name}.nii.gz").array == 1, gt == 1))
        done[case.name] = entry
        write_json_atomic(path, done)
    return done


def upsample_labels(src: Path, cases: list, out: Path) -> dict:
    """V-Net labels (half resolution) on the original LA grid, for SAM fine-tuning."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in cases:
        dst = out / f"{name}.nii.gz"
        if not dst.exists():
            lab = sitk.ReadImage(str(src / f"{name}.nii.gz"), sitk.sitkFloat32)
            ref = sitk.ReadImage(str(rq.DATA / "images" / f"{name}.nii.gz"))
            p = la_half.resample_prob(lab, ref)
            sitk.WriteImage(la_half.binary_on(ref, p), str(dst))
        paths[name] = dst
    return paths


def summarize(conf: dict, tau: float) -> dict:
    t = [e for e in conf.values() if e["confidence"] >= tau]
    u = [e for e in conf.values() if e["confidence"] < tau]
    mean = lambda xs, k: float(np.mean([x[k] for x in xs])) if xs else None  # noqa: E731
    cs = np.array([e["confidence"] for e in conf.values()])
    ds = np.array([e["dice"] for e in conf.values()])
    rho = float(np.corrcoef(np.argsort(np.argsort(cs)), np.argsort(np.argsort(ds)))[0, 1]) if len(cs) > 2 else None
    return {"cases": len(conf), "trusted": len(t), "mean_confidence": float(cs.mean()),
            "confidence_range": [float(cs.min()), float(cs.max())], "dice_all": float(ds.mean()),
            "dice_trusted": mean(t, "dice"), "dice_untrusted": mean(u, "dice"),
            "sam_dice_all": mean(list(conf.values()), "sam_dice") if all("sam_dice" in e for e in conf.values()) else None,
            "spearman_confidence_dice": rho}


def main(argv=None) -> int:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tau", type=float, default=C.TAU)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=rq.PROTOCOLS["cpu-half"]["iterations"])
    ap.add_argument("--quality-work", default="/tmp/sfr_retrain_quality", help="retrain_quality.py's --work")
    ap.add_argument("--half-work", default="/tmp/sfr_la_half", help="la_half.py's --work")
    ap.add_argument("--sam-work", default="/tmp/sfr-bench-sam-quality", help="sam_quality.py's --work")
    ap.add_argument("--work", default="/tmp/sfr_plus_half")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--sam-iterations", type=int, help="override stage F's iterations (smoke runs)")
    ap.add_argument("--sam-cache", type=int, help="override the cached augmented mosaics (smoke runs)")
    ap.add_argument("--seed", type=int, default=1337,
                    help="the round-0 run's seed (its V-Net, SAM and pseudo-labels); round 1 uses it too")
    ap.add_argument("--tag", default="", help="retrain_quality.py's --tag of the round-0 V-Net (e.g. fixed-s1337)")
    ap.add_argument("--sam-quality", default="sam_quality.json",
                    help="the bench/results file of the round-0 SAM (stage F settings for round 1)")
    ap.add_argument("--sam-seed", type=int, help="stage F's seed in round 1 (default: --seed)")
    ap.add_argument("--min-structure", type=float, default=0.0,
                    help="trust guard of sfr run: predicted structure >= F x the labeled one (default 0: "
                    "the paper's rule, confidence only)")
    ap.add_argument("--sam-only", type=int, metavar="K",
                    help="stop after SAM's round-1 pseudo-labels of the first K untrusted cases and compare "
                    "them with round 0's (a cheaper measurement of what the trusted cases teach SAM)")
    ap.add_argument("--oracle-labels", action="store_true",
                    help="fine-tune SAM with the trusted cases' ground truth instead of the V-Net's labels (a "
                    "diagnostic: separates what the labels' errors cost from what more volumes do to stage F)")
    ap.add_argument("--control", action="store_true",
                    help="with --sam-only: fine-tune SAM on the labeled case alone (no trusted case) with the same "
                    "settings, the control for what the trusted cases add")
    ap.add_argument("--sam-table", action="store_true",
                    help="only tabulate the --sam-only results under --results (sfr_plus_la_sam_*.json) into "
                    "sfr_plus_la_sam.md")
    ap.add_argument("--out", default="sfr_plus_la", help="result file stem under --results")
    ap.add_argument("--seed-table", nargs="+", metavar="STEM",
                    help="gather finished runs (result stems under --results, one per seed) into "
                         "<--out>.{json,md}: SFR vs SFR+ per seed, mean and spread")
    ap.add_argument("--limit", type=int, help="only the first K unlabeled cases (smoke runs)")
    ap.add_argument("--trust-table", action="store_true",
                    help="only tabulate which round-0 cases each (tau, min structure) pair would trust, and their "
                    "Dice (from --work's confidence-r0; cheap): bench/results/sfr_plus_trust_la.{json,md}")
    args = ap.parse_args(argv)
    RESULTS = Path(args.results)
    if args.control and not args.sam_only:
        ap.error("--control needs --sam-only")
    if args.sam_table:
        sam_table()
        return 0
    if args.seed_table:
        seed_table(args.seed_table, args.out)
        return 0
    torch.set_num_threads(args.threads)
    events.configure("none")
    work, qwork, hwork = Path(args.work), Path(args.quality_work), Path(args.half_work)
    rq.HALF_DATA = hwork / "data"
    vnet0 = qwork / "models" / f"sfr_mt_N1_cpu-half_{args.iterations}{'_' + args.tag if args.tag else ''}"
    if not (vnet0 / "model.pt").exists():
        raise SystemExit(f"{vnet0}: run bench/retrain_quality.py --protocol cpu-half --labeled 1 --rows sfr_mt first")
    sam0_pseudo = hwork / "pseudo_N1"
    timings = {}
    # the round-1 project (its own name, so its pseudo-label index cannot be mistaken for round 0's)
    project = rq.make_project(work, 1, "la_half_N1_sfrplus_r1", "cpu-half")
    unl = [c.name for c in project.by_role("unlabeled")][: args.limit]

    if args.trust_table:
        trust_table(project, work / "confidence-r0", conf0=confidence_stage(vnet0, project, work / "confidence-r0",
                                                                            sam0_pseudo, args.tau, unl))
        return 0
    t0 = time.monotonic()
    log("confidence-r0")
    conf0 = confidence_stage(vnet0, project, work / "confidence-r0", sam0_pseudo, args.tau, unl)
    timings["confidence_r0_s"] = round(time.monotonic() - t0, 1)
    trusted = sorted(c for c in unl if conf0[c]["confidence"] >= args.tau)
    guarded_out = []
    if args.min_structure:
        labeled, fg = structure_voxels(project, work / "confidence-r0", trusted)
        guarded_out = sorted(c for c in trusted if fg[c] < args.min_structure * labeled)
        trusted = [c for c in trusted if c not in guarded_out]
    untrusted = [c for c in unl if c not in trusted]
    log(f"{len(trusted)} of {len(unl)} cases trusted at tau {args.tau}, min structure {args.min_structure} "
        f"(guard removed {len(guarded_out)})")
    result = {"tau": args.tau, "min_structure": args.min_structure, "oracle_labels": args.oracle_labels, "round0": summarize(conf0, args.tau),
              "trusted": trusted, "guard_removed": guarded_out,
              "trusted_dice": {c: conf0[c]["dice"] for c in trusted + guarded_out}}
    if not trusted or not untrusted:
        result["stopped"] = "no trusted case" if not trusted else "all cases trusted"
    else:
        # finetune-r1: SAM on the labeled case + trusted cases with their V-Net labels
        from SFRSegmenterLib.finetune import FinetuneConfig, finetune

        sam_q = json.loads((REPO / "bench" / "results" / args.sam_quality).read_text())
        r1 = next(r for r in sam_q["results"] if r["labeled"] == 1 and r.get("seed", args.seed) == args.seed)
        t0 = time.monotonic()
        full = Project(root=work / "sam_project", classes=["background", "left_atrium"], name="la_full_N1")
        names = (rq.DATA / "train.list").read_text().split()
        full.cases = [Case(n, str(rq.DATA / "images" / f"{n}.nii.gz"), str(rq.DATA / "labels" / f"{n}.nii.gz"),
                           "labeled" if i == 0 else ("unlabeled" if i < 64 else "validation"))
                      for i, n in enumerate(names)]
        full.root.mkdir(parents=True, exist_ok=True)
        full.save()
        if args.oracle_labels:
            labels = {c: rq.DATA / "labels" / f"{c}.nii.gz" for c in trusted}
        else:
            labels = upsample_labels(work / "confidence-r0", trusted, work / "trusted_labels_full")
        extra = () if args.control else tuple((c, str(rq.DATA / "images" / f"{c}.nii.gz"), str(labels[c])) for c in trusted)
        cfg = FinetuneConfig(backbone=sam_q["backbone"], iterations=args.sam_iterations or r1["iterations"], batch_size=2, lora_rank=0,
                             embedding_cache=args.sam_cache or max(r1["embedding_cache"], 64), crop=tuple(sam_q["crop"]),
                             grid=tuple(sam_q["grid"]), device="cpu", save_every=100, threads=args.threads,
                             seed=args.seed if args.sam_seed is None else args.sam_seed)
        sam1 = work / "sam-r1"
        log(f"finetune-r1 on 1 labeled + {len(extra)} trusted cases (embedding cache {cfg.embedding_cache})")
        finetune(full, cfg, out_dir=sam1, resume=True, extra_labeled=extra)  # a finished model is kept
        timings["finetune_r1_s"] = round(time.monotonic() - t0, 1)
        # pseudolabel-r1: the untrusted cases
        t0 = time.monotonic()
        todo = untrusted[: args.sam_only] if args.sam_only else untrusted
        log(f"pseudolabel-r1 on {len(todo)} of {len(untrusted)} untrusted cases")
        pseudo1 = work / "pseudo-r1"
        la_half.pseudo_labels([{"model_dir": sam1, "out": pseudo1, "project": project.name, "cases": todo}],
                              rq.HALF_DATA, args.threads)
        timings["pseudolabel_r1_s"] = round(time.monotonic() - t0, 1)
        if args.sam_only:
            gt = {c: read_label(project.label_path(project.case(c))).array == 1 for c in todo}
            result["sam_only"] = {"cases": todo, "dice_r0": [float(dice(read_label(sam0_pseudo / f"{c}.nii.gz").array == 1, gt[c])) for c in todo],
                                  "dice_r1": [float(dice(read_label(pseudo1 / f"{c}.nii.gz").array == 1, gt[c])) for c in todo]}
            result["timings"] = timings
            result["sam_r1"] = {"embedding_cache": cfg.embedding_cache, "iterations": cfg.iterations, "seed": cfg.seed,
                                "extra_cases": len(extra), "labels": "none (control)" if args.control else
                                ("ground truth" if args.oracle_labels else "V-Net round 0")}
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
            s0, s1 = np.mean(result["sam_only"]["dice_r0"]), np.mean(result["sam_only"]["dice_r1"])
            log(f"SAM pseudo-label Dice on {len(todo)} untrusted cases: round 0 {100 * s0:.2f} -> round 1 {100 * s1:.2f}")
            return 0
        # retrain-r1: SFR_MT on labeled + untrusted
        from SFRSegmenterLib.retrain import predict_folder, retrain

        t0 = time.monotonic()
        log("retrain-r1")
        ns = argparse.Namespace(iterations=args.iterations, seed=args.seed, device="cpu", threads=args.threads,
                                protocol="cpu-half")
        rcfg = rq.row_config("sfr_mt", ns)
        vnet1 = work / "vnet-r1"
        retrain(project, rcfg, pseudo_dir=pseudo1, out_dir=vnet1, resume=True, unlabeled_cases=untrusted)
        timings["retrain_r1_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        log("confidence-r1")
        conf1 = confidence_stage(vnet1, project, work / "confidence-r1", None, args.tau, unl)
        timings["confidence_r1_s"] = round(time.monotonic() - t0, 1)
        result["round1"] = summarize(conf1, args.tau)
        result["moved_to_trusted"] = sorted(c for c in unl if conf1[c]["confidence"] >= args.tau and c not in trusted)
        result["moved_to_untrusted"] = sorted(c for c in trusted if conf1[c]["confidence"] < args.tau)
        # SAM-r1 pseudo-label quality on the untrusted cases vs SAM-r0 on the same cases
        gt = {c: read_label(project.label_path(project.case(c))).array == 1 for c in untrusted}
        result["sam_dice_untrusted"] = {
            "r0": float(np.mean([dice(read_label(sam0_pseudo / f"{c}.nii.gz").array == 1, gt[c]) for c in untrusted])),
            "r1": float(np.mean([dice(read_label(pseudo1 / f"{c}.nii.gz").array == 1, gt[c]) for c in untrusted])),
        }
        val = project.by_role("validation")
        log("validation")
        predict_folder(vnet1, [project.image_path(c) for c in val], work / "pred-r1",
                       stride=rq.PROTOCOLS["cpu-half"]["eval_stride"], device="cpu")
        result["validation_sfr_plus"] = rq.evaluate(project, work / "pred-r1", val, full_resolution=True)["mean"]
    quality = json.loads((RESULTS / "retrain_quality.json").read_text()) if (RESULTS / "retrain_quality.json").exists() else []
    sfr = next((e for e in quality if e["labeled"] == 1 and e["row"] == "sfr_mt" and e["protocol"] == "cpu-half"
                and e.get("tag", "") == args.tag and e.get("seed", 1337) == args.seed), None)
    result["validation_sfr"] = sfr["metrics"]["mean"] if sfr else None
    result["timings"] = timings
    result["seed"], result["tag"] = args.seed, args.tag
    result["protocol"] = ("cpu-half (bench/retrain_quality.py): LA at 1.25 mm, crop 32x64x64, "
                          f"{args.iterations} V-Net iterations, SGD 0.01 constant; stage F: frozen LiteMedSAM "
                          "encoder, 450 decoder iterations on cached embeddings; 1 SFR+ round")
    write(result, args.out)
    return 0


TABLE_TAUS = (0.985, 0.98, 0.975, 0.97)
TABLE_FRACTIONS = (0.0, 0.1, 0.25, 0.5)


def structure_voxels(project, conf_dir: Path, cases) -> tuple:
    """Voxels of the labeled case's structure, and of each case's V-Net structure in ``conf_dir``."""
    lab0 = project.by_role("labeled")[0]
    labeled = int((read_label(project.label_path(lab0)).array > 0).sum())
    return labeled, {c: int((read_label(conf_dir / f"{c}.nii.gz").array > 0).sum()) for c in cases}


def trust_table(project, conf_dir: Path, conf0: dict) -> dict:
    """Trusted cases and their Dice for each (tau, min structure) pair, on the round-0 V-Net's labels.

    The guard is the product's (sfrplus.py): predicted structure >= F x the labeled structure, by
    physical volume; here every case shares one grid, so voxel counts compare directly."""
    labeled, fg = structure_voxels(project, conf_dir, conf0)
    rows = []
    for tau in TABLE_TAUS:
        for f in TABLE_FRACTIONS:
            t = [c for c in conf0 if conf0[c]["confidence"] >= tau and fg[c] >= f * labeled]
            d = [conf0[c]["dice"] for c in t]
            rows.append({"tau": tau, "min_structure": f, "trusted": len(t), "dice_mean": float(np.mean(d)) if d else None,
                         "dice_min": float(min(d)) if d else None, "below_0.5": sum(x < 0.5 for x in d)})
    out = {"labeled_voxels": labeled, "cases": len(conf0), "rows": rows,
           "note": "round-0 SFR_MT V-Net (cpu-half, N = 1) on the 63 unlabeled LA cases; Dice vs hidden ground truth"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sfr_plus_trust_la.json").write_text(json.dumps(out, indent=1) + "\n")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["# Which cases the SFR+ trust rule picks (LA, 1 labeled case, round 0)", "",
             f"{out['note']}. A case is trusted when C >= tau and its predicted structure has at least "
             f"F x {labeled} voxels (the labeled case's structure).", "",
             "| tau | F (min structure) | trusted | Dice % of trusted, mean | min | trusted with Dice < 50 % |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tau']} | {r['min_structure']} | {r['trusted']} | {pct(r['dice_mean'])} | "
                     f"{pct(r['dice_min'])} | {r['below_0.5']} |")
    (RESULTS / "sfr_plus_trust_la.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


def seed_table(stems: list, out: str) -> dict:
    """SFR vs SFR+ over seeds, from finished runs' JSON (each written by a full run of this script)."""
    runs = [json.loads((RESULTS / f"{stem}.json").read_text()) for stem in stems]
    pct = lambda m: 100 * m["dice"] if m else float("nan")  # noqa: E731
    rows = [{"seed": r.get("seed"), "tag": r.get("tag"), "sfr": pct(r.get("validation_sfr")),
             "sfr_plus": pct(r.get("validation_sfr_plus")), "trusted_r0": r["round0"]["trusted"],
             "cases": r["round0"]["cases"], "guard_removed": len(r.get("guard_removed", [])),
             "trusted_dice_r0": r["round0"]["dice_trusted"], "untrusted_dice_r0": r["round0"]["dice_untrusted"],
             "sam_untrusted_r0": r.get("sam_dice_untrusted", {}).get("r0"),
             "sam_untrusted_r1": r.get("sam_dice_untrusted", {}).get("r1"), "stopped": r.get("stopped"),
             "timings": r["timings"], "source": stem} for stem, r in zip(stems, runs)]
    summary = {}
    for key in ("sfr", "sfr_plus"):
        vals = [x[key] for x in rows]
        summary[key] = {"mean": float(np.mean(vals)), "spread": float(max(vals) - min(vals)), "per_seed": vals}
    gain = [x["sfr_plus"] - x["sfr"] for x in rows]
    summary["gain"] = {"mean": float(np.mean(gain)), "per_seed": gain}
    result = {"runs": rows, "summary": summary, "protocol": runs[0]["protocol"], "tau": runs[0]["tau"],
              "min_structure": runs[0]["min_structure"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out}.json").write_text(json.dumps(result, indent=1) + "\n")
    f = lambda v: "-" if v is None or v != v else f"{v:.1f}"  # noqa: E731
    lines = ["# SFR vs SFR+ on LA, 1 labeled case, over seeds (CPU budget protocol)", "", runs[0]["protocol"] + ".",
             f"Trust rule: the product's default (tau {result['tau']}, structure at least {result['min_structure']} of "
             "the labeled one). Each seed is a whole chain: its own stage F, pseudo-labels, round-0 V-Net and round 1. "
             "Validation: last 16 cases of train.list, Dice % at 0.625 mm.", "",
             "| seed | SFR_MT | SFR+_MT (1 round) | gain | above tau in round 0 | of them removed by the size guard | V-Net Dice r0: trusted / untrusted | "
             "SAM on untrusted: r0 -> r1 | source |", "|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {x['seed']} | {f(x['sfr'])} | {f(x['sfr_plus'])} | {f(x['sfr_plus'] - x['sfr'])} | "
                     f"{x['trusted_r0']} / {x['cases']} | {x['guard_removed']} | "
                     f"{f(100 * x['trusted_dice_r0'] if x['trusted_dice_r0'] is not None else None)} / "
                     f"{f(100 * x['untrusted_dice_r0'] if x['untrusted_dice_r0'] is not None else None)} | "
                     f"{f(100 * x['sam_untrusted_r0'] if x['sam_untrusted_r0'] is not None else None)} -> "
                     f"{f(100 * x['sam_untrusted_r1'] if x['sam_untrusted_r1'] is not None else None)} | "
                     f"[{x['source']}]({x['source']}.md) |")
    sm = summary
    lines += [f"| mean (spread) | {f(sm['sfr']['mean'])} ({f(sm['sfr']['spread'])}) | "
              f"{f(sm['sfr_plus']['mean'])} ({f(sm['sfr_plus']['spread'])}) | {f(sm['gain']['mean'])} | | | | | |", "",
              f"Paper (ViT-B on a GPU, 6000 iterations, LA test set): SFR_MT {PAPER['SFR_MT']}, SFR+_MT {PAPER['SFR+_MT']}.", ""]
    (RESULTS / f"{out}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result


def sam_table() -> None:
    """What SAM's round-1 fine-tuning gives, from the --sam-only runs (same untrusted cases)."""
    rows = []
    for path in sorted(RESULTS.glob("sfr_plus_la_sam_*.json")):
        r = json.loads(path.read_text())
        s = r["sam_only"]
        rows.append({"file": path.name, "seed": 1337, **r["sam_r1"], "cases": len(s["cases"]),
                     "dice_r0": float(np.mean(s["dice_r0"])), "dice_r1": float(np.mean(s["dice_r1"]))})
    rows.sort(key=lambda x: (x["iterations"], x["embedding_cache"], x["seed"], x["extra_cases"], x["labels"]))
    lines = ["# SAM in the SFR+ round, alone (LA, 1 labeled case, CPU budget)", "",
             "Stage F as in round 0 (frozen LiteMedSAM encoder, decoder iterations on cached embeddings of "
             "augmented mosaics), fine-tuned on the labeled case plus the cases trusted in round 0 "
             "(tau 0.985, min structure 0.25: 4 cases), with the labels named below. Dice % of SAM's pseudo-labels "
             "of the same untrusted cases; round 0 = the SFR run's SAM (labeled case only, cache 32: the "
             "control at cache 32 and seed 1337, the same settings).", "",
             "| decoder iterations | embedding cache | seed | trusted cases added | their labels | cases scored | "
             "SAM Dice %, round 0 | this SAM |",
             "|---|---|---|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {x['iterations']} | {x['embedding_cache']} | {x['seed']} | {x['extra_cases']} | {x['labels']} | {x['cases']} | "
                     f"{100 * x['dice_r0']:.1f} | {100 * x['dice_r1']:.1f} |")
    (RESULTS / "sfr_plus_la_sam.json").write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "sfr_plus_la_sam.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write(r: dict, out: str = "sfr_plus_la") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out}.json").write_text(json.dumps(r, indent=1) + "\n")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["# SFR vs SFR+ on LA, 1 labeled case (CPU budget protocol)", "", r["protocol"] + ".",
             "Validation: the last 16 cases of train.list, metrics at the original 0.625 mm resolution.", "",
             "| method | validation Dice % | Jaccard % | 95HD vox | ASD vox | paper Dice (ViT-B, test set) |",
             "|---|---|---|---|---|---|"]
    for name, key in (("SFR_MT", "validation_sfr"), ("SFR+_MT (1 round)", "validation_sfr_plus")):
        m = r.get(key)
        if m:
            lines.append(f"| {name} | {pct(m['dice'])} | {pct(m['jaccard'])} | {num(m.get('hd95_vox'))} | "
                         f"{num(m.get('asd_vox'))} | {PAPER['SFR_MT' if key == 'validation_sfr' else 'SFR+_MT']} |")
    lines += ["", f"Case confidence (Eq. 8) of the {r['round0']['cases']} unlabeled cases, tau = {r['tau']}:", "",
              "| round | trusted | mean C | C range | V-Net Dice %, all | trusted | untrusted | Spearman(C, Dice) |",
              "|---|---|---|---|---|---|---|---|"]
    for k in ("round0", "round1"):
        s = r.get(k)
        if s:
            rho = "-" if s["spearman_confidence_dice"] is None else f"{s['spearman_confidence_dice']:.2f}"
            lines.append(f"| {k[-1]} | {s['trusted']} / {s['cases']} | {s['mean_confidence']:.4f} | "
                         f"{s['confidence_range'][0]:.4f}-{s['confidence_range'][1]:.4f} | {pct(s['dice_all'])} | "
                         f"{pct(s['dice_trusted'])} | {pct(s['dice_untrusted'])} | {rho} |")
    if r.get("guard_removed"):
        d = r.get("trusted_dice", {})
        lines += ["", f"The structure-size guard (min structure {r['min_structure']}) took "
                  f"{len(r['guard_removed'])} of the round-0 cases above tau out of the trusted set (their Dice %: "
                  + ", ".join(pct(d.get(c)) for c in r["guard_removed"]) + f"); {len(r['trusted'])} cases were trusted "
                  f"(Dice %: " + ", ".join(pct(d.get(c)) for c in r["trusted"]) + ")."]
    if "sam_dice_untrusted" in r:
        s = r["sam_dice_untrusted"]
        lines += ["", f"SAM pseudo-labels of the untrusted cases: Dice {pct(s['r0'])} % (round 0, 1 labeled case) -> "
                  f"{pct(s['r1'])} % (round 1, + {len(r['trusted'])} trusted cases)."]
    if r.get("stopped"):
        lines += ["", f"The round stopped: {r['stopped']}."]
    lines += ["", f"Times (s, one thread): {json.dumps(r['timings'])}."]
    (RESULTS / f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
