"""SFR+ benchmarks.

``flags RUN [RUN ...]``: are the flagged slices worth a clinician's time?  For every case of a
finished run that has hidden ground truth, the true error of each slice (voxels where the
pseudo-label differs from the ground truth) is compared with the slices review.json flags.
Reported per ranking (uncertainty mass = default, mean confidence near the structure, mean
confidence of the whole slice, random slices near the structure):

* hit@k: the slice with the largest true error is among the k flagged;
* precision@k: fraction of flagged slices that are among the k slices with the largest error;
* error captured: share of all wrong voxels of the case that lie in the k flagged slices.

``compare``: SFR vs SFR+ on the LA data at 1 labeled case under a CPU budget.  One project
(the first case of train.list labeled, the next U unlabeled, the last V as validation), one
plain SFR run, then one SFR+ run with K rounds; the SFR+ run reuses the SFR run's round 0 (same
stage keys), so the difference is exactly what the rounds add.  Dice of the pseudo-labels
(unlabeled cases) and of the final V-Net on the validation cases.

Writes ``bench/results/sfr_plus_flags.{json,md}`` / ``bench/results/sfr_plus_compare.{json,md}``.
Run single-threaded on a shared machine: ``OMP_NUM_THREADS=1 python bench/sfr_plus.py ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
LA = REPO.parent / "shared" / "data" / "la"


def _machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "cores": os.cpu_count()}


# --------------------------------------------------------------------------- flags


def flag_row(case: str, label: np.ndarray, conf: np.ndarray, gt: np.ndarray, k: int, rng) -> "dict | None":
    """One case: each ranking's k flagged slices against the slices' true error (None: no error)."""
    from SFRSegmenterLib import confidence as C

    err = (label != gt).reshape(label.shape[0], -1).sum(axis=1).astype(float)
    if err.sum() == 0:
        return None
    roi = C.region_of_interest(conf, label)
    has_roi = roi.reshape(roi.shape[0], -1).any(axis=1)
    eligible = np.flatnonzero(has_roi)
    top_true = set(np.argsort(-err, kind="stable")[:k].tolist())
    worst = int(np.argmax(err))
    rankings = {
        "mass": [i for i, _ in C.flag_slices(conf, roi, k, "mass")],
        "mean": [i for i, _ in C.flag_slices(conf, roi, k, "mean")],
        "whole_slice_mean": np.argsort(C.slice_confidence(conf), kind="stable")[:k].tolist(),
        # baseline without confidence: the slices with the largest predicted structure
        "largest_structure": np.argsort(-np.where(has_roi, (label > 0).reshape(label.shape[0], -1).sum(axis=1), -1),
                                        kind="stable")[:k].tolist(),
        "random_near_structure": rng.choice(eligible, size=min(k, eligible.size), replace=False).tolist()
        if eligible.size else [],
    }
    row = {"case": case, "slices": int(label.shape[0]), "eligible": int(eligible.size),
           "wrong_voxels": int(err.sum()), "foreground_voxels": int((gt > 0).sum())}
    for name, flagged in rankings.items():
        flagged = [int(i) for i in flagged]
        row[name] = {
            "flagged": flagged,
            "hit": worst in flagged,
            "precision": len(set(flagged) & top_true) / max(1, len(flagged)),
            "captured": float(err[flagged].sum() / err.sum()) if flagged else 0.0,
        }
    return row


def flag_quality(path: Path, k: int = 5, seed: int = 0) -> list:
    """``path``: a run folder (its pseudo/ or newest confidence stage) or any stage folder
    holding ``<case>.nii.gz`` + ``<case>_confidence.nii.gz`` (e.g. SAM's pseudolabel-r0)."""
    from SFRSegmenterLib.io import read_image, read_label
    from SFRSegmenterLib.manifest import load_project

    path = Path(path)
    run = next((p for p in [path, *path.parents] if (p / "config.json").exists()), None)
    if run is None:
        raise SystemExit(f"{path}: not inside a run folder")
    cfg = json.loads((run / "config.json").read_text())
    project = load_project(cfg["project"])
    rng = np.random.default_rng(seed)
    rows = []
    pseudo = path
    if path == run:
        pseudo = run / "pseudo"
        if not pseudo.is_dir():  # an unfinished run: its newest confidence stage
            stages = sorted((run / "stages").glob("confidence-r*/cases.json"))
            if not stages:
                return rows
            pseudo = stages[-1].parent
    for case in project.by_role("unlabeled"):
        if not case.label or not (pseudo / f"{case.name}_confidence.nii.gz").exists():
            continue
        row = flag_row(case.name, read_label(pseudo / f"{case.name}.nii.gz").array,
                       read_image(pseudo / f"{case.name}_confidence.nii.gz").array,
                       read_label(project.label_path(case)).array, k, rng)
        if row is not None:
            rows.append(row)
    return rows


def flag_quality_folder(pred: Path, gt: Path, k: int = 5, seed: int = 0) -> list:
    """Predictions ``<case>.nii.gz`` + ``<case>_confidence.nii.gz`` (``sfr predict``) against
    ground truth ``gt/<case>.nii.gz`` on the same grid."""
    from SFRSegmenterLib.io import read_image, read_label

    rng = np.random.default_rng(seed)
    rows = []
    for conf_path in sorted(Path(pred).glob("*_confidence.nii.gz")):
        case = conf_path.name[: -len("_confidence.nii.gz")]
        if not (Path(gt) / f"{case}.nii.gz").exists():
            continue
        row = flag_row(case, read_label(Path(pred) / f"{case}.nii.gz").array, read_image(conf_path).array,
                       read_label(Path(gt) / f"{case}.nii.gz").array, k, rng)
        if row is not None:
            rows.append(row)
    return rows


def cmd_flags(args) -> int:
    rows = []
    if args.pred:
        for r in flag_quality_folder(Path(args.pred), Path(args.gt), args.k):
            r["source"] = str(Path(args.pred).resolve())
            rows.append(r)
    for run in args.runs:
        run = Path(run)
        if (run / "sfr-project.json").exists():
            run = run / "runs" / (run / "runs" / "latest").read_text().strip()
        run = run.resolve()
        for r in flag_quality(run, args.k):
            r["source"] = str(run)
            rows.append(r)
    if not rows:
        print("no case with ground truth and errors")
        return 1
    names = ["mass", "mean", "whole_slice_mean", "largest_structure", "random_near_structure"]
    summary = {}
    for n in names:
        summary[n] = {
            "hit_at_k": float(np.mean([r[n]["hit"] for r in rows])),
            "precision_at_k": float(np.mean([r[n]["precision"] for r in rows])),
            "error_captured": float(np.mean([r[n]["captured"] for r in rows])),
        }
    share = float(np.mean([args.k / max(1, r["eligible"]) for r in rows]))
    out = {"k": args.k, "cases": len(rows), "summary": summary, "flagged_share_of_structure_slices": share,
           "rows": rows, "machine": _machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=1))
    lines = [f"# Flagged slices vs true error (k = {args.k}, {len(rows)} cases)", "",
             f"Source: {', '.join(sorted({r['source'] for r in rows}))}", "",
             f"The {args.k} flagged slices are on average {100 * share:.0f} % of the slices near the structure.", "",
             "| ranking | hit@k (worst slice flagged) | precision@k | share of wrong voxels in flagged slices |",
             "|---|---|---|---|"]
    for n in names:
        s = summary[n]
        lines.append(f"| {n} | {100 * s['hit_at_k']:.0f} % | {100 * s['precision_at_k']:.0f} % | "
                     f"{100 * s['error_captured']:.0f} % |")
    if args.note:
        lines[1:1] = ["", args.note]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


