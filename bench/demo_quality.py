"""What a new user gets from ``sfr demo``: per-class Dice of SAM's and the final pseudo-labels.

    python bench/demo_quality.py [--seeds 1337 1] [--work /tmp/sfr-bench-demo]

Each seed runs the real command (``python -m SFRSegmenterLib demo --out DIR --seed S``) in a fresh
folder, timed as a whole process, then scores against the hidden ground truth of the 10 unlabeled
cases: SAM's pseudo-labels (stage ``pseudolabel-r0``) and the published results (``pseudo/``),
per class, with predicted and true structure volumes per case.  Results go to
``bench/results/demo_quality.{json,md}``.  Target (issue 11): mean Dice >= 0.70 for every class,
the run <= 10 min on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, machine

import numpy as np  # noqa: E402

from SFRSegmenterLib import jobs  # noqa: E402
from SFRSegmenterLib.evaluation import evaluate_pairs  # noqa: E402
from SFRSegmenterLib.io import read_label  # noqa: E402
from SFRSegmenterLib.manifest import load_project  # noqa: E402


def score(project, folder: Path) -> dict:
    pairs = [(c.name, folder / f"{c.name}.nii.gz", project.label_path(c)) for c in project.by_role("unlabeled")]
    report = evaluate_pairs(pairs)
    per_class = {k: v.get("dice") for k, v in (report.get("mean_per_class") or {}).items()}
    cases = []
    for name, pred_path, gt_path in pairs:
        pred, gt = read_label(pred_path).array, read_label(gt_path).array
        row = {"case": name}
        for k in range(1, project.num_classes):
            d = next((r["dice"] for r in report["cases"] if r["case"] == name and int(r["class"]) == k), None)
            row[f"class_{k}"] = {"dice": d, "pred_voxels": int((pred == k).sum()), "true_voxels": int((gt == k).sum())}
        cases.append(row)
    return {"mean_dice": report["mean"]["dice"], "dice_per_class": per_class, "cases": cases}


def run_seed(seed: int, work: Path, threads: "int | None") -> dict:
    out = work / f"seed{seed}"
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "SFRSegmenterLib", "demo", "--out", str(out), "--seed", str(seed)],
                          env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sfr demo failed (seed {seed}):\n{proc.stderr[-2000:]}")
    project = load_project(out)
    run = jobs.run_dir(out)
    rounds = json.loads((run / "rounds.json").read_text())
    stages = json.loads((run / "stages.json").read_text())
    warnings = [ln.strip() for ln in (run / "log.txt").read_text().splitlines() if " warning: " in ln]
    return {
        "seed": seed,
        "wall_s": round(wall, 1),
        "stage_s": {k: v.get("seconds") for k, v in stages.items()},
        "final_round": rounds.get("final_round"),
        "trusted_r0": len(rounds["rounds"][0].get("trusted", [])),
        "sam": score(project, run / "stages" / "pseudolabel-r0"),
        "final": score(project, run / "pseudo"),
        "warnings": warnings,
    }


def write(results, args, out: Path) -> None:
    payload = {"benchmark": "demo_quality", "command": "sfr demo --seed S", "machine": machine(args.threads or 2),
               "load_avg_at_end": os.getloadavg()[0], "results": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_quality.json").write_text(json.dumps(payload, indent=2) + "\n")

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    lines = ["# `sfr demo`: pseudo-label quality on the 10 unlabeled cases (hidden ground truth)", "",
             "Bundled hippocampus sample (MSD Task04), 2 labeled, 10 unlabeled; the demo's settings "
             "(`SFRSegmenterLib/commands/demo.py`). Dice % per class (1 = anterior, 2 = posterior).", "",
             "| seed | SAM class 1 | SAM class 2 | final class 1 | final class 2 | final mean | final pred/true vol. 1 | 2 | published round | trusted in r0 | wall min | warnings |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        vols = []
        for k in (1, 2):
            ratio = [c[f"class_{k}"]["pred_voxels"] / c[f"class_{k}"]["true_voxels"] for c in r["final"]["cases"]
                     if c[f"class_{k}"]["true_voxels"]]
            vols.append(f"{np.median(ratio):.2f}" if ratio else "-")
        lines.append(f"| {r['seed']} | {pct(r['sam']['dice_per_class'].get('1'))} | {pct(r['sam']['dice_per_class'].get('2'))} | "
                     f"{pct(r['final']['dice_per_class'].get('1'))} | {pct(r['final']['dice_per_class'].get('2'))} | "
                     f"{pct(r['final']['mean_dice'])} | {vols[0]} | {vols[1]} | {r['final_round']} | {r['trusted_r0']} | "
                     f"{r['wall_s'] / 60:.1f} | {len(r['warnings'])} |")
    if len(results) > 1:
        for key in ("1", "2"):
            v = [r["final"]["dice_per_class"].get(key) for r in results]
            v = [x for x in v if x is not None]
            lines.append(f"\nFinal class {key}: mean {100 * np.mean(v):.1f}, spread (max - min) {100 * (max(v) - min(v)):.1f} over {len(v)} seeds.")
    lines += ["", f"Load average at the end: {payload['load_avg_at_end']:.1f} (timings are only meaningful on an idle machine).",
              "Per-case Dice and predicted / true voxels per class are in the JSON."]
    (out / "demo_quality.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1])
    ap.add_argument("--threads", type=int, default=None, help="recorded only; the demo uses torch's default")
    ap.add_argument("--work", default="/tmp/sfr-bench-demo")
    ap.add_argument("--keep", action="store_true", help="keep the other seeds' rows of an earlier demo_quality.json")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    previous = Path(args.out) / "demo_quality.json"
    # results of other seeds already measured stay (a seed run again replaces its row)
    results = [r for r in (json.loads(previous.read_text())["results"] if previous.exists() and args.keep else [])
               if r["seed"] not in args.seeds]
    for seed in args.seeds:
        r = run_seed(seed, Path(args.work), args.threads)
        results.append(r)
        results.sort(key=lambda r: -r["seed"])
        write(results, args, Path(args.out))
        print(f"seed {seed}: final per class {r['final']['dice_per_class']}, SAM {r['sam']['dice_per_class']}, "
              f"{r['wall_s'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