# --------------------------------------------------------------------------- compare


def cmd_compare(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    from SFRSegmenterLib import events
    from SFRSegmenterLib.run import config, job
    from SFRSegmenterLib.manifest import Case, Project

    events.configure("none")
    names = [n.strip() for n in (LA / "train.list").read_text().split() if n.strip()]
    labeled, unlabeled = names[:1], names[1:1 + args.unlabeled]
    validation = names[len(names) - args.validation:] if args.validation else []
    root = Path(args.work).resolve()
    root.mkdir(parents=True, exist_ok=True)
    project = Project(root=root, classes=["background", "left_atrium"], name="la-1-labeled")
    for n in labeled + unlabeled + validation:
        role = "labeled" if n in labeled else ("unlabeled" if n in unlabeled else "validation")
        project.cases.append(Case(n, str(LA / "images" / f"{n}.nii.gz"), str(LA / "labels" / f"{n}.nii.gz"), role))
    project.save()
    common = dict(backbone=args.backbone, device=args.device, iterations_sam=args.iterations_sam,
                  iterations_vnet=args.iterations_vnet, report=False,
                  checkpoint=args.checkpoint)
    results = {}
    for label, cfg in (("SFR", config.RunConfig(sfr_plus=False, **common)),
                       ("SFR+", config.RunConfig(sfr_plus=True, rounds=args.rounds, tau=args.tau, **common))):
        t0 = time.monotonic()
        path = job.create_run(project, cfg)
        code = job.execute(root, path)
        if code != 0:
            print(f"{label} run failed ({code}); see {path / 'log.txt'}")
            return code
        metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").exists() else {}
        rounds = json.loads((path / "rounds.json").read_text())
        stages = json.loads((path / "stages.json").read_text())
        results[label] = {
            "run": str(path),
            "wall_s": round(time.monotonic() - t0, 1),
            "compute_s": round(sum(float(s.get("seconds") or 0) for s in stages.values()), 1),
            "pseudo_dice": (metrics.get("pseudo_labels") or {}).get("mean", {}).get("dice"),
            "validation_dice": (metrics.get("validation") or {}).get("mean", {}).get("dice"),
            "rounds": [{k: r.get(k) for k in ("round", "trusted", "mean_confidence", "mean_dice", "mean_sam_dice",
                                               "moved_to_trusted", "moved_to_untrusted", "stopped")}
                       for r in rounds["rounds"]],
        }
    out = {"protocol": {"data": "LA (UA-MT preprocessed), train.list order", "labeled": labeled,
                        "unlabeled": len(unlabeled), "validation": len(validation), **common,
                        "rounds": args.rounds, "tau": args.tau, "threads": args.threads},
           "results": results, "machine": _machine(),
           "paper": {"SFR_MT_1_labeled": 74.40, "SFR+_MT_1_labeled": 81.03,
                     "note": "ViT-B, 6000 + 6000 iterations, 80 cases, test set of 20"}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sfr_plus_compare.json").write_text(json.dumps(out, indent=1))
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    lines = ["# SFR vs SFR+ on LA, 1 labeled case (reduced CPU budget)", "",
             f"{args.backbone}, {args.iterations_sam} SAM / {args.iterations_vnet} V-Net iterations, "
             f"{len(unlabeled)} unlabeled, {len(validation)} validation, {args.threads} thread(s), tau {args.tau}.", "",
             "| method | pseudo-label Dice % | validation Dice % | compute s |", "|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {pct(r['pseudo_dice'])} | {pct(r['validation_dice'])} | {r['compute_s']} |")
    lines += ["", "Rounds of SFR+:", ""]
    for r in results["SFR+"]["rounds"]:
        lines.append(f"- round {r['round']}: {len(r['trusted'] or [])} trusted, mean confidence "
                     f"{r['mean_confidence']}, mean Dice {pct(r.get('mean_dice'))}"
                     + (f", stopped: {r['stopped']}" if r.get("stopped") else ""))
    lines += ["", "Paper (ViT-B, full budget, LA test set): SFR_MT 74.40, SFR+_MT 81.03."]
    (RESULTS / "sfr_plus_compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flags", help="flagged slices vs true per-slice error of finished runs")
    f.add_argument("runs", nargs="*", help="run folders or project folders (latest run)")
    f.add_argument("--pred", help="instead of runs: a prediction folder (sfr predict: label + _confidence)")
    f.add_argument("--gt", help="with --pred: the ground-truth folder on the same grid")
    f.add_argument("--out", default="sfr_plus_flags", help="result file stem under bench/results")
    f.add_argument("--note", default="", help="a sentence on what was measured, for the Markdown")
    f.add_argument("--k", type=int, default=5)
    f.set_defaults(func=cmd_flags)
    c = sub.add_parser("compare", help="SFR vs SFR+ on LA at 1 labeled")
    c.add_argument("--work", default="/tmp/sfr-bench-la1", help="project folder to create")
    c.add_argument("--unlabeled", type=int, default=15)
    c.add_argument("--validation", type=int, default=8)
    c.add_argument("--backbone", default="lite_medsam")
    c.add_argument("--checkpoint", default=None)
    c.add_argument("--device", default="cpu")
    c.add_argument("--iterations-sam", type=int, default=100)
    c.add_argument("--iterations-vnet", type=int, default=300)
    c.add_argument("--rounds", type=int, default=1)
    c.add_argument("--tau", type=float, default=0.985)
    c.add_argument("--threads", type=int, default=1)
    c.set_defaults(func=cmd_compare)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
